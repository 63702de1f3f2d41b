"""Parity of the reference-audio front end (goldens/frontend.json, SPEC-s2mel.md 9.1).

Every case is fed the golden output of the stage before it (as the manifest's `inputs` say): audio loading
and resampling from the prompt files, the mel and fbank from the golden waveforms, w2v-bert from the golden
16 kHz audio (features) and the golden features (hidden states), the codec from the golden spk_cond_emb
(codes exact), CAMPPlus from the golden fbank. Prompts, case ids and tolerances come from the manifest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..plan import make_plan
from ..precision import apply_plan
from . import CaseResult, Goldens, check_fact, compare

STAGE = "frontend"
# Quantities the manifest gives no tolerance of their own: the tolerance of the quantity they are checked like.
SAME_TOLERANCE_AS = {
    "fbank_raw": "fbank",
    "w2v_hidden_states": "spk_cond_emb",
    "codec_encoder_out": "S_ref",
    "emo_input_features": "input_features",
    "emo_attention_mask": "attention_mask",
    "native_mono": "audio",
}
DEFAULT_ATOL = 1e-4


class Tolerances:
    """atol of a quantity: the case's own entry, else a related quantity's entry in any case ("exact" = 0)."""

    def __init__(self, cases: list[dict]):
        self.by_case = {c["id"]: c.get("tolerance", {}) for c in cases}

    @staticmethod
    def _parse(entry) -> float:
        if isinstance(entry, dict):
            return float(entry.get("atol", 0.0))
        return 0.0 if str(entry).startswith("exact") else DEFAULT_ATOL

    def __call__(self, case_id: str, quantity: str) -> float:
        base = re.sub(r"_\d+$", "", quantity)  # w2v_hidden_states_17 -> w2v_hidden_states
        own = self.by_case.get(case_id, {})
        if quantity in own:
            return self._parse(own[quantity])
        if "atol" in own:
            return float(own["atol"])
        related = SAME_TOLERANCE_AS.get(base, base)
        for tol in [own, *self.by_case.values()]:
            if related in tol:
                return self._parse(tol[related])
        return DEFAULT_ATOL


def check(ref_dir: Path) -> Iterator[CaseResult]:
    from .. import audio
    from ..config import ModelFolder
    from ..features import SemanticFeatures
    from ..models.campplus import CAMPPlus
    from ..models.codec import SemanticCodec

    ref_dir = Path(ref_dir)
    g = Goldens(ref_dir, STAGE)
    man = g.manifest
    tol = Tolerances(man["cases"])
    case_ids = [c["id"] for c in man["cases"]]
    folder = ModelFolder(ref_dir)
    spect = folder.config.s2mel.preprocess_params.spect_params
    w2v = SemanticFeatures.from_folder(folder)
    codec = SemanticCodec.from_folder(folder)
    campplus = CAMPPlus.from_folder(folder)
    apply_plan(make_plan("fp32"), w2v=w2v, codec=codec, campplus=campplus)   # as the engine prepares them

    def cmp(case_id: str, name: str, got) -> CaseResult:
        quantity = name.split(".", 1)[1]
        return compare(STAGE, f"{case_id}.{name}", got, g[name], atol=tol(case_id, quantity))

    def case(prefix: str) -> str:  # manifest id of a case family ("a.audio", "b.w2v_bert", ...)
        return next((c for c in case_ids if c.startswith(prefix)), prefix)

    for prompt in man["prompts"]:
        p = prompt["prompt"]
        wav_path = ref_dir / prompt["file"]
        # a. loading (librosa.load + 15 s cut) and torchaudio 22050 -> 16000; mel and fbank from the goldens
        ref = audio.load_reference(wav_path)
        cid = case("a.audio")
        yield cmp(cid, f"{p}.audio", ref.wav22k)
        yield cmp(cid, f"{p}.audio_16k", audio.resample(g[f"{p}.audio"], audio.SPEAKER_RATE, audio.FEATURE_RATE))
        yield compare(STAGE, f"{cid}.{p}.audio_16k(from the file)", ref.wav16k, g[f"{p}.audio_16k"],
                      atol=tol(cid, "audio_16k"))
        for what, got in (("n_samples_22k", ref.wav22k.shape[-1]), ("n_samples_16k", ref.wav16k.shape[-1])):
            if what in prompt:
                yield check_fact(STAGE, f"{cid}.{p}.{what}", got == prompt[what], f"{got}, golden {prompt[what]}")
        yield cmp(cid, f"{p}.ref_mel", audio.mel_spectrogram(g[f"{p}.audio"], spect, folder.config.s2mel.preprocess_params.sr))
        yield cmp(cid, f"{p}.fbank_raw", audio.kaldi_fbank_raw(g[f"{p}.audio_16k"]))
        yield cmp(cid, f"{p}.fbank", audio.kaldi_fbank(g[f"{p}.audio_16k"]))

        # a. extra resampler coverage at the file's native rate
        if f"{p}.native_mono" in g:
            cid = case("a.native")
            sr = int(prompt.get("native_sr", prompt["file_sample_rate"]))
            native = g[f"{p}.native_mono"]
            span = re.search(r"\[(\d+):(\d+)\]\s*$", prompt.get("native_excerpt", ""))
            if span:
                full = audio.load_audio(wav_path, sr=None, max_seconds=None)
                yield cmp(cid, f"{p}.native_mono", full[:, int(span[1]):int(span[2])])
            yield cmp(cid, f"{p}.native_resampled_22k", audio.resample(native, sr, audio.SPEAKER_RATE))
            yield cmp(cid, f"{p}.native_resampled_16k", audio.resample(native, sr, audio.FEATURE_RATE))

        # b. w2v-bert: features from the golden 16 kHz audio, the model from the golden features
        cid = case("b.w2v")
        feats, mask = w2v.features(g[f"{p}.audio_16k"])
        yield cmp(cid, f"{p}.input_features", feats)
        yield cmp(cid, f"{p}.attention_mask", mask)
        hidden = w2v.hidden_states(g[f"{p}.input_features"], g[f"{p}.attention_mask"])
        for name in sorted(n for n in g.tensors if n.startswith(f"{p}.w2v_hidden_states_")):
            k = int(name.rsplit("_", 1)[1])
            if k < len(hidden):
                yield cmp(cid, name, hidden[k])
            else:
                yield check_fact(STAGE, f"{cid}.{name}", False, f"hidden state {k} is after the layer used")
        yield cmp(cid, f"{p}.spk_cond_emb", w2v.embed(g[f"{p}.input_features"], g[f"{p}.attention_mask"]))

        # b. emotion path: librosa.load(sr=16000) directly, then the same features
        cid = case("b.emo")
        yield cmp(cid, f"{p}.emo_audio_16k", audio.load_emotion_audio(wav_path))
        feats, mask = w2v.features(g[f"{p}.emo_audio_16k"])
        yield cmp(cid, f"{p}.emo_input_features", feats)
        yield cmp(cid, f"{p}.emo_attention_mask", mask)
        yield cmp(cid, f"{p}.emo_cond_emb", w2v.embed(g[f"{p}.emo_input_features"], g[f"{p}.emo_attention_mask"]))

        # c. semantic codec from the golden spk_cond_emb (codes exact)
        cid = case("c.codec")
        spk = g[f"{p}.spk_cond_emb"]
        yield cmp(cid, f"{p}.codec_encoder_out", codec.encode(spk))
        codes, s_ref = codec.quantize(spk)
        yield cmp(cid, f"{p}.S_ref_codes", codes)
        yield cmp(cid, f"{p}.S_ref", s_ref)

        # d. CAMPPlus from the golden fbank
        yield cmp(case("d.campplus"), f"{p}.style", campplus(g[f"{p}.fbank"].unsqueeze(0)))

    if "vq2emb.codes" in g:
        yield cmp(case("c.vq2emb"), "vq2emb.out", codec.vq2emb(g["vq2emb.codes"]))

"""The engine: load a model folder once, then synthesise text in a voice, stage by stage, timed.

    engine = Engine("checkpoints/")                      # or Engine(folder, device="cuda", threads=2)
    fast = Engine("checkpoints/", precision="auto")      # or "int8max", "bf16", {"gpt": "int8", "s2mel": "bf16"}
    result = engine.synthesize("Hello there.", voice="me.wav", preset="aggressive", seed=1)
    result.save("out.wav"); print(result.timings.table())

Stages, as the official `infer_v2` runs them (SPEC-gpt.md, SPEC-s2mel.md): reference audio ->
speaker conditioning (w2v-bert features, semantic prompt, style, prompt mel, GPT speaker latent), cached
by audio content or by registered speaker_id; text -> segments; per segment: emotion vector, GPT codes
(gpt_gen), latents (gpt_forward), S2Mel (s2mel), BigVGAN (bigvgan); segments joined with silence.
Unlike the official code, the speaker latent and the emotion vector are computed once per request, not
once per segment (identical values), and the cache is keyed by content, not by path.

Precision (`precision=`, see plan.py) is an engine option, independent of presets: fp32 (default) is exact
parity; "auto" (the fastest modes this CPU runs natively), "bf16", "int8", ... or a per-stage mapping trade
measured fidelity (`indextts-fast fidelity`) for speed. It becomes one plan (`self.plan`), validated against
this CPU before anything loads (emulated modes refused unless `force_precision`), applied at load by
`precision.apply_plan`; bf16 stages run under bf16 autocast.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .config import ModelFolder
from .options import check_seed
from .errors import AudioError, OptionError
from .presets import Settings, resolve
from .profiling import StageTimer, Timings

SAMPLE_RATE = 22050
PCM_SCALE = 32767.0


@dataclass
class SpeakerConditioning:
    """Everything the pipeline derives from one reference clip (what the speaker registry stores)."""

    spk_cond_emb: torch.Tensor  # (1, T, W) w2v-bert features, speaker path (22.05 kHz load -> 16 kHz)
    emo_cond_emb: torch.Tensor  # (1, T', W) the same clip through the emotion path (16 kHz load)
    semantic_codes: torch.Tensor  # (1, T) codec codes of spk_cond_emb
    S_ref: torch.Tensor  # (1, T, W) codec vectors of those codes
    ref_mel: torch.Tensor  # (1, 80, T_ref) prompt mel
    style: torch.Tensor  # (1, 192) CAMPPlus style
    prompt_condition: torch.Tensor  # (1, T_ref, C) length-regulated semantic prompt
    spk_latent: torch.Tensor  # (1, 32, D) GPT speaker conditioning latent

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.__dict__.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], device: torch.device | str = "cpu"):
        missing = [k for k in cls.__dataclass_fields__ if k not in tensors]
        if missing:
            raise KeyError(f"speaker conditioning lacks {', '.join(missing)}")
        return cls(**{k: tensors[k].to(device) for k in cls.__dataclass_fields__})


@dataclass
class Emotion:
    """Emotion control of a request: an emotion clip with alpha, or an 8-value vector (happy, angry, sad,
    afraid, disgusted, melancholic, surprised, calm), or emotion from text (`from_text`: the folder's
    emotion classifier reads `text`, default the text being spoken), or none of them (the speaker clip is
    the emotion)."""

    audio: Optional[str | Path] = None
    alpha: float = 1.0
    vector: Optional[Sequence[float]] = None
    use_random: bool = False  # random rows of the emotion matrix instead of the nearest style
    from_text: bool = False
    text: Optional[str] = None

    def __post_init__(self) -> None:
        if sum([self.audio is not None, self.vector is not None, self.from_text]) > 1:
            # Official behaviour: a vector or text wins and the emotion clip is discarded; we say so instead.
            raise OptionError("give one of an emotion clip, an emotion vector or emotion from text")
        if self.text is not None and not self.from_text:
            raise OptionError("an emotion text is only used with from_text=True")
        if self.vector is not None:
            vec = list(self.vector)
            if len(vec) != 8 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in vec):
                raise OptionError(f"an emotion vector has 8 finite numbers, got {self.vector!r}")
            if any(v < 0 for v in vec):
                raise OptionError(f"emotion vector weights must be >= 0, got {vec}")
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"emotion alpha={self.alpha} is out of range: expected in [0, 1]")


@dataclass
class SegmentResult:
    text_ids: list[int]
    codes: torch.Tensor  # (1, N) after stop-code trimming
    hit_max_mel_tokens: bool
    wav_pcm: torch.Tensor  # (1, samples) float32 in 16-bit PCM scale, as the official code produces


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    timings: Timings
    settings: Settings
    seed: int
    segments: list[SegmentResult] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def save(self, path: str | Path) -> Path:
        """Write wav (16-bit PCM, as the official code), flac (16-bit) or ogg (vorbis), by extension."""
        import os
        import tempfile

        import soundfile as sf

        from .checks import AUDIO_FORMATS, check_output_path

        path = check_output_path(path)
        fmt, subtype = AUDIO_FORMATS[path.suffix.lower()]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:   # written beside the target, then renamed: never a partial file under the name asked for
            with os.fdopen(fd, "wb") as f:
                sf.write(f, self.audio, self.sample_rate, format=fmt, subtype=subtype)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def sha256_file(path: str | Path) -> str:
    """Content hash of an audio file (the cache key), or an AudioError when it does not exist."""
    from .speakers import sha256_of

    if not Path(path).is_file():
        raise AudioError(f"audio file not found: {path}")
    return sha256_of(path)


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_fresh(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Engine:
    """An IndexTTS2 model folder loaded once; `synthesize` runs requests against it."""

    def __init__(self, model_dir: str | Path | ModelFolder, device: str = "cpu", threads: Optional[int] = None,
                 store=None, cache_size: int = 16, precision=None, force_precision: bool = False):
        from . import audio, features
        from .emotion import EmotionMatrices
        from .models.bigvgan import BigVGAN
        from .models.campplus import CAMPPlus
        from .models.codec import SemanticCodec
        from .models.gpt import load_gpt
        from .models.s2mel import S2Mel
        from .plan import make_plan
        from .precision import apply_plan
        from .text import TextFrontEnd

        if threads is not None:
            if threads < 1:
                raise OptionError(f"threads={threads} must be >= 1")
            torch.set_num_threads(threads)
        # validated first, against this machine: a mode it can only emulate is refused unless forced
        self.plan = make_plan(precision, device=device, force=force_precision)
        self.precision = self.plan.as_dict()  # {stage: fp32|bf16|int8|int8dyn}
        self.folder = model_dir if isinstance(model_dir, ModelFolder) else ModelFolder(model_dir)
        self.device = torch.device(device)
        self.store = store
        self._audio = audio
        self.text = TextFrontEnd.from_folder(self.folder).load()  # glossary.yaml if present; FSTs now
        self.gpt = load_gpt(self.folder).to(self.device)
        self.emotions = EmotionMatrices.from_folder(self.folder)
        self.w2v = features.SemanticFeatures.from_folder(self.folder).to(self.device)
        self.codec = SemanticCodec.from_folder(self.folder).to(self.device)
        self.campplus = CAMPPlus.from_folder(self.folder).to(self.device)
        self.s2mel = S2Mel.from_folder(self.folder).to(self.device)
        self.vocoder = BigVGAN.from_folder(self.folder).to(self.device)
        apply_plan(self.plan, gpt=self.gpt, w2v=self.w2v, codec=self.codec, campplus=self.campplus,
                   s2mel=self.s2mel, vocoder=self.vocoder)
        self.fingerprint = self.folder.fingerprint()
        # Registry entries and the clip cache are keyed by model AND conditioning precision: fp32 entries stay
        # exact, and an entry extracted at another precision is refused (re-register), never silently used.
        cond = self.precision["conditioning"]
        self._cache_fingerprint = self.fingerprint if cond == "fp32" else f"{self.fingerprint}+conditioning-{cond}"
        self._speakers = _LRU(cache_size)  # audio content hash -> SpeakerConditioning
        self._emotions = _LRU(cache_size)  # content hash -> emo_cond_emb
        self._default_emovecs = _LRU(cache_size)  # hash of a speaker's features -> its own-emotion emovec
        self._emotion_text = None  # the emotion classifier, loaded on first use
        self.extractions = 0  # how many times reference features were extracted (tests read it)

    # ---- reference audio -------------------------------------------------------------------------
    def _autocast(self, stage: str):
        from .precision import autocast

        return autocast(self.device, self.precision[stage])

    @torch.inference_mode()
    def extract_speaker(self, audio_path: str | Path) -> SpeakerConditioning:
        """Run the whole reference-audio stage on a clip (no cache); float outputs are fp32 in every mode."""
        with self._autocast("conditioning"):
            cond = self._extract_speaker(audio_path)
        return SpeakerConditioning(**{k: v.float() if v.is_floating_point() else v for k, v in cond.__dict__.items()})

    def _extract_speaker(self, audio_path: str | Path) -> SpeakerConditioning:
        a = self._audio
        self.extractions += 1
        ref = a.load_reference(audio_path)
        wav22k, wav16k = ref.wav22k.to(self.device), ref.wav16k.to(self.device)
        emo16k = a.load_emotion_audio(audio_path).to(self.device)
        if self.precision["conditioning"] == "fp32":
            spk_cond_emb, emo_cond_emb = self.w2v(wav16k), self.w2v(emo16k)
        else:  # the speaker and emotion clips (the same file, two resamplings) in one batch
            spk_cond_emb, emo_cond_emb = self.w2v.embed_together(wav16k, emo16k)
        codes, S_ref = self.codec.quantize(spk_cond_emb)
        ref_mel = a.mel_spectrogram(wav22k, self.folder.config.s2mel.preprocess_params.spect_params)
        style = self.campplus(a.kaldi_fbank(wav16k)[None])
        prompt_condition = self.s2mel.length_regulator(S_ref, torch.tensor([ref_mel.shape[-1]], device=self.device))
        spk_latent = self.gpt.speaker_latent(spk_cond_emb)
        return SpeakerConditioning(spk_cond_emb, emo_cond_emb, codes, S_ref, ref_mel, style,
                                   prompt_condition, spk_latent)

    def speaker(self, voice: str | Path | None = None, speaker_id: Optional[str] = None,
                timer: Optional[StageTimer] = None) -> SpeakerConditioning:
        """Speaker conditioning of an audio file (cached by content hash, in memory and in the store)
        or of a registered speaker_id (memory, then the store; never re-extracted)."""
        if (voice is None) == (speaker_id is None):
            raise OptionError("give exactly one of a voice audio file or a registered speaker_id")
        if speaker_id is not None:
            # The store keeps its own bounded memory LRU and notices overwrites by other processes.
            if self.store is None:
                raise OptionError(f"speaker {speaker_id!r}: this engine has no speaker store")
            cond = SpeakerConditioning.from_tensors(self.store.get(speaker_id, self._cache_fingerprint), self.device)
            if timer:
                timer.timings.speaker_cache = "hit"
            return cond
        digest = sha256_file(voice)
        cond = self._speakers.get_fresh(digest)
        if cond is None and self.store is not None:
            cached = self.store.cache_get(digest, self._cache_fingerprint)
            cond = SpeakerConditioning.from_tensors(cached, self.device) if cached is not None else None
        hit = cond is not None
        if cond is None:
            cond = self.extract_speaker(voice)
            if self.store is not None:
                self.store.cache_put(digest, self._cache_fingerprint, cond.tensors())
        self._speakers.put(digest, cond)
        if timer:
            timer.timings.speaker_cache = "hit" if hit else "miss"
        return cond

    def register_speaker(self, speaker_id: str, audio_path: str | Path, overwrite: bool = False):
        """Extract a clip's conditioning once and store it under speaker_id (disk and memory)."""
        if self.store is None:
            raise OptionError("this engine has no speaker store to register into")
        digest = sha256_file(audio_path)
        cond = self.extract_speaker(audio_path)
        record = self.store.put(speaker_id, cond.tensors(), audio_sha256=digest,
                                model_fingerprint=self._cache_fingerprint, source=str(audio_path), overwrite=overwrite,
                                duration_s=cond.ref_mel.shape[-1] * 256 / SAMPLE_RATE)
        return record

    @torch.inference_mode()
    def emotion_features(self, audio_path: str | Path) -> torch.Tensor:
        digest = sha256_file(audio_path)
        emb = self._emotions.get_fresh(digest)
        if emb is None:
            with self._autocast("conditioning"):
                emb = self.w2v(self._audio.load_emotion_audio(audio_path).to(self.device)).float()
            self._emotions.put(digest, emb)
        return emb

    @torch.inference_mode()
    def emotion_vector(self, spk: SpeakerConditioning, emotion: Emotion, text: str = "",
                       seed: int = 0) -> torch.Tensor:
        """The (1, D) emotion vector added to the GPT conditioning (SPEC-gpt.md section 5); `text` is
        what emotion-from-text reads when the request gives no emotion text of its own. The emotion
        encoders run at the conditioning precision; the result is fp32."""
        from .emotion import emovec_from_weights

        weights = list(emotion.vector) if emotion.vector is not None else None
        if emotion.from_text:
            if self._emotion_text is None:
                from .emotion_text import EmotionTextModel

                self._emotion_text = EmotionTextModel.from_folder(self.folder, str(self.device))
            weights = self._emotion_text.weights(emotion.text or text)
        emo_cond_emb = self.emotion_features(emotion.audio) if weights is None and emotion.audio is not None else None
        with self._autocast("conditioning"):
            if weights is not None:
                rng = random.Random(seed) if emotion.use_random else None
                mat, total = emovec_from_weights(weights, spk.style, self.emotions, emotion.alpha,
                                                 emotion.use_random, rng)
                base = self.gpt.merge_emovec(spk.spk_cond_emb, spk.emo_cond_emb, 1.0).float()
                return mat + (1.0 - total) * base
            if emo_cond_emb is not None:
                return self.gpt.merge_emovec(spk.spk_cond_emb, emo_cond_emb, emotion.alpha).float()
            return self._default_emovec(spk)

    def _default_emovec(self, spk: SpeakerConditioning) -> torch.Tensor:
        """The speaker's own emotion (no emotion given): a pure function of its features, so it is computed
        once per speaker and kept with the other cached conditioning (same values, two emotion-encoder
        passes saved per request)."""
        h = hashlib.sha256()
        for t in (spk.spk_cond_emb, spk.emo_cond_emb):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
        key = h.hexdigest()
        emovec = self._default_emovecs.get_fresh(key)
        if emovec is None:
            emovec = self.gpt.merge_emovec(spk.spk_cond_emb, spk.emo_cond_emb, 1.0).float()
            self._default_emovecs.put(key, emovec)
        return emovec

    # ---- synthesis -------------------------------------------------------------------------------
    def synthesize(self, text: str, voice: str | Path | None = None, speaker_id: Optional[str] = None,
                   emotion: Optional[Emotion] = None, preset: str = "baseline", settings: Optional[Settings] = None,
                   seed: Optional[int] = None, profile: bool = False, forced_codes: Optional[int] = None,
                   noise: Optional[Sequence[torch.Tensor]] = None, **overrides) -> SynthesisResult:
        """Speak `text` in a voice (audio file) or a registered speaker_id.

        preset + overrides (any `Settings` field) or a ready `settings`; `seed` makes the result
        deterministic (drawn and reported when None); `profile` synchronises the device at stage
        boundaries. `forced_codes` makes every segment generate exactly that many codes (the stop code
        is suppressed; for timing random-weight models, which never stop). `noise` injects each
        segment's CFM starting noise (1, 80, T_ref + T_target) (parity with the official goldens).
        """
        if not isinstance(text, str):
            raise OptionError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise OptionError("text is empty: give something to say")
        if seed is not None:
            check_seed(seed)
        settings = settings.overridden(**overrides) if settings is not None else resolve(preset, overrides)
        emotion = emotion or Emotion()
        if forced_codes is not None and forced_codes < 1:
            raise OptionError(f"forced_codes={forced_codes} must be >= 1")
        seed = random.randrange(2**31) if seed is None else int(seed)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        timer = StageTimer(self.device, synchronize=profile)
        with torch.inference_mode():
            with timer.stage("text"):
                segments = self.text.segments_for_synthesis(text, settings.max_text_tokens_per_segment)
            with timer.stage("speaker_cond"):
                spk = self.speaker(voice, speaker_id, timer)
            with timer.stage("emotion_cond"):
                emovec = self.emotion_vector(spk, emotion, text, seed)
            results = []
            for k, ids in enumerate(segments):
                timer.new_segment()
                seg_noise = noise[k] if noise is not None else None
                results.append(self._segment(spk, ids, emovec, settings, gen, timer, forced_codes, seg_noise))
        silence = torch.zeros(1, int(SAMPLE_RATE * settings.interval_silence_ms / 1000))
        pieces = []
        for k, seg in enumerate(results):
            pieces += [silence] if k else []
            pieces.append(seg.wav_pcm.cpu())
        wav_pcm = torch.cat(pieces, dim=1)
        audio = (wav_pcm[0] / PCM_SCALE).clamp(-1.0, 1.0).numpy().astype(np.float32)
        timings = timer.finish(len(audio) / SAMPLE_RATE, sum(int(s.codes.shape[1]) for s in results))
        if any(s.hit_max_mel_tokens for s in results) and forced_codes is None:
            warnings.warn(f"generation stopped at max_mel_tokens ({settings.max_mel_tokens}) in "
                          f"{sum(s.hit_max_mel_tokens for s in results)} segment(s): the speech may be cut; "
                          "lower max_text_tokens_per_segment or raise max_mel_tokens", RuntimeWarning, stacklevel=2)
        return SynthesisResult(audio, SAMPLE_RATE, timings, settings, seed, results)

    def _segment(self, spk: SpeakerConditioning, ids: list[int], emovec: torch.Tensor, settings: Settings,
                 gen: torch.Generator, timer: StageTimer, forced_codes: Optional[int],
                 noise: Optional[torch.Tensor]) -> SegmentResult:
        from .decoding import MaxMelTokensWarning, generate, trim_codes

        text_ids = torch.tensor(ids, dtype=torch.int32, device=self.device)
        options = settings.decoding(forced_codes)
        stop = self.folder.config.gpt.stop_mel_token
        with timer.stage("gpt_gen"), warnings.catch_warnings():
            warnings.simplefilter("ignore", MaxMelTokensWarning)  # one warning per request, in synthesize
            generation = generate(self.gpt, spk.spk_latent, text_ids, emovec, options, generator=gen)
        codes, code_lens, hit_max = trim_codes(generation.codes, stop)
        with timer.stage("gpt_forward"):
            latent = self.gpt.latents(spk.spk_latent, text_ids, codes, emovec)
        with timer.stage("s2mel"), self._autocast("s2mel"):
            vc_target = self._s2mel(spk, codes, latent, settings, gen, noise).float()
        with timer.stage("bigvgan"), self._autocast("vocoder"):
            wav = self.vocoder(vc_target).float().reshape(1, -1)
            wav_pcm = (wav * PCM_SCALE).clamp(-PCM_SCALE, PCM_SCALE)
        return SegmentResult(ids, codes, hit_max, wav_pcm)

    def _s2mel(self, spk: SpeakerConditioning, codes: torch.Tensor, latent: torch.Tensor, settings: Settings,
               gen: torch.Generator, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """Codes + latents -> the mel of the new speech (1, 80, T_target), prompt part removed."""
        from .models.s2mel import target_length

        s2 = self.s2mel
        S_infer = self.codec.vq2emb(codes).transpose(1, 2) + s2.gpt_layer(latent)
        target = torch.tensor([target_length(codes.shape[1])], device=self.device)
        cond = s2.length_regulator(S_infer, target)
        return self._s2mel_from_cond(spk, cond, settings, gen, noise)

    def _s2mel_from_cond(self, spk: SpeakerConditioning, cond: torch.Tensor, settings: Settings,
                         gen: Optional[torch.Generator], noise: Optional[torch.Tensor]) -> torch.Tensor:
        cat = torch.cat([spk.prompt_condition, cond], dim=1)
        t_ref = spk.ref_mel.shape[-1]
        mel = self.s2mel.cfm.inference(cat, torch.tensor([cat.shape[1]], device=self.device), spk.ref_mel, spk.style,
                                       settings.diffusion_steps, cfg_rate=settings.cfg_rate, noise=noise,
                                       generator=gen)
        return mel[:, :, t_ref:]

    def clear_caches(self) -> None:
        """Forget cached conditioning in memory (the store on disk is untouched)."""
        self._speakers.clear()
        self._emotions.clear()
        self._default_emovecs.clear()

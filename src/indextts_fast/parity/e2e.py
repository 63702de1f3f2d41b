"""End-to-end goldens (goldens/e2e.json): the official infer() on the folder itself.

Stage by stage first, each stage fed the GOLDEN outputs of the stage before it (README of the reference
sets), then the whole chain from text + wav with the stored CFM noise injected."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import torch

from . import CaseResult, Goldens, check_fact, compare

STAGE = "e2e"


def _tol(tolerances: dict, key: str) -> tuple[float, float]:
    t = tolerances[key]
    return float(t.get("atol", 0.0)), float(t.get("rtol", 0.0))


def settings_of(params: dict):
    from ..presets import Settings

    return Settings(num_beams=params["num_beams"], do_sample=params["do_sample"], top_p=params["top_p"],
                    top_k=params["top_k"], temperature=params["temperature"],
                    repetition_penalty=params["repetition_penalty"], length_penalty=params["length_penalty"],
                    max_mel_tokens=params["max_mel_tokens"], diffusion_steps=params["diffusion_steps"],
                    cfg_rate=params["inference_cfg_rate"],
                    max_text_tokens_per_segment=params["max_text_tokens_per_segment"],
                    interval_silence_ms=params["interval_silence_ms"])


def check(ref_dir: Path) -> Iterator[CaseResult]:
    from ..decoding import generate, trim_codes
    from ..models.s2mel import target_length
    from .. import stages
    from ..pipeline import PCM_SCALE, Engine, SpeakerConditioning

    g = Goldens(ref_dir, STAGE)
    m = g.manifest
    tol = m["tolerances"]
    engine = Engine(ref_dir)
    P = {k: g[v] for k, v in m["prompt"]["tensors"].items()}
    prompt_path = Path(ref_dir) / m["prompt"]["file"]

    # ---- reference-audio stage ----------------------------------------------------------------
    with torch.inference_mode():
        spk = engine.extract_speaker(prompt_path)
        a, _ = _tol(tol, "prompt.spk_cond_emb / emo_cond_emb")
        yield compare(STAGE, "prompt.spk_cond_emb", spk.spk_cond_emb, P["spk_cond_emb"], a)
        yield compare(STAGE, "prompt.emo_cond_emb", spk.emo_cond_emb, P["emo_cond_emb"], a)
        codes, S_ref = engine.codec.quantize(P["spk_cond_emb"])
        yield compare(STAGE, "prompt.S_ref_codes", codes, P["S_ref_codes"])
        yield compare(STAGE, "prompt.S_ref", S_ref, P["S_ref"], *_tol(tol, "prompt.S_ref"))
        yield compare(STAGE, "prompt.ref_mel", spk.ref_mel, P["ref_mel"], *_tol(tol, "prompt.ref_mel"))
        yield compare(STAGE, "prompt.style", spk.style, P["style"], *_tol(tol, "prompt.style"))
        pc = engine.s2mel.length_regulator(P["S_ref"], torch.tensor([P["ref_mel"].shape[-1]]))
        yield compare(STAGE, "prompt.prompt_condition", pc, P["prompt_condition"], *_tol(tol, "prompt.prompt_condition"))
        lat_tol = _tol(tol, "prompt.spk_cond_latent / prompt.emovec")
        yield compare(STAGE, "prompt.spk_cond_latent", engine.gpt.speaker_latent(P["spk_cond_emb"]),
                      P["spk_cond_latent"], *lat_tol)
        emovec = engine.gpt.merge_emovec(P["spk_cond_emb"], P["emo_cond_emb"], 1.0)
        yield compare(STAGE, "prompt.emovec", emovec, P["emovec"], *lat_tol)
    golden_spk = SpeakerConditioning(P["spk_cond_emb"], P["emo_cond_emb"], P["S_ref_codes"], P["S_ref"], P["ref_mel"],
                                     P["style"], P["prompt_condition"], P["spk_cond_latent"])

    for case in m["cases"]:
        cid, params = case["id"], case["params"]
        settings = settings_of(params)
        # ---- text -> segments (exact)
        segments = engine.text.segments_for_synthesis(case["text"], settings.max_text_tokens_per_segment)
        yield check_fact(STAGE, f"{cid}.n_segments", len(segments) == case["n_segments"],
                         f"{len(segments)} segments, golden {case['n_segments']}")
        # ---- each segment, stage by stage from golden inputs
        for seg in case["segments"]:
            k, T = seg["index"], {n: g[t] for n, t in seg["tensors"].items()}
            name = f"{cid}.seg{k}"
            ids = segments[k] if k < len(segments) else []
            yield compare(STAGE, f"{name}.text_tokens", torch.tensor(ids, dtype=torch.int32), T["text_tokens"][0])
            with torch.inference_mode():
                options = settings.decoding()
                text_ids = T["text_tokens"][0]
                raw = generate(engine.gpt, P["spk_cond_latent"], text_ids, P["emovec"], options).codes
                yield compare(STAGE, f"{name}.codes_raw", raw, T["codes_raw"])
                cut, lens, _ = trim_codes(T["codes_raw"], engine.folder.config.gpt.stop_mel_token)
                yield compare(STAGE, f"{name}.codes", cut, T["codes"])
                yield compare(STAGE, f"{name}.code_lens", lens, T["code_lens"])
                latent = engine.gpt.latents(P["spk_cond_latent"], text_ids, T["codes"], P["emovec"])
                yield compare(STAGE, f"{name}.latent", latent, T["latent"], *_tol(tol, "latent"))
                s_tol = _tol(tol, "gpt_layer_out / S_infer / cond")
                gl = engine.s2mel.gpt_layer(T["latent"])
                yield compare(STAGE, f"{name}.gpt_layer_out", gl, T["gpt_layer_out"], *s_tol)
                S_infer = engine.codec.vq2emb(T["codes"]).transpose(1, 2) + gl
                yield compare(STAGE, f"{name}.S_infer", S_infer, T["S_infer"], *s_tol)
                tl = torch.tensor([target_length(int(T["code_lens"][0]))])
                yield compare(STAGE, f"{name}.target_lengths", tl, T["target_lengths"])
                cond = engine.s2mel.length_regulator(T["S_infer"], T["target_lengths"])
                yield compare(STAGE, f"{name}.cond", cond, T["cond"], *s_tol)
                vc = stages.s2mel_generate(engine.models, golden_spk, T["cond"], settings.diffusion_steps,
                                           settings.cfg_rate, None, T["noise"])
                yield compare(STAGE, f"{name}.vc_target", vc, T["vc_target"], *_tol(tol, "vc_target"))
                wav = stages.vocode(engine.models, T["vc_target"])
                yield compare(STAGE, f"{name}.wav", wav, T["wav"], *_tol(tol, "wav (per segment, PCM scale)"))
        # ---- the whole chain from text + wav, noise injected
        noise = [g[n] for n in case["inputs"]["cfm_noise"]]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = engine.synthesize(case["text"], voice=prompt_path, settings=settings, seed=0, noise=noise)
        for seg, got in zip(case["segments"], result.segments):
            yield compare(STAGE, f"{cid}.full.seg{seg['index']}.codes", got.codes, g[seg["tensors"]["codes"]])
        wav = torch.from_numpy(result.audio)[None] * PCM_SCALE
        yield compare(STAGE, f"{cid}.full.wav", wav, g[case["outputs"]["wav"]], *_tol(tol, "final wav (PCM scale)"))
        cut = any(s["end"] == "max_mel_tokens" for s in case["segments"])
        warned = any("max_mel_tokens" in str(w.message) for w in caught)
        yield check_fact(STAGE, f"{cid}.max_mel_tokens_warning", warned == cut,
                         f"warning {'missing' if cut else 'unexpected'}")

"""S2Mel goldens (SPEC-s2mel.md 9.2): length regulator (e), gpt_layer (e), one DiT call (f), and the CFM
solver with the stored noise for every run of the manifest's `cfm_runs` (f).

`e.cond` starts from the golden codes: their `vq2emb` needs the semantic codec (models/codec.py); when
that module is not available the golden `S_infer_vq2emb` is used and its own comparison is reported as
such (passing, with a note)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..plan import make_plan
from ..precision import apply_plan
from . import CaseResult, Goldens, check_fact, compare

STAGE = "s2mel"


def _atol(case: dict) -> float:
    return float(case.get("tolerance", {}).get("atol", 0.0))


def _vq2emb(folder, codes: torch.Tensor):
    """(1, hidden, N) codec embedding of codes, or None when the codec is not implemented here."""
    try:
        from ..models.codec import SemanticCodec
    except ImportError:
        return None
    return SemanticCodec.from_folder(folder).vq2emb(codes)


def check(ref_dir: Path) -> Iterator[CaseResult]:
    from ..config import ModelFolder
    from ..models.s2mel import S2Mel, target_length

    g = Goldens(ref_dir, STAGE)
    folder = ModelFolder(ref_dir)
    model = S2Mel.from_folder(folder)
    apply_plan(make_plan("fp32"), s2mel=model)   # as the engine prepares it
    yield check_fact(STAGE, "load.strict", True)
    for case in g.manifest["cases"]:
        cid, atol = case["id"], _atol(case)
        with torch.inference_mode():
            if cid == "e.prompt_condition":
                s_ref, lengths = (g[n] for n in case["inputs"])
                yield compare(STAGE, f"{cid}.prompt_condition", model.length_regulator(s_ref, lengths),
                              g[case["outputs"][0]], atol)
            elif cid == "e.cond":
                yield from _check_cond(g, folder, model, case, target_length)
            elif cid == "f.dit_call":
                for k in case["params"]["k"]:
                    args = [g[f"dit.call{k}.{n}"] for n in ("x", "prompt_x", "x_lens", "t", "style", "mu")]
                    yield compare(STAGE, f"{cid}.call{k}.out", model.cfm.estimator(*args), g[f"dit.call{k}.out"], atol)
            elif cid == "f.cfm":
                yield from _check_cfm(g, model, case)
            else:
                yield check_fact(STAGE, f"{cid}", False, "unknown case id (checker needs updating)")


def _check_cond(g: Goldens, folder, model, case: dict, target_length) -> Iterator[CaseResult]:
    cid, atol = case["id"], _atol(case)
    codes, code_lens, latent = (g[n] for n in case["inputs"])
    gpt_out = model.gpt_layer(latent)
    yield compare(STAGE, f"{cid}.gpt_layer_out", gpt_out, g["lr.gpt_layer_out"], atol)
    emb = _vq2emb(folder, codes)
    if emb is None:
        vq = g["lr.S_infer_vq2emb"]
        yield check_fact(STAGE, f"{cid}.S_infer_vq2emb (codec not available: golden used)", True)
    else:
        vq = emb.transpose(1, 2)
        yield compare(STAGE, f"{cid}.S_infer_vq2emb", vq, g["lr.S_infer_vq2emb"], atol)
    s_infer = vq + gpt_out
    yield compare(STAGE, f"{cid}.S_infer", s_infer, g["lr.S_infer"], atol)
    lengths = torch.tensor([target_length(int(n)) for n in code_lens])
    yield compare(STAGE, f"{cid}.target_lengths", lengths, g["lr.target_lengths"])
    yield compare(STAGE, f"{cid}.cond", model.length_regulator(s_infer, lengths), g["lr.cond"], atol)


def _check_cfm(g: Goldens, model, case: dict) -> Iterator[CaseResult]:
    cid, atol = case["id"], _atol(case)
    mu, x_lens, prompt, style, noise = (g[n] for n in case["inputs"])
    temperature = float(case.get("params", {}).get("temperature", 1.0))
    t_p = prompt.shape[-1]
    cfm = model.cfm
    for run in g.manifest["cfm_runs"]:
        n, rate = int(run["diffusion_steps"]), float(run["inference_cfg_rate"])
        mel = cfm.inference(mu, x_lens, prompt, style, n, rate, noise=noise, temperature=temperature)
        name = run["output"].removeprefix("cfm.")
        yield compare(STAGE, f"{cid}.{name}", mel[:, :, t_p:], g[run["output"]], atol)
        if run.get("output_full"):
            yield compare(STAGE, f"{cid}.{run['output_full'].removeprefix('cfm.')}", mel, g[run["output_full"]], atol)
        if run.get("output_full_prompt_part_is_zero"):
            yield check_fact(STAGE, f"{cid}.{name}.prompt_part_is_zero", bool((mel[:, :, :t_p] == 0).all()),
                             "the prompt frames of the output are not exactly 0")
    seed = g.manifest.get("cfm_noise", {}).get("torch_manual_seed")
    if seed is not None:  # our generator path draws the same noise as the official global-RNG draw
        steps = 2
        drawn = cfm.inference(mu, x_lens, prompt, style, steps, 0.7,
                              generator=torch.Generator().manual_seed(int(seed)), temperature=temperature)
        injected = cfm.inference(mu, x_lens, prompt, style, steps, 0.7, noise=noise, temperature=temperature)
        yield compare(STAGE, f"{cid}.seeded_generator_equals_stored_noise", drawn, injected)

"""How far a reduced-precision mode is from fp32, stage by stage, on the same inputs.

- gpt: teacher-forced logits through the real prefill + KV-cached decode steps (the kernels generation
  uses), fed the codes the fp32 model chose greedily: logits relative error ||L_q - L|| / ||L|| over all
  steps, top-1 agreement; then free greedy generation with each model: positional code agreement and the
  length of the common prefix.
- s2mel: length regulator + DiT flow matching (`steps` Euler steps, CFG) on seeded random content, prompt
  mel and style with the same starting noise: mel relative error and cosine over the generated frames.
- vocoder: BigVGAN on the fp32 mel of the s2mel check: waveform SNR in dB.
Inputs are seeded random tensors shaped from the folder's config, so the check runs on any model folder
(random weights, real checkpoints). THRESHOLDS are the limits the tests enforce on the tiny model.

`sensitivity=True` also measures how much fp32 ITSELF moves when its input moves by one rounding step
(the starting noise of the flow matching, the vocoder's mel, each value moved to a neighbouring float): the floor no
reduced-precision mode can go below. A model that amplifies rounding that much (the random full-size
weights do: deep random nets are chaotic) cannot meet a threshold under its own sensitivity, whatever the
arithmetic; trained weights are expected to be far calmer. Costs one more fp32 pass of each stage.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Optional

import torch

from .config import ModelFolder
from .plan import Precision, PrecisionPlan, make_plan
from .precision import apply_plan, autocast

THRESHOLDS = {"gpt_logits_rel_err": 3e-2, "s2mel_mel_rel_err": 1e-2, "vocoder_snr_db": 30.0}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def cosine(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0))


def snr_db(got: torch.Tensor, want: torch.Tensor) -> float:
    noise = float((got.double() - want.double()).pow(2).sum())
    signal = float(want.double().pow(2).sum())
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


# ---- GPT ---------------------------------------------------------------------------------------------

def gpt_inputs(model, text_tokens: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    d, cfg = model.cfg.model_dim, model.cfg
    spk_latent = torch.randn(1, 32, d, generator=gen)
    emovec = 0.1 * torch.randn(1, d, generator=gen)
    text = torch.randint(2, cfg.number_text_tokens, (min(text_tokens, cfg.max_text_tokens),), generator=gen)
    return spk_latent, text, emovec


@torch.inference_mode()
def teacher_forced_logits(model, spk_latent, text, emovec, codes: torch.Tensor) -> torch.Tensor:
    """(n, V) logits of prefill then n-1 decode steps fed `codes` (1-D), at generation's mel positions."""
    from .decoding import KVCache, decode_step, prefill

    prompt, valid = model.prompt(spk_latent, text, emovec)
    cache = KVCache(model, 1, codes.numel() + 1)
    out = [prefill(model, prompt, valid, cache)]
    for k in range(codes.numel() - 1):
        out.append(decode_step(model, cache, codes[k:k + 1], position=k + 2))
    return torch.cat(out).float()


def greedy_codes(model, spk_latent, text, emovec, n: int) -> torch.Tensor:
    from .decoding import DecodingOptions, MaxMelTokensWarning, generate

    options = DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=n, min_new_tokens=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaxMelTokensWarning)
        return generate(model, spk_latent, text, emovec, options).codes[0]


def gpt_fidelity(reference, quantized, codes: int = 48, text_tokens: int = 24, seed: int = 0) -> dict:
    limit = reference.mel_pos_embedding.emb.num_embeddings - 2
    n = max(2, min(codes, limit))
    spk_latent, text, emovec = gpt_inputs(reference, text_tokens, seed)
    want_codes = greedy_codes(reference, spk_latent, text, emovec, n)
    got_codes = greedy_codes(quantized, spk_latent, text, emovec, n)
    want = teacher_forced_logits(reference, spk_latent, text, emovec, want_codes)
    got = teacher_forced_logits(quantized, spk_latent, text, emovec, want_codes)
    same = (got_codes == want_codes)
    prefix = int(same.long().cumprod(0).sum())
    return {"codes": n, "text_tokens": int(text.numel()),
            "logits_rel_err": rel_err(got, want), "logits_cosine": cosine(got, want),
            "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
            "greedy_code_agreement": float(same.float().mean()), "greedy_common_prefix": prefix}


# ---- S2Mel and vocoder -------------------------------------------------------------------------------

def s2mel_inputs(folder: ModelFolder, codes: int, prompt_codes: int, seed: int):
    from .models.s2mel import target_length

    cfg = folder.config.s2mel
    gen = torch.Generator().manual_seed(seed)
    width = cfg.length_regulator.in_channels
    content = torch.randn(1, codes, width, generator=gen)
    prompt_content = torch.randn(1, prompt_codes, width, generator=gen)
    t_ref, t_target = target_length(prompt_codes), target_length(codes)
    n_mels = cfg.DiT.in_channels
    ref_mel = -5.0 + 2.0 * torch.randn(1, n_mels, t_ref, generator=gen)
    style = torch.randn(1, cfg.style_encoder.dim, generator=gen)
    noise = torch.randn(1, n_mels, t_ref + t_target, generator=gen)
    return content, prompt_content, t_ref, t_target, ref_mel, style, noise


@torch.inference_mode()
def run_s2mel(s2mel, inputs, steps: int, cfg_rate: float, plan: PrecisionPlan, device) -> torch.Tensor:
    """Length regulator (prompt and target) + flow matching (stages.s2mel_generate) at the plan's S2Mel
    precision -> the generated mel (1, 80, T), fp32."""
    from . import stages
    from .results import SpeakerConditioning

    content, prompt_content, t_ref, t_target, ref_mel, style, noise = (
        x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    m = stages.Models(folder=None, device=torch.device(device), plan=plan, text=None, gpt=None, emotions=None,
                      w2v=None, codec=None, campplus=None, s2mel=s2mel, vocoder=None)   # only what the S2Mel reads
    lr = s2mel.length_regulator
    with m.autocast("s2mel"):
        prompt_condition, cond = lr(prompt_content, t_ref).float(), lr(content, t_target).float()
    spk = SpeakerConditioning(None, None, None, None, ref_mel, style, prompt_condition, None)
    return stages.s2mel_generate(m, spk, cond, steps, cfg_rate, noise=noise)


@torch.inference_mode()
def run_vocoder(vocoder, mel: torch.Tensor, mode: str, device) -> torch.Tensor:
    with autocast(device, mode):
        return vocoder(mel.to(device)).float().reshape(-1)


def nudged(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x with every value moved to its next float up or down (random direction): one rounding step."""
    gen = torch.Generator().manual_seed(seed + 1)
    up = torch.randint(0, 2, x.shape, generator=gen).bool().to(x.device)
    inf = torch.full_like(x, math.inf)
    return torch.where(up, torch.nextafter(x, inf), torch.nextafter(x, -inf))


# ---- everything --------------------------------------------------------------------------------------

def fidelity(model_dir, precision: Precision, *, codes: int = 48, text_tokens: int = 24, mel_codes: int = 60,
             prompt_codes: int = 40, steps: int = 25, cfg_rate: float = 0.7, seed: int = 0,
             device: str = "cpu", stages: Optional[Mapping[str, bool]] = None, sensitivity: bool = False,
             force: bool = False) -> dict:
    """Compare every non-fp32 stage of `precision` with fp32 on `model_dir`; returns a JSON-able dict.
    The reduced-precision models are made by `precision.apply_plan` from the same plan `Engine` makes
    (`plan.make_plan`, `auto` included): the code path measured is the engine's; the fp32 references are
    separate, unconverted copies."""
    from .models.bigvgan import BigVGAN
    from .models.gpt import load_gpt
    from .models.s2mel import S2Mel

    folder = model_dir if isinstance(model_dir, ModelFolder) else ModelFolder(model_dir)
    plan = make_plan(precision, device=device, force=force)
    modes = plan.as_dict()
    wanted = {s: (stages or {}).get(s, True) for s in ("gpt", "s2mel", "vocoder")}
    report: dict = {"model_dir": str(folder.root), "precision": modes, "plan": plan.describe(), "seed": seed,
                    "thresholds": THRESHOLDS}
    if wanted["gpt"] and modes["gpt"] != "fp32":
        reference = load_gpt(folder).to(device)
        quantized = lowp_models(plan, folder, device, "gpt")
        report["gpt"] = {"mode": modes["gpt"], **gpt_fidelity(reference, quantized, codes, text_tokens, seed)}
        del reference, quantized
    if (wanted["s2mel"] and modes["s2mel"] != "fp32") or (wanted["vocoder"] and modes["vocoder"] != "fp32"):
        s2mel = S2Mel.from_folder(folder).to(device)
        inputs = s2mel_inputs(folder, mel_codes, prompt_codes, seed)
        exact = make_plan("fp32")
        mel = run_s2mel(s2mel, inputs, steps, cfg_rate, exact, device)
        if wanted["s2mel"] and modes["s2mel"] != "fp32":
            lowp = lowp_models(plan, folder, device, "s2mel")
            got = run_s2mel(lowp, inputs, steps, cfg_rate, plan, device)
            del lowp
            report["s2mel"] = {"mode": modes["s2mel"], "frames": int(mel.shape[-1]), "steps": steps,
                               "mel_rel_err": rel_err(got, mel), "mel_cosine": cosine(got, mel),
                               "mel_max_abs_err": float((got - mel).abs().max())}
            if sensitivity:
                *rest, noise = inputs
                moved = run_s2mel(s2mel, (*rest, nudged(noise, seed)), steps, cfg_rate, exact, device)
                report["s2mel"]["fp32_sensitivity_rel_err"] = rel_err(moved, mel)
        del s2mel
        if wanted["vocoder"] and modes["vocoder"] != "fp32":
            reference = BigVGAN.from_folder(folder).to(device)
            want = run_vocoder(reference, mel, "fp32", device)
            got = run_vocoder(lowp_models(plan, folder, device, "vocoder"), mel, modes["vocoder"], device)
            report["vocoder"] = {"mode": modes["vocoder"], "samples": int(want.numel()),
                                 "snr_db": snr_db(got, want), "wave_rel_err": rel_err(got, want)}
            if sensitivity:
                moved = run_vocoder(reference, nudged(mel, seed), "fp32", device)
                report["vocoder"]["fp32_sensitivity_snr_db"] = snr_db(moved, want)
    report["within_thresholds"] = within_thresholds(report)
    return report


def lowp_models(plan: PrecisionPlan, folder: ModelFolder, device, stage: str):
    """A fresh copy of `stage`'s model (gpt, s2mel or vocoder) converted by `apply_plan` as `Engine` does."""
    from .models.bigvgan import BigVGAN
    from .models.gpt import load_gpt
    from .models.s2mel import S2Mel

    loader = {"gpt": load_gpt, "s2mel": S2Mel.from_folder, "vocoder": BigVGAN.from_folder}[stage]
    model = loader(folder).to(device)
    apply_plan(plan, **{stage: model})
    return model


def within_thresholds(report: dict) -> dict:
    out = {}
    if "gpt" in report:
        out["gpt_logits_rel_err"] = report["gpt"]["logits_rel_err"] <= THRESHOLDS["gpt_logits_rel_err"]
    if "s2mel" in report:
        out["s2mel_mel_rel_err"] = report["s2mel"]["mel_rel_err"] <= THRESHOLDS["s2mel_mel_rel_err"]
    if "vocoder" in report:
        out["vocoder_snr_db"] = report["vocoder"]["snr_db"] >= THRESHOLDS["vocoder_snr_db"]
    return out


def format_report(report: dict) -> str:
    lines = [f"fidelity vs fp32: {report['model_dir']}  ({', '.join(f'{k}={v}' for k, v in report['precision'].items())})"]
    if "gpt" in report:
        g = report["gpt"]
        lines.append(f"  gpt {g['mode']:>7}: logits rel err {g['logits_rel_err']:.2e} (cos {g['logits_cosine']:.6f}), "
                     f"top-1 {g['top1_agreement']:.1%} of {g['codes']} teacher-forced steps; greedy codes "
                     f"{g['greedy_code_agreement']:.1%} agree, common prefix {g['greedy_common_prefix']}")
    if "s2mel" in report:
        s = report["s2mel"]
        lines.append(f"  s2mel {s['mode']:>5}: mel rel err {s['mel_rel_err']:.2e}, cosine {s['mel_cosine']:.6f}, "
                     f"max abs {s['mel_max_abs_err']:.3g} ({s['frames']} frames, {s['steps']} steps)")
        if "fp32_sensitivity_rel_err" in s:
            lines.append(f"        fp32 itself, starting noise moved by one rounding step: mel rel err "
                         f"{s['fp32_sensitivity_rel_err']:.2e} (no mode can do better)")
    if "vocoder" in report:
        v = report["vocoder"]
        lines.append(f"  vocoder {v['mode']:>3}: SNR {v['snr_db']:.1f} dB, wave rel err {v['wave_rel_err']:.2e} "
                     f"({v['samples']} samples)")
        if "fp32_sensitivity_snr_db" in v:
            lines.append(f"        fp32 itself, mel moved by one rounding step: SNR {v['fp32_sensitivity_snr_db']:.1f} dB "
                         f"(no mode can do better)")
    for name, ok in report["within_thresholds"].items():
        lines.append(f"  {name} <= {THRESHOLDS[name]:g}: {'yes' if ok else 'NO'}" if "snr" not in name else
                     f"  {name} >= {THRESHOLDS[name]:g}: {'yes' if ok else 'NO'}")
    return "\n".join(lines)

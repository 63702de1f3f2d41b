"""Measure reduced-precision modes against fp32 on the same inputs, stage by stage.

For each --precision mode: GPT teacher-forced logits relative error and top-1 agreement (through the real
prefill + KV-cached decode steps) and greedy code agreement; S2Mel (length regulator + DiT flow matching)
mel relative error and cosine; BigVGAN waveform SNR. Inputs are seeded random tensors shaped from the
folder's config, so any model folder works (random weights or real checkpoints). Stages whose mode is
fp32 are exact and skipped. Exit status 1 when a value is outside fidelity.THRESHOLDS."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_precision_argument, parse_precision


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, metavar="DIR", help="an IndexTTS2 model folder")
    add_precision_argument(p, default="auto", many=True)
    p.add_argument("--codes", type=int, default=48, help="GPT steps compared (teacher-forced and greedy)")
    p.add_argument("--text-tokens", type=int, default=24, help="text tokens of the GPT prompt")
    p.add_argument("--mel-codes", type=int, default=60, help="codes of the S2Mel target (x1.72 frames)")
    p.add_argument("--prompt-codes", type=int, default=40, help="codes of the S2Mel prompt")
    p.add_argument("--steps", type=int, default=25, help="diffusion steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sensitivity", action="store_true",
                   help="also measure fp32's own change when its input moves by one rounding step (the floor "
                        "no mode can beat; one more fp32 pass of s2mel and vocoder)")
    p.add_argument("--json", metavar="FILE")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..fidelity import fidelity, format_report

    torch.set_num_threads(args.threads)
    reports = {}
    for mode in [m.strip() for m in args.precision.split(",") if m.strip()]:
        report = fidelity(args.model_dir, parse_precision(mode), codes=args.codes, text_tokens=args.text_tokens,
                          mel_codes=args.mel_codes, prompt_codes=args.prompt_codes, steps=args.steps,
                          seed=args.seed, device=args.device, sensitivity=args.sensitivity,
                          force=args.force_precision)
        print(format_report(report))
        reports[mode] = report
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"modes": reports}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(all(r["within_thresholds"].values()) for r in reports.values()) else 1

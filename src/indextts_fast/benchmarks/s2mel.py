"""S2Mel flow matching (DiT estimator, CFG batch of two) on a full-size model: seconds per diffusion step.

Cases: a 4.1 s prompt (353 mel frames) + 150 codes (T = 611 frames, the official baseline's size) and the
same prompt + ~5 s and ~10 s of speech. Each case times a few solver steps of `cfm.inference` (random
content, prompt mel, style; seeded noise) and reports the median per step, the FLOPs of one step (matrix
products and convolutions counted by torch's FlopCounterMode, attention added analytically) and the
fraction of this machine's measured fp32 matmul peak they reach. The official code's figure for the first
case (0.77 s per step, fp32, 2 threads; from issue 3, not measured here) is shown next to it.
`--precision fp32,bf16` (default; add int8dyn for the int8 DiT) times them side by side in one run (bf16 =
the engine's bf16 stage: weights cast once, bf16 autocast; int8dyn = the same with the DiT's large
products as int8 GEMMs, int8gemm.py, here quantised from the bf16-cast weights: same speed), with each
case's speed-up over fp32 and its fraction of that precision's measured peak (int8dyn: int8 op/s).
FLOPs are those of a step that skips the prompt frames' tail (DiT.forward's from_frame), as solved.

Model folder: --model-dir, else $INDEXTTS_FAST_FULLSIZE, else the full-size random model `profile` makes in
the data folder. Make one with `indextts-fast make-checkpoint DIR --size full --only s2mel --only bigvgan`.

Denormals: random full-size weights saturate some WaveNet sigmoids into float32 denormals (0.2 % of the
values), which slow x86 arithmetic by ~20 % and which trained weights should rarely produce; the bench
flushes them to zero (`torch.set_flush_denormal`, results change by < 1.2e-38) unless --keep-denormals.
"""

from __future__ import annotations

import argparse
import statistics

import torch

OFFICIAL_S_PER_STEP = {150: 0.77}  # codes -> official seconds per CFG step (4.1 s prompt, fp32, 2 threads)
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", help="full-size model folder (default: $INDEXTTS_FAST_FULLSIZE, else the "
                                       "random full-size model in the data folder)")
    p.add_argument("--prompt-seconds", type=float, default=4.1, help="reference prompt length (default 4.1)")
    p.add_argument("--codes", type=int, nargs="+", default=[150, 250, 500],
                   help="GPT codes per case (default 150 250 500: ~3, 5 and 10 s of speech)")
    p.add_argument("--steps", type=int, default=2, help="solver steps per timed call (default 2)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per case (default 3)")
    p.add_argument("--cfg-rate", type=float, default=0.7, help="classifier-free guidance (default 0.7)")
    p.add_argument("--keep-denormals", action="store_true", help="do not flush float32 denormals to zero")
    p.add_argument("--precision", default=None,
                   help="comma-separated modes of the stage (fp32, bf16, int8dyn) or auto, side by side; "
                        "default: every mode that runs natively on this CPU")


def step_flops(estimator, mu: torch.Tensor, prompt_x: torch.Tensor, style: torch.Tensor, batch: int,
               from_frame: int = 0) -> float:
    """FLOPs of one estimator call on a batch of `batch` (CFG: 2) asked for the frames from `from_frame` on
    (the flow matching skips the prompt's): counted matmuls/convs + attention."""
    from torch.utils.flop_counter import FlopCounterMode

    T = mu.shape[1]
    x = torch.zeros(batch, estimator.in_channels, T)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        estimator(x, prompt_x.expand(batch, -1, -1), torch.tensor([T]), torch.zeros(batch),
                  style.expand(batch, -1), mu.expand(batch, -1, -1), from_frame)
    layers = estimator.transformer.layers
    dim = layers[0].attention.n_heads * layers[0].attention.head_dim
    attention = len(layers) * 4 * batch * T * T * dim  # q·kᵀ and p·v (the CPU flash kernel is not counted)
    return counter.get_total_flops() + attention


def run(args: argparse.Namespace) -> dict:
    from ..config import ModelFolder
    from ..models.s2mel import S2Mel, target_length
    from .common import add_speedups, at_precision, emulated, machine, precision_peak, stage_precisions, table

    torch.set_flush_denormal(not args.keep_denormals)
    from .common import find_model_dir

    folder = ModelFolder(find_model_dir(args.model_dir, "s2mel.pth", "S2Mel weights"))
    model = S2Mel.from_folder(folder)
    cfg = folder.config.s2mel
    hop, sr = cfg.preprocess_params.spect_params.hop_length, cfg.preprocess_params.sr
    prompt_frames = int(args.prompt_seconds * sr) // hop
    modes = stage_precisions(args.precision, "s2mel", args.force_precision)
    # re-measured after every case; the best one is this machine's peak for that precision
    peaks = {m: [precision_peak(m, emulated("s2mel", m))] for m in modes}
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for codes in args.codes:
        T = prompt_frames + target_length(codes)
        inputs.append((codes, T, torch.randn(1, T, cfg.DiT.content_dim, generator=gen),
                       torch.randn(1, cfg.DiT.in_channels, prompt_frames, generator=gen) - 5,
                       torch.randn(1, cfg.style_encoder.dim, generator=gen)))
    # FLOPs per step counted once per case on the loaded fp32 model (the counter does not see int8 products;
    # every precision runs the same products)
    flops = [step_flops(model.cfm.estimator, mu, _prompt_x(model, T, prompt), style, 2 if args.cfg_rate > 0 else 1,
                        prompt_frames) for _, T, mu, prompt, style in inputs]
    cases = []
    for precision in modes:
        model = model if precision == "fp32" else S2Mel.from_folder(folder)   # converted from fresh fp32 weights
        context = at_precision(model, "s2mel", precision)
        for (codes, T, mu, prompt, style), step in zip(inputs, flops):
            cases.append(_case(model, args, precision, context, codes, T, mu, prompt, style, prompt_frames, hop, sr,
                               step))
            peaks[precision].append(precision_peak(precision, emulated("s2mel", precision)))
    peak = add_speedups(cases, "s_per_step", peaks)
    result = {"bench": "s2mel", "machine": machine(), "model_dir": str(folder.root),
              "dit": {"hidden": cfg.DiT.hidden_dim, "depth": cfg.DiT.depth, "heads": cfg.DiT.num_heads,
                      "wavenet_layers": cfg.wavenet.num_layers},
              "steps_per_call": args.steps, "cfg_rate": args.cfg_rate, "flush_denormal": not args.keep_denormals,
              "matmul_peak_gflops": {m: v / 1e9 for m, v in peak.items()},
              "matmul_peak_measurements_gflops": {m: [p / 1e9 for p in v] for m, v in peaks.items()},
              "cases": cases}
    print(f"S2Mel CFM step (DiT {cfg.DiT.hidden_dim}x{cfg.DiT.depth}, CFG {args.cfg_rate}), "
          f"{torch.get_num_threads()} threads, matmul peak "
          f"{', '.join(f'{m} {v / 1e9:.0f}' for m, v in peak.items())} GFLOP/s (best of each precision's "
          f"measurements; 'of peak' is against its own), load avg {result['machine']['load_avg_1m']}")
    print(table(cases, [("precision", "precision", ""), ("case", "case", ""), ("T", "T", "d"),
                        ("s_per_step", "s/step", ".3f"), ("vs_fp32", "vs fp32", ".2f"),
                        ("step_min_s", "min", ".3f"), ("official_s_per_step", "official", ".2f"),
                        ("gflop_per_step", "GFLOP/step", ".1f"), ("gflops", "GFLOP/s", ".1f"),
                        ("fraction_of_peak", "of peak", ".2f"), ("s_per_25_steps", "25 steps s", ".2f")]))
    return result


def _prompt_x(model, T: int, prompt: torch.Tensor) -> torch.Tensor:
    prompt_x = torch.zeros(1, model.cfm.estimator.in_channels, T)
    prompt_x[..., :prompt.shape[-1]] = prompt
    return prompt_x


def _case(model, args, precision, context, codes, T, mu, prompt, style, prompt_frames, hop, sr, flops) -> dict:
    """Time `args.steps`-step solves of one case at one precision (`flops`: of one step)."""
    from .common import summary, timed

    noise_gen = torch.Generator()

    def solve():
        noise_gen.manual_seed(1)
        model.cfm.inference(mu, torch.tensor([T]), prompt, style, args.steps, args.cfg_rate, generator=noise_gen)

    with context:
        times = [t / args.steps for t in timed(solve, args.repeat, warmup=1)]
    s = statistics.median(times)
    return {"precision": precision, "case": f"{args.prompt_seconds:g} s prompt + {codes} codes", "codes": codes,
            "prompt_frames": prompt_frames, "target_frames": T - prompt_frames, "T": T,
            "speech_seconds": (T - prompt_frames) * hop / sr, "s_per_step": s,
            **{f"step_{k}": v for k, v in summary(times).items()},
            "gflop_per_step": flops / 1e9, "gflops": flops / s / 1e9,
            "official_s_per_step": OFFICIAL_S_PER_STEP.get(codes) if precision == "fp32" else None,
            "s_per_25_steps": 25 * s}

"""BigVGAN vocoder on a full-size model: seconds per second of audio.

Cases: mels of ~1, 5 and 10 s (86, 431, 861 frames at 22050 Hz / hop 256). Reported: the median time per
call and per audio second, the model's convolution FLOPs (torch's FlopCounterMode on aten.convolution:
the anti-aliased activations' resampling is not counted) and the fraction of this machine's measured fp32
matmul peak they reach. The official code's figure (0.9 s per audio second, fp32, 2 threads; from issue 3,
not measured here) is shown next to it. `--precision fp32,bf16` (default) times both side by side.

Model folder: --model-dir, else $INDEXTTS_FAST_FULLSIZE, else the random full-size model of `profile` (the first
holding hf_cache/bigvgan). Make one with
`indextts-fast make-checkpoint DIR --size full --only s2mel --only bigvgan`.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from .common import find_model_dir

OFFICIAL_S_PER_AUDIO_SECOND = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", help="full-size model folder (default: $INDEXTTS_FAST_FULLSIZE, else the "
                                       "random full-size model in the data folder)")
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 5.0, 10.0],
                   help="audio seconds per case (default 1 5 10)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per case (default 3)")
    p.add_argument("--keep-denormals", action="store_true", help="do not flush float32 denormals to zero")
    p.add_argument("--precision", default=None,
                   help="comma-separated modes of the stage (fp32, bf16) or auto, side by side; "
                        "default: every mode that runs natively on this CPU")


def conv_flops(model, mel: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(mel)
    counts = counter.get_flop_counts().get("Global", {})
    return float(sum(v for k, v in counts.items() if "convolution" in str(k)))


def run(args: argparse.Namespace) -> dict:
    from ..config import ModelFolder
    from ..models.bigvgan import BigVGAN
    from .common import (add_speedups, at_precision, emulated, machine, precision_peak, stage_precisions, summary,
                         table, timed)

    torch.set_flush_denormal(not args.keep_denormals)
    folder = ModelFolder(find_model_dir(args.model_dir, "hf_cache/bigvgan/bigvgan_generator.pt", "BigVGAN weights"))
    model = BigVGAN.from_folder(folder)
    sr = int(model.cfg.model_extra.get("sampling_rate", 22050))
    modes = stage_precisions(args.precision, "vocoder", args.force_precision)
    peaks = {m: [precision_peak(m, emulated("vocoder", m))] for m in modes}  # best of the measurements after every case
    gen = torch.Generator().manual_seed(0)
    mels = []
    for seconds in args.seconds:
        frames = max(1, round(seconds * sr / model.hop_length))
        mels.append((frames, torch.randn(1, model.cfg.num_mels, frames, generator=gen) - 5))
    cases = []
    for precision in modes:
        model = model if precision == "fp32" else BigVGAN.from_folder(folder)   # converted from fresh fp32 weights
        context = at_precision(model, "vocoder", precision)
        for frames, mel in mels:
            audio_s = frames * model.hop_length / sr
            with torch.inference_mode(), context:
                times = timed(lambda: model(mel), args.repeat, warmup=1)
                flops = conv_flops(model, mel)
            s = statistics.median(times)
            cases.append({"precision": precision, "case": f"{audio_s:.2f} s audio", "frames": frames,
                          "audio_seconds": audio_s, "s_per_call": s, **{f"call_{k}": v for k, v in summary(times).items()},
                          "s_per_audio_second": s / audio_s, "s_per_audio_second_min": min(times) / audio_s,
                          "official_s_per_audio_second": OFFICIAL_S_PER_AUDIO_SECOND if precision == "fp32" else None,
                          "gflop_per_audio_second": flops / audio_s / 1e9, "gflops": flops / s / 1e9})
            peaks[precision].append(precision_peak(precision, emulated("vocoder", precision)))
    peak = add_speedups(cases, "s_per_call", peaks)
    result = {"bench": "vocoder", "machine": machine(), "model_dir": str(folder.root),
              "upsample_initial_channel": model.cfg.upsample_initial_channel, "hop_length": model.hop_length,
              "flush_denormal": not args.keep_denormals,
              "matmul_peak_gflops": {m: v / 1e9 for m, v in peak.items()},
              "matmul_peak_measurements_gflops": {m: [p / 1e9 for p in v] for m, v in peaks.items()}, "cases": cases}
    print(f"BigVGAN (C0 {model.cfg.upsample_initial_channel}, hop {model.hop_length}), {torch.get_num_threads()} "
          f"threads, matmul peak {', '.join(f'{m} {v / 1e9:.0f}' for m, v in peak.items())} GFLOP/s ('of peak' "
          f"is against its own precision's), load avg {result['machine']['load_avg_1m']}")
    print(table(cases, [("precision", "precision", ""), ("case", "case", ""), ("frames", "frames", "d"),
                        ("s_per_call", "s/call", ".3f"), ("vs_fp32", "vs fp32", ".2f"),
                        ("s_per_audio_second", "s/audio-s", ".3f"),
                        ("s_per_audio_second_min", "min", ".3f"), ("official_s_per_audio_second", "official", ".2f"),
                        ("gflop_per_audio_second", "GFLOP/audio-s", ".1f"), ("gflops", "GFLOP/s", ".1f"),
                        ("fraction_of_peak", "of peak", ".2f")]))
    return result

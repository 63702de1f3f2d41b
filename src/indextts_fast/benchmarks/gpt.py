"""GPT decoding speed (prefill, one decode step at 1 and N beams, latent pass) next to the memory-bandwidth floor.

A decode step has to read every GPT-2 weight once (plus mel_head), so its floor is weight bytes / measured
streaming-read bandwidth. Reported: prefill time, median per-step decode time, codes/s and step/floor for each
beam count, the beam-step / single-step ratio, and the latent pass. Run on a full-size random folder:
`indextts-fast make-checkpoint DIR --size full --only gpt`. `--baseline` also times the decode step
with the official (in, out) weight layout (HF Conv1D's addmm) in the same run, for comparison.
`--precision fp32,bf16,int8,int8dyn,auto` times GPT precisions side by side (default: every one this CPU runs
natively; see plan.py), each against the floor of ITS weight bytes (bf16 halves them, int8 quarters them).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=None,
                   help="model folder with a gpt.pth (default: $INDEXTTS_FAST_FULLSIZE, else the random full-size "
                        "model in the data folder)")
    p.add_argument("--text-tokens", type=int, default=120, help="text tokens of the prompt (default 120)")
    p.add_argument("--context", type=int, default=0,
                   help="codes already generated before the timed steps (default 0: right after the prompt)")
    p.add_argument("--steps", type=int, default=24, help="timed decode steps per beam count (default 24)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="beam counts to time (default 1 3)")
    p.add_argument("--repeat", type=int, default=3, help="timed prefill / latent-pass runs (default 3)")
    p.add_argument("--latent-codes", type=int, default=200, help="codes in the timed latent pass (default 200)")
    p.add_argument("--generate-codes", type=int, default=24,
                   help="codes of the timed end-to-end generate() per beam count (0 skips; default 24)")
    p.add_argument("--precision", default=None,
                   help="comma-separated GPT modes (fp32, bf16, int8, int8dyn) or auto, side by side; default: "
                        "every mode that runs natively on this CPU")
    p.add_argument("--baseline", action="store_true",
                   help="also time the decode step with the official (in, out) weight layout")


def weight_bytes_per_step(model) -> int:
    """Bytes a decode step must read: every GPT-2 block and ln_f, final_norm and mel_head (any precision)."""
    from ..precision import gpt_weight_bytes

    return gpt_weight_bytes(model)


def _decode_times(model, prompt, valid, rows: int, context: int, steps: int, seed: int = 0) -> list[float]:
    from ..decoding import KVCache, decode_step, prefill

    gen = torch.Generator().manual_seed(seed)
    vocab = model.cfg.number_mel_codes - 2
    cache = KVCache(model, rows, context + steps + 1)
    prefill(model, prompt, valid, cache)
    times = []
    for k in range(context + steps):
        tokens = torch.randint(0, vocab, (rows,), generator=gen)
        if rows > 1:  # a beam reorder every step, as beam search does
            cache.reorder(torch.randint(0, rows, (rows,), generator=gen))
        t0 = time.perf_counter()
        decode_step(model, cache, tokens, position=k + 2)
        if k >= context:
            times.append(time.perf_counter() - t0)
    return times


def _generate_times(model, spk_latent, text, emovec, args) -> list[dict]:
    """Whole generate() calls (prefill, processors, beam bookkeeping) forced to exactly N codes."""
    import warnings

    from ..decoding import DecodingOptions, MaxMelTokensWarning, generate

    out = []
    for beams in args.beams:
        n = args.generate_codes
        options = DecodingOptions(num_beams=beams, do_sample=True, max_mel_tokens=n, min_new_tokens=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MaxMelTokensWarning)
            t0 = time.perf_counter()
            generate(model, spk_latent, text, emovec, options, torch.Generator().manual_seed(0))
            seconds = time.perf_counter() - t0
        out.append({"beams": beams, "mode": options.mode, "codes": n, "total_s": seconds,
                    "ms_per_code": seconds / n * 1e3})
    return out


def run(args: argparse.Namespace) -> dict:
    from .common import find_model_dir, machine, read_bandwidth, stage_precisions, table

    args.model_dir = find_model_dir(args.model_dir, "gpt.pth", "GPT weights")
    bandwidth = read_bandwidth()
    result = {"machine": machine(), "model_dir": str(args.model_dir), "text_tokens": args.text_tokens,
              "context": args.context, "modes": [], "precisions": {}}
    for precision in stage_precisions(args.precision, "gpt", args.force_precision):
        result["precisions"][precision] = _run_precision(args, precision, result["modes"])
    # The floor uses the best bandwidth seen (measured before and after): contention only lowers it.
    bandwidth = max(bandwidth, read_bandwidth())
    result["read_bandwidth_GBps"] = bandwidth / 1e9
    base = {(m["precision"], m["layout"], m["beams"]): m["step_ms"] for m in result["modes"]}
    fp32 = {m["beams"]: m["step_ms"] for m in result["modes"] if m["precision"] == "fp32" and m["layout"].startswith("fast")}
    for m in result["modes"]:
        floor_s = m["weight_bytes"] / bandwidth
        single = base.get((m["precision"], m["layout"], 1))
        m.update(floor_ms=floor_s * 1e3, step_over_floor=m["step_ms"] / 1e3 / floor_s,
                 over_1_beam=m["step_ms"] / single if single else None,
                 speedup_vs_fp32=fp32[m["beams"]] / m["step_ms"] if m["beams"] in fp32 else None)
    for p in result["precisions"].values():
        p["floor_ms"] = p["weight_bytes_per_step"] / bandwidth * 1e3
    result["load_avg_after"] = os.getloadavg()[0]
    first = next(iter(result["precisions"].values()))
    print(f"GPT {first['layers']} layers x {first['model_dim']}, {torch.get_num_threads()} threads; "
          f"{machine()['cpu']}; load avg {result['machine']['load_avg_1m']:.2f} -> {result['load_avg_after']:.2f}; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    for name, p in result["precisions"].items():
        print(f"{name:>8}: weights read per step {p['weight_bytes_per_step'] / 1e9:.3f} GB -> floor "
              f"{p['floor_ms']:.1f} ms/step; load {p['load_s']:.1f} s; prefill ({p['prefill']['positions']} "
              f"positions) {p['prefill']['median_s'] * 1e3:.1f} ms; latent pass ({args.latent_codes} codes) "
              f"{p['latent_pass']['median_s'] * 1e3:.1f} ms")
    print(table(result["modes"], [("precision", "precision", "s"), ("layout", "layout", "s"), ("beams", "beams", "d"),
                                  ("step_ms", "step ms", ".1f"), ("step_min_ms", "min ms", ".1f"),
                                  ("codes_per_s", "codes/s", ".1f"), ("floor_ms", "floor ms", ".1f"),
                                  ("step_over_floor", "x floor", ".2f"), ("over_1_beam", "x 1 beam", ".2f"),
                                  ("speedup_vs_fp32", "vs fp32", ".2f")]))
    for name, p in result["precisions"].items():
        for g in p["generate"]:
            print(f"{name:>8} generate() {g['mode']} {g['beams']} beam(s), {g['codes']} codes incl. prefill: "
                  f"{g['total_s']:.2f} s = {g['ms_per_code']:.1f} ms/code")
    return result


def _run_precision(args, precision: str, modes_out: list) -> dict:
    """Load the GPT in `precision`, time prefill, latent pass, decode steps and generate(); append the
    decode-step entries to modes_out; return this precision's summary."""
    from ..decoding import KVCache, prefill
    from ..models.gpt import Conv1D, load_gpt
    from .common import at_precision, summary, timed

    t0 = time.perf_counter()
    model = load_gpt(args.model_dir)
    at_precision(model, "gpt", precision)
    load_s = time.perf_counter() - t0
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    d = cfg.model_dim
    spk_latent = torch.randn(1, 32, d, generator=gen)
    emovec = 0.1 * torch.randn(1, d, generator=gen)
    text = torch.randint(2, cfg.number_text_tokens, (args.text_tokens,), generator=gen)
    wbytes = weight_bytes_per_step(model)
    out = {"load_s": load_s, "model_dim": d, "layers": cfg.layers, "weight_bytes_per_step": wbytes}
    with torch.inference_mode():
        prompt, valid = model.prompt(spk_latent, text, emovec)
        prefill_times = timed(lambda: prefill(model, prompt, valid, KVCache(model, 1, 1)), args.repeat)
        out["prefill"] = {**summary(prefill_times), "positions": prompt.shape[1] + 1}
        codes = torch.randint(0, cfg.number_mel_codes - 2, (args.latent_codes,), generator=gen)
        latent_times = timed(lambda: model.latents(spk_latent, text, codes, emovec), args.repeat)
        out["latent_pass"] = {**summary(latent_times), "codes": args.latent_codes}
        layouts = [("fast (out,in)", model)]
        if args.baseline and precision == "fp32":   # torch's own F.linear/addmm on the official (in, out) layout
            official = load_gpt(args.model_dir)
            for m in official.gpt.modules():
                if isinstance(m, Conv1D):
                    m.weight = torch.nn.Parameter(m.weight.detach().contiguous(), requires_grad=False)
            layouts.append(("official (in,out)", official))
        for layout, timed_model in layouts:
            for beams in args.beams:
                s = summary(_decode_times(timed_model, prompt, valid, beams, args.context, args.steps))
                modes_out.append({"precision": precision, "layout": layout, "beams": beams,
                                  "step_ms": s["median_s"] * 1e3, "step_min_ms": s["min_s"] * 1e3,
                                  "codes_per_s": 1.0 / s["median_s"], "weight_bytes": wbytes})
        del layouts
        out["generate"] = _generate_times(model, spk_latent, text, emovec, args) if args.generate_codes else []
    return out

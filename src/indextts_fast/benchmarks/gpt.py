"""GPT decoding speed (prefill, one decode step at 1 and N beams, latent pass) next to the memory-bandwidth floor.

A decode step has to read every GPT-2 weight once (plus mel_head), so its floor is weight bytes / measured
streaming-read bandwidth. Reported: prefill time, median per-step decode time, codes/s and step/floor for each
beam count, the beam-step / single-step ratio, and the latent pass. Run on a full-size random folder:
`indextts-fast make-checkpoint /work/fullsize --size full --only gpt`. `--baseline` also times the decode step
with the official (in, out) weight layout (HF Conv1D's addmm) in the same run, for comparison.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=os.environ.get("INDEXTTS_FAST_FULLSIZE", "/work/fullsize"),
                   help="model folder with a gpt.pth (default $INDEXTTS_FAST_FULLSIZE or /work/fullsize)")
    p.add_argument("--text-tokens", type=int, default=120, help="text tokens of the prompt (default 120)")
    p.add_argument("--context", type=int, default=0,
                   help="codes already generated before the timed steps (default 0: right after the prompt)")
    p.add_argument("--steps", type=int, default=24, help="timed decode steps per beam count (default 24)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="beam counts to time (default 1 3)")
    p.add_argument("--repeat", type=int, default=3, help="timed prefill / latent-pass runs (default 3)")
    p.add_argument("--latent-codes", type=int, default=200, help="codes in the timed latent pass (default 200)")
    p.add_argument("--generate-codes", type=int, default=24,
                   help="codes of the timed end-to-end generate() per beam count (0 skips; default 24)")
    p.add_argument("--baseline", action="store_true",
                   help="also time the decode step with the official (in, out) weight layout")


def weight_bytes_per_step(model) -> int:
    """Bytes a decode step must read: every GPT-2 block and ln_f, final_norm and mel_head."""
    mods = [model.gpt, model.final_norm, model.mel_head]
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


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
    from ..decoding import KVCache, prefill
    from ..models.gpt import Conv1D, load_gpt
    from .common import machine, read_bandwidth, summary, table, timed

    t0 = time.perf_counter()
    model = load_gpt(args.model_dir)
    load_s = time.perf_counter() - t0
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    d = cfg.model_dim
    spk_latent = torch.randn(1, 32, d, generator=gen)
    emovec = 0.1 * torch.randn(1, d, generator=gen)
    text = torch.randint(2, cfg.number_text_tokens, (args.text_tokens,), generator=gen)
    bandwidth = read_bandwidth()
    wbytes = weight_bytes_per_step(model)
    floor_s = wbytes / bandwidth
    result = {"machine": machine(), "model_dir": str(args.model_dir), "load_s": load_s,
              "model_dim": d, "layers": cfg.layers, "text_tokens": args.text_tokens, "context": args.context,
              "read_bandwidth_GBps": bandwidth / 1e9, "weight_bytes_per_step": wbytes,
              "floor_ms": floor_s * 1e3, "modes": []}
    rows_out = []
    with torch.inference_mode():
        prompt, valid = model.prompt(spk_latent, text, emovec)
        prefill_times = timed(lambda: prefill(model, prompt, valid, KVCache(model, 1, 1)), args.repeat)
        result["prefill"] = {**summary(prefill_times), "positions": prompt.shape[1] + 1}
        codes = torch.randint(0, cfg.number_mel_codes - 2, (args.latent_codes,), generator=gen)
        latent_times = timed(lambda: model.latents(spk_latent, text, codes, emovec), args.repeat)
        result["latent_pass"] = {**summary(latent_times), "codes": args.latent_codes}
        layouts = [("fast (out,in)", None)]
        if args.baseline:
            layouts.append(("official (in,out)", "official"))
        for layout, flag in layouts:
            if flag == "official":
                for m in model.gpt.modules():
                    if isinstance(m, Conv1D):
                        m.weight = torch.nn.Parameter(m.weight.detach().contiguous(), requires_grad=False)
            for beams in args.beams:
                s = summary(_decode_times(model, prompt, valid, beams, args.context, args.steps))
                entry = {"layout": layout, "beams": beams, "step_ms": s["median_s"] * 1e3,
                         "step_min_ms": s["min_s"] * 1e3, "codes_per_s": 1.0 / s["median_s"],
                         "floor_ms": floor_s * 1e3, "step_over_floor": s["median_s"] / floor_s}
                result["modes"].append(entry)
                rows_out.append(entry)
        if args.baseline:
            model.fast_layout_()
        result["generate"] = _generate_times(model, spk_latent, text, emovec, args) if args.generate_codes else []
    base = {(m["layout"], m["beams"]): m["step_ms"] for m in result["modes"]}
    for m in result["modes"]:
        single = base.get((m["layout"], 1))
        m["over_1_beam"] = m["step_ms"] / single if single else None
    # The floor uses the best bandwidth seen (measured before and after): contention only lowers it.
    bandwidth = max(bandwidth, read_bandwidth())
    floor_s = wbytes / bandwidth
    result.update(read_bandwidth_GBps=bandwidth / 1e9, floor_ms=floor_s * 1e3)
    for m in result["modes"]:
        m.update(floor_ms=floor_s * 1e3, step_over_floor=m["step_ms"] / 1e3 / floor_s)
    result["load_avg_after"] = os.getloadavg()[0]
    print(f"GPT {cfg.layers} layers x {d}, fp32, {torch.get_num_threads()} threads; {machine()['cpu']}; "
          f"load avg {result['machine']['load_avg_1m']:.2f} -> {result['load_avg_after']:.2f}")
    print(f"weights read per step {wbytes / 1e9:.3f} GB, read bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"-> floor {floor_s * 1e3:.1f} ms/step; load {load_s:.1f} s")
    print(f"prefill ({result['prefill']['positions']} positions): {result['prefill']['median_s'] * 1e3:.1f} ms; "
          f"latent pass ({args.latent_codes} codes): {result['latent_pass']['median_s'] * 1e3:.1f} ms")
    print(table(rows_out, [("layout", "layout", "s"), ("beams", "beams", "d"), ("step_ms", "step ms", ".1f"),
                           ("step_min_ms", "min ms", ".1f"), ("codes_per_s", "codes/s", ".1f"),
                           ("floor_ms", "floor ms", ".1f"), ("step_over_floor", "x floor", ".2f"),
                           ("over_1_beam", "x 1 beam", ".2f")]))
    for g in result["generate"]:
        print(f"generate() {g['mode']} {g['beams']} beam(s), {g['codes']} codes incl. prefill: "
              f"{g['total_s']:.2f} s = {g['ms_per_code']:.1f} ms/code")
    return result

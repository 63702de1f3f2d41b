"""`python -m indextts_fast.kernels [--layers N] [--dim D] [--threads T] [--rows 1 2 3 4 12]`: the int8 GEMV
(VPDPBUSD, and on AMX tiles where the CPU has AMX-INT8) against fbgemm's dynamic linear on the projections of
N GPT-2 layers of width D (random weights, larger than the CPU caches at the defaults: 24 x 1280, the
full-size IndexTTS2 GPT), per row count (12 = 4 requests of 3 beams in one batched step), in one run: ms per
sweep and the weight bytes read per second. Then the GPT's decode attention over a bf16 KV cache as a batched step
of 4 requests x 3 beams meets it (24 layers x 4 requests, 20 heads of 64, a 50-position prompt + 60 codes per beam,
the beams sharing all but their last 4 ancestors),
with every layer's cache its own (read from DRAM, as after the step's weight stream) and with one cache reused
(cache-resident). Then, where the CPU has AMX or AVX512-BF16, the DiT's bf16 attention (CFG
batch of 2, 8 heads of 64, T frames; default 611 = a 4.1 s prompt + 150 codes): our kernel against
torch's SDPA, ms per call and GFLOP/s."""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from ..benchmarks.common import read_bandwidth, table
    from ..precision import DynamicInt8Linear, fbgemm_prepack, quantize_int8
    from . import load

    p = argparse.ArgumentParser(prog="python -m indextts_fast.kernels")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--frames", type=int, default=611, help="DiT attention length T (default 611)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 12],
                   help="rows per product (default 1 2 3 4 5 6 12)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if load() is None:
        raise SystemExit("the int8 GEMV kernel is not available here (no AVX-512 VNNI, no C compiler, or disabled)")
    d, gen = args.dim, torch.Generator().manual_seed(0)
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * args.layers
    weights = [torch.randn(o, i, generator=gen) / i ** 0.5 for o, i in shapes]
    layers = [DynamicInt8Linear(w, torch.zeros(w.shape[0])) for w in weights]
    fbgemm = [fbgemm_prepack(*quantize_int8(w), torch.zeros(w.shape[0])) for w in weights]
    weight_bytes = sum(o * i for o, i in shapes)
    rows = []
    for m in args.rows:
        xs = [torch.randn(m, i, generator=gen) for _, i in shapes]
        kernels = {"VNNI GEMV": lambda: [lin.gemv(x, amx=False) for lin, x in zip(layers, xs)],
                   "fbgemm": lambda: [torch.ops.quantized.linear_dynamic(x, p, False) for p, x in zip(fbgemm, xs)]}
        if load().amx_int8 and m >= 4:
            kernels["AMX GEMV"] = lambda: [lin.gemv(x, amx=True) for lin, x in zip(layers, xs)]
        times = {name: [] for name in kernels}
        for _ in range(args.repeat):            # interleaved, so that both see the same machine
            for name, fn in kernels.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            s = statistics.median(ts[2:])
            rows.append({"kernel": name, "rows": m, "ms": s * 1e3, "GBps": weight_bytes / s / 1e9})
    bw = read_bandwidth() / 1e9
    print(f"{len(shapes)} int8 projections ({weight_bytes / 1e9:.2f} GB), {args.threads} threads, "
          f"streaming read bandwidth {bw:.1f} GB/s")
    print(table(rows, [("kernel", "kernel", ""), ("rows", "rows", "d"), ("ms", "ms/sweep", ".2f"),
                       ("GBps", "weight GB/s", ".1f")]))
    print("\nGPT decode attention, 96 layer-calls of 3 rows (4 requests x 24 layers), 20 heads x 64, 110 keys per row")
    print(table(_decode_attention_rows(args.repeat), [("caches", "caches", ""), ("ms", "ms per step", ".2f")]))
    if load().amx or load().bf16_dot:
        attention = _attention_rows(args.frames, args.repeat)
        print(f"\nDiT attention, bf16, 2 x 8 heads x {args.frames} frames x 64")
        print(table(attention, [("kernel", "kernel", ""), ("ms", "ms/call", ".3f"), ("GFLOPs", "GFLOP/s", ".0f")]))


def _decode_attention_rows(repeat: int) -> list[dict]:
    from .ops import attend_bf16

    heads, d, prompt, steps, beams, calls = 20, 64, 50, 60, 3, 96
    g = torch.Generator().manual_seed(2)
    cap = prompt + steps * beams
    caches = [(torch.randn(heads, cap, d, generator=g).bfloat16(), torch.randn(heads, cap, d, generator=g).bfloat16())
              for _ in range(calls)]
    qkv = torch.randn(beams, 3 * heads * d, generator=g)
    # the prompt, the ancestry every beam shares (beam 0's slots), then each beam's own last `split` slots (as in
    # a real search: at step 75 of 3 beams, 135 distinct positions for 3 x 131 keys)
    split = 4
    shared = prompt + torch.arange(steps - split) * beams
    own = prompt + torch.arange(steps - split, steps)[None] * beams + torch.arange(beams)[:, None]
    keys = torch.cat([torch.arange(prompt).expand(beams, -1), shared.expand(beams, -1), own], 1).int().contiguous()
    rows = []
    for name, used in (("one per layer (DRAM)", caches), ("one reused (cached)", caches[:1] * calls)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for k, v in used:
                attend_bf16(qkv, k, v, keys.shape[1], keys, heads, d)
            times.append(time.perf_counter() - t0)
        rows.append({"caches": name, "ms": statistics.median(times[1:]) * 1e3})
    return rows


def _attention_rows(T: int, repeat: int) -> list[dict]:
    import torch.nn.functional as F

    from ..models.dit import native_attention
    from . import load

    qkv = torch.randn(2, T, 24, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    q, k = qkv[:, :, :8].transpose(1, 2).contiguous(), qkv[:, :, 8:16].transpose(1, 2).contiguous()
    v = qkv[:, :, 16:].transpose(1, 2)
    name = "AMX kernel" if load().amx else "AVX512-BF16 kernel"
    kernels = {name: lambda: native_attention(q, k, v, None),   # v strided, (B, T, H, d) out
               "torch SDPA": lambda: F.scaled_dot_product_attention(q, k, v.contiguous()).transpose(1, 2).reshape(2, T, -1)}
    times = {name: [] for name in kernels}
    for _ in range(repeat):
        for name, fn in kernels.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    flops = 4 * 2 * 8 * T * T * 64
    return [{"kernel": n, "ms": statistics.median(ts[2:]) * 1e3, "GFLOPs": flops / statistics.median(ts[2:]) / 1e9}
            for n, ts in times.items()]


if __name__ == "__main__":
    main()

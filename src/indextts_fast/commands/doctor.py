"""What this machine can run fast: CPU tier and features, our kernels, and per precision mode which stages run
natively or emulated here, with the mode `--precision auto` picks.

`--bandwidth` also measures the streaming-read bandwidth (about a second; the GPT decode step's floor is its
weight bytes over it). Force a lower tier with INDEXTTS_FAST_CPU_TIER=avx2 (see README "CPU tiers").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile",
            "amx_bf16", "amx_int8", "avx_vnni", "asimd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bandwidth", action="store_true", help="measure the streaming-read bandwidth too (~1 s)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def report(bandwidth: bool = False) -> dict:
    """The doctor's findings as a JSON-able dict."""
    import torch

    from .. import kernels, mkl_vendor
    from ..cpu import detect
    from ..plan import AUTO, MODES, STAGES, make_plan, missing_feature

    caps = detect()
    full, portable = kernels.load(), kernels.portable()
    modes = {}
    for name, stages in MODES.items():
        modes[name] = {s: missing_feature(s, stages[s], caps) or "native" for s in STAGES}
    out = {"cpu": caps.as_dict(), "features": [f for f in FEATURES if f in caps.flags],
           "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_threads": torch.get_num_threads(), "mkl_code_paths": mkl_vendor.STATE,
           "kernels": {"avx512": full is not None, "avx2": portable is not None,
                       "amx_attention": bool(full is not None and full.amx),
                       "bf16_dot_attention": bool(full is not None and full.bf16_dot)},
           "modes": modes, "auto": make_plan(AUTO, caps).as_dict()}
    if bandwidth:
        from ..benchmarks.common import read_bandwidth

        out["cpu"]["read_bandwidth_gbs"] = max(read_bandwidth() for _ in range(2)) / 1e9
    return out


def format_report(r: dict) -> str:
    from ..plan import STAGES

    c = r["cpu"]
    forced = f" (forced; the CPU's own tier is {c['native_tier']})" if c["forced"] else ""
    lines = [f"CPU        {c['model']} ({c['vendor']}, {c['arch']}), {c['cores']} cores",
             f"tier       {c['tier']}{forced}",
             f"features   {' '.join(r['features']) or '-'}",
             f"torch      {r['torch']}, ATen CPU capability {r['torch_cpu_capability']}, {r['torch_threads']} threads; "
             f"oneMKL: {r['mkl_code_paths']}"]
    isa = {k: v for k, v in c["library_isa"].items() if v}
    if isa:
        lines.append("limits     " + ", ".join(f"{k}={v}" for k, v in isa.items()))
    if c.get("read_bandwidth_gbs"):
        lines.append(f"bandwidth  {c['read_bandwidth_gbs']:.1f} GB/s streaming read")
    k = r["kernels"]
    lines.append("kernels    " + ", ".join(name for name, ok in (
        ("AVX-512 (int8 VNNI GEMV, fused int8 GPT step, bf16 DiT/vocoder kernels)", k["avx512"]),
        ("AVX2 (int8 weight-only and fp32 row GEMVs)", k["avx2"]), ("AMX attention", k["amx_attention"]),
        ("AVX512-BF16 attention", k["bf16_dot_attention"])) if ok) if any(k.values()) else
                 "kernels    none (torch's and fbgemm's are used)")
    lines.append("")
    width = max(len(m) for m in r["modes"])
    lines.append("mode".ljust(width) + "  " + "  ".join(s.ljust(12) for s in STAGES))
    for mode, stages in r["modes"].items():
        cells = ["native" if v == "native" else "EMULATED" for v in stages.values()]
        lines.append(mode.ljust(width) + "  " + "  ".join(cell.ljust(12) for cell in cells))
    missing = sorted({v for stages in r["modes"].values() for v in stages.values() if v != "native"})
    for m in missing:
        lines.append(f"  EMULATED: no {m}")
    lines.append("")
    lines.append("auto       " + ", ".join(f"{s}={m}" for s, m in r["auto"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    r = report(args.bandwidth)
    print(format_report(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0

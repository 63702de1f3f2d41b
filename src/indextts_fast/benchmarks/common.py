"""What the benchmarks share: timing, this machine's measured limits, tables and JSON."""

from __future__ import annotations

import json
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Optional, Callable, Iterable, Sequence

import torch


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeat` calls of fn after `warmup` untimed ones (device-synchronised)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def summary(times: Sequence[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def read_bandwidth(n_bytes: int = 1 << 30, repeat: int = 5) -> float:
    """Measured streaming-read bandwidth in bytes/s (a sum over a large tensor)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32).uniform_()
    best = min(timed(lambda: src.sum(), repeat))
    return n_bytes / best


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeat: int = 5) -> float:
    """Measured matmul throughput in FLOP/s for square n×n matrices of this dtype."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    best = min(timed(lambda: a @ b, repeat))
    return 2 * n ** 3 / best


def machine() -> dict:
    from .. import cpu, mkl_vendor
    from ..plan import make_plan

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    caps = cpu.detect()
    return {"cpu": caps.model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_1m": load,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "capabilities": caps.as_dict(),
            "auto_precision": make_plan("auto", caps).as_dict(), "mkl_code_paths": mkl_vendor.STATE}


def table(rows: Iterable[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table. columns: (key, header, format spec)."""
    rows = list(rows)
    cells = [[format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = "  ".join(h.rjust(w) for h, w in zip(heads, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def write_json(path: str | Path, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def find_model_dir(explicit: str | None, needs: str, what: str):
    """The full-size folder to time: --model-dir, else $INDEXTTS_FAST_FULLSIZE, else the full-size random
    model that `indextts-fast profile` makes in the data folder (random-full-seed0), the first holding `needs`."""
    from ..errors import IndexTTSFastError
    from ..paths import default_store_dir

    make = "indextts-fast make-checkpoint DIR --size full"
    if explicit:
        if not (Path(explicit) / needs).exists():
            raise IndexTTSFastError(f"{explicit} has no {needs} ({what}); make a full-size folder with: {make}")
        return Path(explicit)
    tried = [p for p in (os.environ.get("INDEXTTS_FAST_FULLSIZE"), str(default_store_dir() / "random-full-seed0")) if p]
    for path in tried:
        if (Path(path) / needs).exists():
            return Path(path)
    raise IndexTTSFastError(f"no full-size model folder with {needs} found (looked in: {', '.join(tried)}; "
                            f"set $INDEXTTS_FAST_FULLSIZE or pass --model-dir DIR); make one with: {make}")


def stage_precisions(text: Optional[str], stage: str, force: bool = False) -> list[str]:
    """--precision of a one-stage bench: a comma list of `stage`'s modes (or `auto`: this machine's choice for
    it), fp32 first (the order of plan.STAGE_CHOICES), each validated against this CPU: a mode it can only
    emulate is refused unless `force`. None: every mode of the stage that runs natively here."""
    from ..errors import OptionError
    from ..plan import STAGE_CHOICES, make_plan

    allowed = STAGE_CHOICES[stage]
    if text is None:
        return [m for m in allowed if force or not make_plan({stage: m}, force=True).emulated]
    modes = [make_plan("auto")[stage] if m.strip() == "auto" else m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in allowed]
    if bad or not modes:
        raise OptionError(f"--precision {text!r}: choose among {', '.join([*allowed, 'auto'])} (comma-separated)")
    for m in modes:
        make_plan({stage: m}, force=force)   # raises naming the missing CPU feature
    return sorted(set(modes), key=list(allowed).index)


def at_precision(model: torch.nn.Module, stage: str, mode: str):
    """Convert a freshly loaded `stage` model for `mode` with `precision.apply_plan`, exactly as the engine
    does, and return the context its calls run in (bf16 autocast for a reduced-precision stage)."""
    from ..plan import make_plan
    from ..precision import apply_plan, autocast

    apply_plan(make_plan({stage: mode}, force=True), **{stage: model})
    return contextlib.nullcontext() if stage == "gpt" else autocast("cpu", mode)   # the GPT's modes are module swaps


def emulated(stage: str, mode: str) -> bool:
    """Whether `mode` runs emulated for `stage` on this CPU (its peak probe is then kept small)."""
    from ..cpu import detect
    from ..plan import missing_feature

    return missing_feature(stage, mode, detect()) is not None


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def int8_gemm_peak(n: int = 2048, repeat: int = 5) -> float:
    """oneDNN's uint8 x int8 GEMM rate (op/s) on n x n x n, the product an int8dyn stage runs."""
    from ..int8gemm import onednn_prepack, quantize_int8

    q, scale = quantize_int8(torch.randn(n, n))
    packed, x = onednn_prepack(q), torch.randint(0, 256, (n, n), dtype=torch.uint8)
    zp = torch.zeros(n, dtype=torch.long)
    best = min(timed(lambda: torch.ops.onednn.qlinear_pointwise(x, 0.01, 128, packed, scale, zp, None, 1.0, 0,
                                                                torch.float32, "none", [], ""), repeat))
    return 2 * n ** 3 / best


def precision_peak(precision: str, small: bool = False) -> float:
    """This machine's matmul FLOP/s in a stage precision's arithmetic (measured now; int8dyn: int8 op/s).
    `small`: a 256³ probe (for a mode this CPU emulates: 2048³ in emulated bf16 takes minutes)."""
    n = 256 if small else 2048
    return int8_gemm_peak(n) if precision in ("int8", "int8dyn") else matmul_peak(PEAK_DTYPES[precision], n)


def add_speedups(cases: list[dict], key: str, peaks: dict[str, list[float]]) -> dict[str, float]:
    """Each case's `vs_fp32` (the fp32 case of the same name's `key` over its own, same run) and
    `fraction_of_peak` (its GFLOP/s over the best of its precision's `peaks` measurements); returns the
    best peak per precision."""
    fp32 = {c["case"]: c[key] for c in cases if c["precision"] == "fp32"}
    best = {m: max(v) for m, v in peaks.items()}
    for c in cases:
        c["vs_fp32"] = fp32[c["case"]] / c[key] if c["case"] in fp32 else None
        c["fraction_of_peak"] = c["gflops"] * 1e9 / best[c["precision"]]
    return best


def reference_tiny() -> Path:
    """The reference tiny model folder: $INDEXTTS_FAST_REFERENCE/tiny, else ../shared/reference/tiny beside
    the checkout or the working directory."""
    from ..errors import IndexTTSFastError

    roots = [os.environ.get("INDEXTTS_FAST_REFERENCE"), Path(__file__).resolve().parents[3].parent / "shared" /
             "reference", Path.cwd().parent / "shared" / "reference"]
    for root in roots:
        if root and (Path(root) / "tiny" / "config.yaml").is_file():
            return Path(root) / "tiny"
    raise IndexTTSFastError("no reference tiny model found (set $INDEXTTS_FAST_REFERENCE or pass --model-dir)")

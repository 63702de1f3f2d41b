"""oneMKL on non-Intel x86 CPUs: the code paths it takes on Intel ones.

torch's CPU build carries oneMKL for its FFT, its fp32 BLAS and some vector maths (exp, log). oneMKL picks
its kernels by CPU *vendor* before features: on an AMD CPU it leaves out its AVX-512 paths even where the
CPU has AVX-512. Measured on a 2-core AMD EPYC (Zen 4), torch 2.13, 2 threads, in one session:
- fp32 GEMV of a (5120, 1280) weight: 1 row 1.68 -> 0.56 ms, 3 rows 4.95 -> 0.81 ms; a (1222, 1024) x
  (1024, 4096) GEMM 85 -> 55 ms;
- the S2Mel log-mel spectrogram of the reference clips: 1.27e-4 from the goldens (tolerance 1e-4) with the
  AMD paths, bit-exact with the Intel ones (the goldens were made on an Intel CPU); the DiT's time-embedding
  frequencies (torch.exp) likewise.

oneMKL asks one exported function, `mkl_serv_intel_cpu_true`, whether the CPU is Intel. `enable()` builds
(once, cached in the data folder) a shared object holding only that function, returning 1, and loads it
into the process's global symbol scope. It must run before torch is loaded: the dynamic linker then binds
torch's call to ours. The feature checks oneMKL does next are its own (CPUID), so it uses only instruction
sets the CPU has. `import indextts_fast` calls it (Linux, x86-64, non-Intel CPUs only);
$INDEXTTS_FAST_MKL_ANY_CPU=0 turns it off. `STATE` says what happened; the benchmarks report it.
To see the effect on a machine: `indextts-fast bench gpt --precision fp32` with and without that variable.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

ENV = "INDEXTTS_FAST_MKL_ANY_CPU"
SOURCE = b"/* oneMKL: take the code paths chosen for Intel CPUs (see indextts_fast/mkl_vendor.py). */\n" \
         b"int mkl_serv_intel_cpu_true(void) { return 1; }\n"
STATE = "not set up"


def enable() -> str:
    """Make oneMKL use its Intel code paths on this (non-Intel x86-64 Linux) CPU; returns and sets STATE."""
    global STATE
    STATE = _enable()
    return STATE


def _enable() -> str:
    from .kernels import build, cpuinfo

    if os.environ.get(ENV, "1") == "0":
        return f"vendor dispatch left as is (${ENV}=0)"
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return "vendor dispatch left as is (not x86-64 Linux)"
    vendor = cpuinfo("vendor_id")
    if vendor in ("GenuineIntel", ""):
        return f"vendor dispatch not needed ({vendor or 'unknown vendor'})"
    if "torch" in sys.modules:
        warnings.warn(f"torch was imported before indextts_fast: oneMKL keeps its {vendor} code paths (slower fp32, "
                      "results a float rounding away from the goldens); import indextts_fast first",
                      RuntimeWarning, stacklevel=3)
        return f"{vendor} paths (torch was imported before indextts_fast)"
    import ctypes
    import hashlib

    from .paths import default_store_dir

    target = default_store_dir() / "kernels" / f"mkl-intel-paths-{hashlib.sha256(SOURCE).hexdigest()[:12]}.so"
    try:
        if not target.exists():
            build({"mkl_intel_paths.c": SOURCE}, target, flags=["-O2", "-shared", "-fPIC"])
        ctypes.CDLL(str(target), mode=os.RTLD_GLOBAL)
    except (OSError, RuntimeError) as e:
        warnings.warn(f"oneMKL keeps its {vendor} code paths (slower fp32, results a float rounding away from the "
                      f"goldens): {e}", RuntimeWarning, stacklevel=3)
        return f"{vendor} paths ({e})"
    return f"Intel paths on {vendor}"

"""oneMKL's vendor dispatch (mkl_vendor.py), each case in a fresh interpreter: the set-up must precede torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from indextts_fast import mkl_vendor
from indextts_fast.kernels import cpuinfo

NON_INTEL_X86 = sys.platform.startswith("linux") and cpuinfo("vendor_id") not in ("GenuineIntel", "")


def _fresh(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_state_of_this_process():
    if NON_INTEL_X86:
        assert mkl_vendor.STATE == f"Intel paths on {cpuinfo('vendor_id')}"
    else:
        assert "left as is" in mkl_vendor.STATE or "not needed" in mkl_vendor.STATE


@pytest.mark.skipif(not NON_INTEL_X86, reason="oneMKL's vendor dispatch only matters on non-Intel x86-64 Linux")
def test_intel_paths_change_mkl_results_and_only_before_torch():
    # the same FFT through oneMKL with and without the set-up: the AMD and Intel paths round differently
    probe = ("import torch; g = torch.Generator().manual_seed(0); x = torch.randn(64, 1024, generator=g); "
             "print(torch.fft.rfft(x).abs().double().sum().item().hex())")
    on = _fresh("import indextts_fast; " + probe)
    off = _fresh("import indextts_fast; " + probe, INDEXTTS_FAST_MKL_ANY_CPU="0")
    late = _fresh("import torch; import indextts_fast; from indextts_fast import mkl_vendor; print(mkl_vendor.STATE); "
                  + probe)
    assert on.returncode == off.returncode == late.returncode == 0, on.stderr + off.stderr + late.stderr
    if "avx512f" in cpuinfo("flags").split():   # the Intel AVX-512 kernels exist here: they round otherwise
        assert on.stdout != off.stdout
    assert late.stdout.splitlines()[-1] == off.stdout.strip()
    assert "torch was imported before indextts_fast" in late.stdout and "import indextts_fast first" in late.stderr


def test_opt_out_is_honoured():
    r = _fresh("import indextts_fast; from indextts_fast import mkl_vendor; print(mkl_vendor.STATE)",
               INDEXTTS_FAST_MKL_ANY_CPU="0")
    assert r.returncode == 0 and r.stdout.strip() == "vendor dispatch left as is ($INDEXTTS_FAST_MKL_ANY_CPU=0)"

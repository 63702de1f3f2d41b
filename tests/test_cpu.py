"""cpu.py: tiers from /proc/cpuinfo flags, forcing a lower tier, and what it tells the libraries."""

import subprocess
import sys

import pytest

from indextts_fast import cpu

ZEN2 = frozenset("fpu sse2 avx avx2 fma bmi2".split())
ZEN4 = ZEN2 | frozenset("avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16".split())
SPR = ZEN4 | frozenset("amx_tile amx_bf16 amx_int8 avx_vnni".split())


def test_tiers_from_flags():
    assert cpu.tier_of(ZEN2, "x86_64") == "avx2"
    assert cpu.tier_of(ZEN4, "x86_64") == "avx512_bf16"
    assert cpu.tier_of(SPR, "x86_64") == "amx"
    assert cpu.tier_of(ZEN4 - {"avx512_bf16"}, "x86_64") == "avx512_vnni"
    assert cpu.tier_of(ZEN4 - {"avx512_vnni"}, "x86_64") == "avx512"       # BF16 without VNNI counts as avx512
    assert cpu.tier_of(ZEN2 - {"fma"}, "x86_64") == "generic"
    assert cpu.tier_of(frozenset({"asimd"}), "aarch64") == "neon"


def test_restricting_to_avx2_drops_everything_above_it():
    flags = cpu.restrict(SPR, "avx2")
    assert cpu.tier_of(flags, "x86_64") == "avx2"
    assert not any(f.startswith(("avx512", "amx", "avx_vnni")) for f in flags) and {"avx2", "fma"} <= flags


def test_library_variables_of_a_tier():
    env = cpu.tier_environment("avx2")
    assert env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                   "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    assert cpu.tier_environment("amx") == {}


def _in_fresh_python(code: str, tier: str) -> str:
    import os

    env = {**os.environ, cpu.TIER_ENV: tier}
    for key in cpu.LIBRARY_ENV:
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_forcing_avx2_reaches_torch_and_our_detection():
    if not cpu.detect().at_least("avx2") or cpu.detect().native_tier == "neon":
        pytest.skip("needs an x86 CPU with AVX2")
    got = _in_fresh_python("import indextts_fast, torch; from indextts_fast import cpu; c = cpu.detect(); "
                           "print(c.tier, c.forced, torch.backends.cpu.get_cpu_capability())", "avx2")
    assert got.split() == ["avx2", str(cpu.detect().native_tier != "avx2"), "AVX2"]


def test_a_tier_above_the_cpu_or_unknown_is_refused(monkeypatch):
    monkeypatch.setenv(cpu.TIER_ENV, "avx9")
    with pytest.raises(ValueError, match="choose one of"):
        cpu.requested_tier()
    if cpu.detect().native_tier != "amx":
        monkeypatch.setenv(cpu.TIER_ENV, "amx")
        cpu.detect.cache_clear()
        try:
            with pytest.raises(ValueError, match="only a lower"):
                cpu.detect()
        finally:
            monkeypatch.delenv(cpu.TIER_ENV)
            cpu.detect.cache_clear()

"""plan.py: one validated plan per request and machine; auto per tier; emulated modes refused unless forced."""

import dataclasses

import pytest

from indextts_fast.cpu import CpuCaps, restrict, tier_of
from indextts_fast.errors import OptionError
from indextts_fast.plan import AUTO_BY_TIER, MODES, STAGES, PrecisionPlan, make_plan, parse_precision

SPR_FLAGS = frozenset("avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 amx_tile amx_bf16 "
                      "amx_int8".split())


def caps_of(tier: str) -> CpuCaps:
    flags = restrict(SPR_FLAGS, tier) if tier not in ("neon",) else frozenset({"asimd"})
    arch = "aarch64" if tier == "neon" else "x86_64"
    assert tier_of(flags, arch) == tier
    return CpuCaps(arch=arch, vendor="test", model="test", tier=tier, native_tier=tier, cores=2, flags=flags)


@pytest.mark.parametrize("tier", ["generic", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "neon"])
def test_auto_only_picks_native_modes(tier):
    plan = make_plan("auto", caps_of(tier))
    assert plan.requested == "auto" and plan.tier == tier and not plan.emulated
    assert plan.as_dict() == AUTO_BY_TIER[tier]


def test_auto_per_tier():
    assert make_plan("auto", caps_of("amx")).as_dict() == MODES["int8max"]
    assert make_plan("auto", caps_of("avx2")).as_dict() == {**MODES["fp32"], "gpt": "int8", "s2mel": "int8"}
    assert make_plan("auto", caps_of("avx512_vnni")).as_dict() == {**MODES["fp32"], "gpt": "int8dyn", "s2mel": "int8"}
    assert make_plan("auto", caps_of("generic")).exact
    assert make_plan("auto", caps_of("amx"), device="cuda").exact       # GPU: not measured yet, exact


@pytest.mark.parametrize("request_,missing", [("bf16", "AVX512-BF16"), ("int8dyn", "gpt=int8dyn would be emulated.*AVX512-VNNI"),
                                              ({"gpt": "int8dyn"}, "AVX512-VNNI"), ("gpt=int8dyn", "AVX512-VNNI")])
def test_emulated_modes_are_refused_naming_the_feature(request_, missing):
    with pytest.raises(OptionError, match=missing):
        make_plan(request_, caps_of("avx2"))
    forced = make_plan(request_, caps_of("avx2"), force=True)
    assert forced.emulated and all("(no AVX" in e for e in forced.emulated)
    assert not make_plan(request_, caps_of("amx")).emulated


def test_native_modes_pass_and_plans_are_frozen_values():
    plan = make_plan({"gpt": "int8"}, caps_of("avx2"))
    assert plan.gpt == "int8" and plan["s2mel"] == "fp32" and plan.requested == "gpt=int8"
    assert plan == make_plan("gpt=int8", caps_of("avx2"))
    assert make_plan(plan) is plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.gpt = "fp32"
    with pytest.raises(OptionError, match="not available for stage 's2mel'"):
        PrecisionPlan(s2mel="int4")
    assert make_plan(None).exact and list(make_plan(None).as_dict()) == list(STAGES)


def test_parse_precision_forms():
    assert parse_precision("auto") == "auto"
    assert parse_precision("gpt=int8+s2mel=bf16") == {"gpt": "int8", "s2mel": "bf16"}
    with pytest.raises(OptionError, match="stage=mode"):
        parse_precision("gpt=")


def test_the_plan_module_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys, indextts_fast.plan as p; p.make_plan('auto'); p.parse_precision('gpt=int8'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr

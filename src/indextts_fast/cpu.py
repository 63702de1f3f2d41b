"""What this CPU can do, detected once: its ISA tier, cores and (when measured) read bandwidth.

Tiers, lowest to highest (each includes the ones before it on x86-64):

    generic       no AVX2 (or not x86-64): torch's own kernels only, every stage fp32
    avx2          AVX2 + FMA (Zen 2, Haswell..Comet Lake): our AVX2 kernels; no native bf16 or int8 dot products
    avx512        AVX-512 F/BW/VL (Skylake-X)
    avx512_vnni   + VNNI int8 dot products (Cascade Lake, Ice Lake): our int8 GEMV, oneDNN's VNNI GEMMs
    avx512_bf16   + AVX512-BF16 (Zen 4, Cooper Lake): native bf16 dot products
    amx           + AMX tiles, bf16 and int8 (Sapphire Rapids and later)
    neon          aarch64: torch's kernels (ours are x86 only)

Forcing a lower tier: `INDEXTTS_FAST_CPU_TIER=avx2` (or generic, avx512, ...). `import indextts_fast` then
also sets, before torch loads and unless already set, torch's `ATEN_CPU_CAPABILITY`, oneDNN's
`ONEDNN_MAX_CPU_ISA`, oneMKL's `MKL_ENABLE_INSTRUCTIONS` and fbgemm's `FBGEMM_ENABLE_INSTRUCTIONS` to that
tier (`tier_environment`), and our kernels are built for it: the whole process behaves as on such a CPU (as far
as those libraries let it), so the test suite and the benches can be run as an AVX2-only machine anywhere.
A tier above the CPU's own is refused (it would crash). Imports nothing heavy (torch-free).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TIER_ENV = "INDEXTTS_FAST_CPU_TIER"
X86_TIERS = ("generic", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx")
TIERS = X86_TIERS + ("neon",)
# the /proc/cpuinfo flags each x86 tier adds to the one below it
TIER_FLAGS = {"generic": (), "avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
              "avx512_vnni": ("avx512_vnni",), "avx512_bf16": ("avx512_bf16",),
              "amx": ("amx_tile", "amx_bf16", "amx_int8")}
# flag prefixes of AVX-512-era extensions (dropped when a tier below avx512 is forced)
AVX512_ERA = ("avx512", "amx", "avx_vnni", "avx_ifma", "avx_ne_convert")
# what each tier tells torch, oneDNN, oneMKL and fbgemm (None: leave that library to its own detection)
LIBRARY_ISA = {   # tier: (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, FBGEMM_ENABLE_INSTRUCTIONS)
    "generic": ("default", "SSE41", "SSE4_2", None),
    "avx2": ("avx2", "AVX2", "AVX2", "AVX2"),
    "avx512": ("avx512", "AVX512_CORE", "AVX512", "AVX512"),
    "avx512_vnni": ("avx512", "AVX512_CORE_VNNI", "AVX512", "AVX512_E1"),
    "avx512_bf16": ("avx512", "AVX512_CORE_BF16", "AVX512", "AVX512_E1"),
    "amx": (None, None, None, None),
}
LIBRARY_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS")


def cpuinfo(field_name: str) -> str:
    """The first `field_name` line of /proc/cpuinfo ("flags", "vendor_id", "model name"), "" where none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.split(":", 1)[0].strip() == field_name), "")


def tier_of(flags: frozenset, arch: str) -> str:
    """The highest tier whose flags (and those of every tier below) are all in `flags`."""
    if arch in ("aarch64", "arm64"):
        return "neon"
    if arch not in ("x86_64", "AMD64"):
        return "generic"
    tier = "generic"
    for name in X86_TIERS[1:]:
        if not all(f in flags for f in TIER_FLAGS[name]):
            break
        tier = name
    return tier


def restrict(flags: frozenset, tier: str) -> frozenset:
    """`flags` without any flag of a tier above `tier` (and the AVX-VNNI family when below AVX-512)."""
    higher = X86_TIERS[X86_TIERS.index(tier) + 1:]
    drop = {f for t in higher for f in TIER_FLAGS[t]}
    prefixes = AVX512_ERA if X86_TIERS.index(tier) < X86_TIERS.index("avx512") else ()
    return frozenset(f for f in flags if f not in drop and not f.startswith(prefixes))


@dataclass(frozen=True)
class CpuCaps:
    """This machine as our code sees it (after a forced tier, if any)."""
    arch: str
    vendor: str
    model: str
    tier: str
    native_tier: str                  # the CPU's own tier (= tier unless one was forced)
    cores: int
    flags: frozenset = field(repr=False)
    read_bandwidth_gbs: Optional[float] = None   # measured (benches fill it in), else None

    @property
    def forced(self) -> bool:
        return self.tier != self.native_tier

    def at_least(self, tier: str) -> bool:
        """Whether this machine's tier includes `tier` (x86 tiers only; neon is its own)."""
        if self.tier == "neon" or tier == "neon":
            return self.tier == tier
        return X86_TIERS.index(self.tier) >= X86_TIERS.index(tier)

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512-BF16 or AMX-BF16): bf16 stages run faster than fp32."""
        return self.at_least("avx512_bf16")

    @property
    def vnni(self) -> bool:
        return self.at_least("avx512_vnni")

    def as_dict(self) -> dict:
        return {"arch": self.arch, "vendor": self.vendor, "model": self.model, "tier": self.tier,
                "native_tier": self.native_tier, "forced": self.forced, "cores": self.cores,
                "read_bandwidth_gbs": self.read_bandwidth_gbs,
                "library_isa": dict(zip(LIBRARY_ENV, (os.environ.get(k) for k in LIBRARY_ENV)))}


def _physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def requested_tier() -> Optional[str]:
    """$INDEXTTS_FAST_CPU_TIER, validated (None when unset or empty)."""
    value = os.environ.get(TIER_ENV, "").strip().lower()
    if not value:
        return None
    if value not in TIERS:
        raise ValueError(f"${TIER_ENV}={value!r}: choose one of {', '.join(TIERS)}")
    return value


@functools.lru_cache(maxsize=None)
def detect() -> CpuCaps:
    """This CPU's capabilities (once per process), honouring $INDEXTTS_FAST_CPU_TIER."""
    arch = platform.machine()
    flags = frozenset(cpuinfo("flags").split() or cpuinfo("Features").split())
    native = tier_of(flags, arch)
    tier = requested_tier() or native
    if tier != native:
        if native == "neon" or tier == "neon" or X86_TIERS.index(tier) > X86_TIERS.index(native):
            raise ValueError(f"${TIER_ENV}={tier}: this CPU's own tier is {native}; only a lower x86 tier can be forced")
        flags = restrict(flags, tier)
    return CpuCaps(arch=arch, vendor=cpuinfo("vendor_id") or "unknown", model=cpuinfo("model name") or arch,
                   tier=tier, native_tier=native, cores=_physical_cores(), flags=flags)


def tier_environment(tier: str) -> dict[str, str]:
    """The library variables that make torch, oneDNN, oneMKL and fbgemm stay within `tier`."""
    return {k: v for k, v in zip(LIBRARY_ENV, LIBRARY_ISA.get(tier, (None,) * 4)) if v is not None}


def apply_forced_tier() -> Optional[str]:
    """When $INDEXTTS_FAST_CPU_TIER is set: set the libraries' variables (unless the user set them), before
    torch loads (a warning when torch came first). Returns the forced tier, or None. Called by
    `import indextts_fast`."""
    tier = requested_tier()
    if tier is None:
        return None
    for key, value in tier_environment(tier).items():
        os.environ.setdefault(key, value)
    if "torch" in sys.modules:
        warnings.warn(f"torch was imported before indextts_fast: ${TIER_ENV}={tier} reaches our kernels only, not "
                      f"torch/oneDNN/oneMKL (set {', '.join(LIBRARY_ENV)} yourself or import indextts_fast first)",
                      RuntimeWarning, stacklevel=3)
    return tier

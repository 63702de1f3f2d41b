"""The precision plan: which arithmetic each stage runs in, decided once from the request and the machine.

A request is a mode name (`fp32`, `bf16`, `int8`, `int8dyn`, `int8max`, `auto`), a per-stage string such as
`gpt=int8+s2mel=bf16`, or a {stage: mode} mapping (missing stages: fp32). `make_plan` validates it against
the stages' choices and against the CPU (`cpu.detect()`): a stage mode this CPU can only emulate is refused
with the missing feature named, unless `force=True`. `auto` is, per stage, the fastest mode that runs natively
here and stays within the fidelity thresholds (tests/test_fidelity.py enforces them on the tiny model):

    tier                     gpt      s2mel    vocoder  conditioning
    amx, avx512_bf16         int8dyn  int8dyn  bf16     bf16           = int8max
    avx512_vnni              int8dyn  int8     fp32     fp32           bf16 would be emulated
    avx512, avx2             int8     int8     fp32     fp32           GPT: kernels/avx2.c; DiT: oneDNN, 7-bit activations
    generic, neon, non-CPU   fp32     fp32     fp32     fp32           nothing of ours to run faster

Stage modes: GPT int8 = int8 weights only (fp32 rows as int16, exact int32 sums); int8dyn = int8 weights and
int8 activations (VNNI). S2Mel int8 = the DiT's large products as int8 GEMMs in an fp32 stage; int8dyn = the
same in a bf16 stage. What needs what (native): bf16 (any stage) needs AVX512-BF16 or AMX-BF16 (or a GPU);
GPT int8 needs AVX2+FMA (our kernel) or native bf16; S2Mel int8 needs x86 AVX2 (oneDNN's int8 GEMM; without
VNNI the activations are quantised to 7 bits so that vpmaddubsw's int16 pair sums cannot saturate);
int8dyn needs AVX512-VNNI, and S2Mel's int8dyn native bf16 as well. The plan is applied by one function,
`precision.apply_plan`. Imports nothing heavy (torch-free): the CLI validates precision before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from .cpu import CpuCaps, detect
from .errors import OptionError

STAGES = ("gpt", "s2mel", "vocoder", "conditioning")
STAGE_CHOICES = {"gpt": ("fp32", "bf16", "int8", "int8dyn"), "s2mel": ("fp32", "bf16", "int8", "int8dyn"),
                 "vocoder": ("fp32", "bf16"), "conditioning": ("fp32", "bf16")}
MODES: dict[str, dict[str, str]] = {
    "fp32": dict.fromkeys(STAGES, "fp32"),
    "bf16": dict.fromkeys(STAGES, "bf16"),
    "int8": {"gpt": "int8", "s2mel": "bf16", "vocoder": "bf16", "conditioning": "bf16"},
    "int8dyn": {"gpt": "int8dyn", "s2mel": "bf16", "vocoder": "bf16", "conditioning": "bf16"},
    "int8max": {"gpt": "int8dyn", "s2mel": "int8dyn", "vocoder": "bf16", "conditioning": "bf16"},
}
AUTO = "auto"
AUTO_BY_TIER = {
    "amx": MODES["int8max"], "avx512_bf16": MODES["int8max"],
    "avx512_vnni": {**MODES["fp32"], "gpt": "int8dyn", "s2mel": "int8"},
    "avx512": {**MODES["fp32"], "gpt": "int8", "s2mel": "int8"}, "avx2": {**MODES["fp32"], "gpt": "int8", "s2mel": "int8"},
    "generic": MODES["fp32"], "neon": MODES["fp32"],
}

Precision = Union[None, str, Mapping[str, str]]


def missing_feature(stage: str, mode: str, caps: CpuCaps, device: str = "cpu") -> Optional[str]:
    """What this machine lacks to run `mode` for `stage` natively (None: it runs natively)."""
    if mode == "fp32" or device != "cpu":
        return None
    if mode == "bf16" and not caps.native_bf16:
        return "AVX512-BF16 or AMX-BF16 (bf16 dot products)"
    if mode == "int8" and stage == "gpt" and not (caps.native_bf16 or (caps.at_least("avx2") and caps.tier != "neon")):
        return "AVX2+FMA (our int8 weight-only kernel) or native bf16"
    if mode == "int8" and stage == "s2mel" and (caps.tier == "neon" or not caps.at_least("avx2")):
        return "AVX2 (oneDNN's x86 int8 GEMM)"
    if mode == "int8dyn":
        if not caps.vnni:
            return "AVX512-VNNI (int8 dot products without int16 saturation)"
        if stage == "s2mel" and not caps.native_bf16:
            return "AVX512-BF16 or AMX-BF16 (the int8 DiT is a bf16 stage)"
    return None


@dataclass(frozen=True)
class PrecisionPlan:
    """Per stage: fp32 | bf16 | int8 | int8dyn (see module doc); what was asked; the tier it was made for; the
    stages that run emulated (only with force)."""
    gpt: str = "fp32"
    s2mel: str = "fp32"
    vocoder: str = "fp32"
    conditioning: str = "fp32"
    requested: str = "fp32"
    tier: str = "generic"
    device: str = "cpu"
    emulated: tuple = field(default=())

    def __post_init__(self):
        for stage in STAGES:
            if self[stage] not in STAGE_CHOICES[stage]:
                raise OptionError(f"precision {self[stage]!r} is not available for stage {stage!r}: choose one of "
                                  f"{', '.join(STAGE_CHOICES[stage])}")

    def __getitem__(self, stage: str) -> str:
        if stage not in STAGES:
            raise KeyError(stage)
        return getattr(self, stage)

    def as_dict(self) -> dict[str, str]:
        return {stage: self[stage] for stage in STAGES}

    @property
    def exact(self) -> bool:
        """Every stage fp32: the parity path."""
        return all(self[s] == "fp32" for s in STAGES)

    def describe(self) -> str:
        stages = ", ".join(f"{s}={self[s]}" for s in STAGES)
        extra = f"; emulated: {', '.join(self.emulated)}" if self.emulated else ""
        return f"{self.requested} -> {stages} (tier {self.tier}{extra})"


def parse_precision(text: str) -> Union[str, dict[str, str]]:
    """CLI form -> request: a mode name, or `stage=mode+stage=mode` (also comma- or space-free forms)."""
    text = text.strip()
    if "=" not in text:
        return text
    out: dict[str, str] = {}
    for part in text.replace(",", "+").split("+"):
        stage, sep, mode = part.partition("=")
        if not sep or not stage.strip() or not mode.strip():
            raise OptionError(f"precision {text!r}: expected a mode name or stage=mode pairs joined by '+'")
        out[stage.strip()] = mode.strip()
    return out


def requested_modes(precision: Precision, caps: CpuCaps, device: str = "cpu") -> tuple[dict[str, str], str]:
    """The request as {stage: mode} (auto resolved for this machine) and its name for reports."""
    if precision is None:
        return dict(MODES["fp32"]), "fp32"
    if isinstance(precision, str):
        if precision == AUTO:
            return dict(AUTO_BY_TIER[caps.tier] if device == "cpu" else MODES["fp32"]), AUTO
        if "=" in precision:
            return requested_modes(parse_precision(precision), caps, device)
        if precision not in MODES:
            raise OptionError(f"unknown precision {precision!r}; modes are {', '.join([*MODES, AUTO])} "
                              f"(or per stage: stage=mode joined by '+', stages {', '.join(STAGES)})")
        return dict(MODES[precision]), precision
    if not isinstance(precision, Mapping):
        raise OptionError(f"precision must be a mode name or a {{stage: precision}} mapping, "
                          f"got {type(precision).__name__}")
    unknown = sorted(set(precision) - set(STAGES))
    if unknown:
        raise OptionError(f"unknown stage(s) {', '.join(map(str, unknown))} in precision; stages are {', '.join(STAGES)}")
    out = dict(MODES["fp32"])
    for stage, value in precision.items():
        if value not in STAGE_CHOICES[stage]:
            raise OptionError(f"precision {value!r} is not available for stage {stage!r}: choose one of "
                              f"{', '.join(STAGE_CHOICES[stage])}")
        out[stage] = value
    return out, "+".join(f"{s}={m}" for s, m in precision.items())


def make_plan(precision: Precision = None, caps: Optional[CpuCaps] = None, *, device: str = "cpu",
              force: bool = False) -> PrecisionPlan:
    """The validated plan for `precision` on this machine (or `caps`). Raises OptionError naming the stage and
    the missing CPU feature when a stage would run emulated, unless `force`."""
    if isinstance(precision, PrecisionPlan):
        return precision
    caps = caps or detect()
    device_type = str(device).split(":")[0]
    modes, name = requested_modes(precision, caps, device_type)
    emulated = []
    for stage in STAGES:
        missing = missing_feature(stage, modes[stage], caps, device_type)
        if missing is None:
            continue
        if not force:
            raise OptionError(f"precision {name}: {stage}={modes[stage]} would be emulated on this CPU (tier "
                              f"{caps.tier}: no {missing}) and run slower than fp32; use precision=auto, or force it "
                              f"(--force-precision / force_precision=True) to run it anyway")
        emulated.append(f"{stage}={modes[stage]} (no {missing})")
    return PrecisionPlan(**modes, requested=name, tier=caps.tier, device=device_type, emulated=tuple(emulated))

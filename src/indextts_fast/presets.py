"""Named speed/quality presets and per-request settings.

`Settings` holds every knob of one synthesis request, validated once, immutable. A preset is a named
`Settings`; any field can be overridden per request: `resolve("aggressive", top_k=5)`.
The baseline preset is the official default (beam sampling with 3 beams, 25 diffusion steps, cfg 0.7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from .errors import OptionError


@dataclass(frozen=True)
class Settings:
    # GPT decoding (official generation kwargs of infer_v2, with do_sample actually honoured)
    num_beams: int = 3
    do_sample: bool = True
    top_p: float = 0.8
    top_k: int = 30
    temperature: float = 0.8
    repetition_penalty: float = 10.0
    length_penalty: float = 0.0
    max_mel_tokens: int = 1500
    # S2Mel (official: hard-coded 25 steps and cfg 0.7)
    diffusion_steps: int = 25
    cfg_rate: float = 0.7
    # text segmentation and assembly
    max_text_tokens_per_segment: int = 120
    interval_silence_ms: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "bool": bool}[f.type]
            if isinstance(value, bool) and f.type != "bool" or not isinstance(value, want):
                raise OptionError(f"{f.name}={value!r} should be of type {f.type}")
        checks = [
            ("num_beams", 1 <= self.num_beams <= 16, "an integer from 1 to 16"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables top-k)"),
            ("temperature", self.temperature > 0.0, "> 0"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "> 0 (1 disables it)"),
            ("max_mel_tokens", 1 <= self.max_mel_tokens, ">= 1"),
            ("diffusion_steps", 1 <= self.diffusion_steps <= 200, "an integer from 1 to 200"),
            ("cfg_rate", 0.0 <= self.cfg_rate <= 10.0, "in [0, 10] (0 disables guidance)"),
            ("max_text_tokens_per_segment", self.max_text_tokens_per_segment >= 1, ">= 1"),
            ("interval_silence_ms", 0 <= self.interval_silence_ms <= 10_000, "in [0, 10000]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise OptionError(f"{name}={getattr(self, name)!r} is out of range: expected {expected}")

    def overridden(self, **overrides: Any) -> "Settings":
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise OptionError(f"unknown setting(s) {', '.join(unknown)}; settings are {', '.join(FIELD_NAMES)}")
        return replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_NAMES = [f.name for f in fields(Settings)]

PRESETS: dict[str, tuple[Settings, str]] = {
    "baseline": (Settings(), "the official defaults: 3-beam sampling, 25 diffusion steps"),
    "conservative": (Settings(num_beams=1, top_k=20, temperature=0.9, diffusion_steps=15),
                     "1 beam, sampling top-k 20, 15 steps"),
    "aggressive": (Settings(num_beams=1, top_k=10, diffusion_steps=10), "1 beam, sampling top-k 10, 10 steps"),
    "extreme": (Settings(num_beams=1, do_sample=False, diffusion_steps=5), "greedy, 5 steps"),
}


def resolve(preset: str = "baseline", overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings of a named preset with per-request overrides applied (None values are ignored)."""
    if preset not in PRESETS:
        raise OptionError(f"unknown preset {preset!r}; presets are {', '.join(PRESETS)}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return PRESETS[preset][0].overridden(**given)


def presets_table() -> str:
    """Every preset with every value, as a text table (`indextts-fast presets`)."""
    names = list(PRESETS)
    width = max(len(n) for n in FIELD_NAMES)
    col = max(12, *(len(n) for n in names))
    lines = [" " * width + "  " + "  ".join(n.rjust(col) for n in names)]
    lines.append("-" * len(lines[0]))
    for field in FIELD_NAMES:
        cells = [str(getattr(PRESETS[n][0], field)).rjust(col) for n in names]
        lines.append(field.ljust(width) + "  " + "  ".join(cells))
    lines.append("")
    lines += [f"{n}: {desc}" for n, (_, desc) in PRESETS.items()]
    return "\n".join(lines)

"""Named speed/quality presets and per-request settings.

`Settings` holds every knob of one synthesis request, validated once, immutable. A preset is a named
`Settings`; any field can be overridden per request: `resolve("aggressive", top_k=5)`.
The baseline preset is the official default (beam sampling with 3 beams, 25 diffusion steps, cfg 0.7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from .options import DecodingOptions
from .errors import OptionError


DECODING_FIELDS = ("num_beams", "do_sample", "top_p", "top_k", "temperature", "repetition_penalty",
                   "length_penalty", "max_mel_tokens")
_OFFICIAL = DecodingOptions()  # infer_v2's generation defaults: the single source of those values


@dataclass(frozen=True)
class Settings:
    # GPT decoding: defaults and validation are DecodingOptions' (infer_v2's kwargs, do_sample honoured)
    num_beams: int = _OFFICIAL.num_beams
    do_sample: bool = _OFFICIAL.do_sample
    top_p: float = _OFFICIAL.top_p
    top_k: int = _OFFICIAL.top_k
    temperature: float = _OFFICIAL.temperature
    repetition_penalty: float = _OFFICIAL.repetition_penalty
    length_penalty: float = _OFFICIAL.length_penalty
    max_mel_tokens: int = _OFFICIAL.max_mel_tokens
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
        self.decoding()  # raises OptionError naming the field
        checks = [
            ("num_beams", self.num_beams <= 16, "an integer from 1 to 16"),
            ("diffusion_steps", 1 <= self.diffusion_steps <= 200, "an integer from 1 to 200"),
            ("cfg_rate", 0.0 <= self.cfg_rate <= 10.0, "in [0, 10] (0 disables guidance)"),
            ("max_text_tokens_per_segment", self.max_text_tokens_per_segment >= 1, ">= 1"),
            ("interval_silence_ms", 0 <= self.interval_silence_ms <= 10_000, "in [0, 10000]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise OptionError(f"{name}={getattr(self, name)!r} is out of range: expected {expected}")

    def decoding(self, forced_codes: int | None = None) -> DecodingOptions:
        """The GPT decoding options; `forced_codes`: exactly that many codes (stop code suppressed)."""
        values = {name: getattr(self, name) for name in DECODING_FIELDS}
        if forced_codes is not None:
            values.update(max_mel_tokens=forced_codes, min_new_tokens=forced_codes)
        return DecodingOptions(**values)

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

"""Stage timing for the pipeline, and N-run statistics for `indextts-fast profile`.

Stages: text, speaker_cond, emotion_cond, gpt_gen, gpt_forward, s2mel, bigvgan (plus total). A
`StageTimer` always records wall-clock time per stage and segment (two perf_counter calls per stage:
nothing measurable); with `synchronize=True` it also waits for the accelerator at each boundary so
asynchronous GPU work is charged to the stage that issued it (that wait is the only cost of profiling).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

STAGES = ("text", "speaker_cond", "emotion_cond", "gpt_gen", "gpt_forward", "s2mel", "bigvgan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timings:
    """Seconds per stage (summed over segments), per segment, and the whole request."""

    stages: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    segments: list[dict[str, float]] = field(default_factory=list)
    total: float = 0.0
    audio_seconds: float = 0.0
    speaker_cache: str = "miss"  # "hit" (memory or disk) or "miss" (features extracted)
    codes: int = 0  # semantic codes generated, all segments

    @property
    def rtf(self) -> float:
        return self.total / self.audio_seconds if self.audio_seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        return {"stages": dict(self.stages), "segments": [dict(s) for s in self.segments], "total": self.total,
                "audio_seconds": self.audio_seconds, "rtf": self.rtf, "speaker_cache": self.speaker_cache,
                "codes": self.codes}

    def table(self) -> str:
        rows = [f"{'stage':<14}{'seconds':>10}{'share':>8}"]
        for name, sec in self.stages.items():
            share = sec / self.total if self.total else 0.0
            rows.append(f"{name:<14}{sec:>10.3f}{share:>8.1%}")
        rows.append(f"{'total':<14}{self.total:>10.3f}")
        rows.append(f"audio {self.audio_seconds:.2f} s, RTF {self.rtf:.3f}, {self.codes} codes, "
                    f"speaker cache {self.speaker_cache}")
        return "\n".join(rows)


class StageTimer:
    """Accumulates stage times into a `Timings`; `segment(k)` starts per-segment bookkeeping."""

    def __init__(self, device: torch.device | str = "cpu", synchronize: bool = False):
        self.device = torch.device(device)
        self.synchronize = synchronize
        self.timings = Timings()
        self._segment: Optional[dict[str, float]] = None
        self._t0 = time.perf_counter()

    def new_segment(self) -> None:
        self._segment = {s: 0.0 for s in STAGES if s not in ("text", "speaker_cond", "emotion_cond")}
        self.timings.segments.append(self._segment)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.timings.stages:
            raise KeyError(f"unknown stage {name!r}")
        if self.synchronize:
            _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize:
                _sync(self.device)
            dt = time.perf_counter() - t0
            self.timings.stages[name] += dt
            if self._segment is not None and name in self._segment:
                self._segment[name] += dt

    def finish(self, audio_seconds: float, codes: int) -> Timings:
        if self.synchronize:
            _sync(self.device)
        self.timings.total = time.perf_counter() - self._t0
        self.timings.audio_seconds = audio_seconds
        self.timings.codes = codes
        return self.timings


def run_statistics(runs: Sequence[Timings]) -> dict:
    """Per-stage mean/min/max and share of total over N runs, plus total, RTF and codes."""
    if not runs:
        raise ValueError("no runs to summarise")
    totals = [r.total for r in runs]
    mean_total = statistics.fmean(totals)
    stages = {}
    for name in STAGES:
        values = [r.stages[name] for r in runs]
        mean = statistics.fmean(values)
        stages[name] = {"mean": mean, "min": min(values), "max": max(values),
                        "share": mean / mean_total if mean_total else 0.0}
    return {
        "runs": len(runs),
        "stages": stages,
        "total": {"mean": mean_total, "min": min(totals), "max": max(totals),
                  "stdev": statistics.stdev(totals) if len(totals) > 1 else 0.0},
        "audio_seconds": statistics.fmean(r.audio_seconds for r in runs),
        "rtf": statistics.fmean(r.rtf for r in runs),
        "codes": statistics.fmean(r.codes for r in runs),
        "speaker_cache": sorted({r.speaker_cache for r in runs}),
    }

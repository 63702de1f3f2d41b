"""Stability soak: many consecutive generations over varied texts (mixed zh/en, short and long) and
voices, each checked for anomalies, plus resident memory (RSS) across runs.

Anomaly kinds (each run is checked for every kind; `allow` names the kinds that do not fail the soak):
    exception     synthesize raised
    nonfinite     NaN or Inf in the audio
    silent        empty output, or RMS below `silent_db` dBFS
    clipped       more than `clipped` of the samples in clipped flat tops (metrics.clipped_fraction)
    outlier       duration implausible for the text: seconds per estimated syllable outside
                  [`min_s_per_syllable`, `max_s_per_syllable`], or more than `outlier_factor` times off
                  the soak's median (with >= 5 runs)
    cut           a segment stopped at max_mel_tokens (the speech may be cut)
    long_silence  an internal silence longer than `long_silence_s`
    memory        RSS grew more than `rss_growth_mib` between the start and the end of the soak, after
                  `warmup` runs (median of the first and last quarter of the remaining runs)
A random-weight model (the tiny reference set) never emits the stop code: its runs are cut and its
audio is noise, so soak it with `allow={"cut", "outlier", ...}` and read the report.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from . import metrics

KINDS = {
    "exception": "synthesize raised an exception",
    "nonfinite": "NaN or Inf in the audio",
    "silent": "empty or silent output",
    "clipped": "clipped output",
    "outlier": "duration implausible for the text length",
    "cut": "generation stopped at max_mel_tokens",
    "long_silence": "long internal silence",
    "memory": "resident memory grew across runs",
}

TEXTS = [
    "Hello.",
    "你好。",
    "Are you coming with us tonight?",
    "今天天气很好，我们去公园散步吧。",
    "The meeting starts at 9:30 on March 3rd, in room 101.",
    "我今天用 Python 写了一个小程序，效果还不错。",
    "The morning train was late again, so she walked along the river and watched the boats drift slowly "
    "past the old stone bridge, thinking about the letter she had not yet answered.",
    "这是一个用来检查长文本分段和拼接的句子。它包含标点符号、数字二零二四，以及一些常见的词语，"
    "比如春天、城市、朋友和音乐。我们希望每一段都能自然地连接在一起。",
    "OK!",
    "Please call Stella. Ask her to bring these things with her from the store: six spoons of fresh snow "
    "peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "这个周末你有空吗？We could go hiking if the weather is good.",
    "谢谢！",
]


@dataclass(frozen=True)
class Limits:
    silent_db: float = -60.0
    clipped: float = 1e-3
    long_silence_s: float = 1.5
    min_s_per_syllable: float = 0.05
    max_s_per_syllable: float = 1.0
    outlier_factor: float = 3.0
    rss_growth_mib: float = 256.0
    warmup: Optional[int] = None  # runs excluded from the memory trend; default max(2, runs // 10)


def rss_mib() -> float:
    """Resident set size of this process in MiB (/proc on Linux; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def parse_allow(text: str) -> set[str]:
    from .errors import OptionError

    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise OptionError(f"--allow: unknown anomaly kind(s) {', '.join(unknown)}; kinds are {', '.join(KINDS)}")
    return kinds


def check_run(result, text: str, limits: Limits) -> tuple[dict, list[tuple[str, str]]]:
    """Measures of one result and the anomalies they show: ({measure: value}, [(kind, detail)])."""
    audio = np.asarray(result.audio)
    sr = int(result.sample_rate)
    found: list[tuple[str, str]] = []
    m = metrics.signal_measures(audio, sr)
    t = result.timings
    m.update(seconds=t.total, rtf=t.rtf if math.isfinite(t.rtf) else None, codes=int(t.codes),
             segments=len(result.segments), syllables=metrics.syllable_estimate(text))
    cut = sum(bool(s.hit_max_mel_tokens) for s in result.segments)
    m["cut_segments"] = cut
    if not m["finite"]:
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        found.append(("nonfinite", f"{bad} of {len(audio)} samples are NaN/Inf"))
        return m, found
    if len(audio) == 0 or m["rms_dbfs"] is None or m["rms_dbfs"] < limits.silent_db:
        found.append(("silent", f"{len(audio)} samples, RMS {m['rms_dbfs']} dBFS (limit {limits.silent_db})"))
    if m["clipped_fraction"] > limits.clipped:
        found.append(("clipped", f"{m['clipped_fraction']:.2%} of samples clipped (limit {limits.clipped:.2%})"))
    if cut:
        found.append(("cut", f"{cut} of {len(result.segments)} segment(s) stopped at max_mel_tokens "
                             f"({result.settings.max_mel_tokens})"))
    if m["longest_silence_s"] > limits.long_silence_s:
        found.append(("long_silence", f"{m['longest_silence_s']:.2f} s of silence inside the clip "
                                      f"(limit {limits.long_silence_s} s)"))
    per = m["duration_s"] / max(1, m["syllables"])
    m["s_per_syllable"] = per
    if not limits.min_s_per_syllable <= per <= limits.max_s_per_syllable:
        found.append(("outlier", f"{m['duration_s']:.2f} s for ~{m['syllables']} syllables = {per:.3f} s each "
                                 f"(plausible {limits.min_s_per_syllable}..{limits.max_s_per_syllable})"))
    return m, found


def memory_trend(rss: Sequence[float], warmup: int) -> dict:
    """RSS growth after warm-up: median of the last quarter minus median of the first quarter of the
    runs after `warmup`, and the least-squares slope (MiB per run). Needs 4+ runs after warm-up."""
    tail = list(rss[warmup:])
    if len(tail) < 4:
        return {"judged": False, "why": f"too few runs after {warmup} warm-up run(s) to judge memory"}
    q = max(1, len(tail) // 4)
    growth = statistics.median(tail[-q:]) - statistics.median(tail[:q])
    x = np.arange(len(tail), dtype=np.float64)
    slope = float(np.polyfit(x, np.asarray(tail, dtype=np.float64), 1)[0])
    return {"judged": True, "warmup_runs": warmup, "start_mib": statistics.median(tail[:q]),
            "end_mib": statistics.median(tail[-q:]), "growth_mib": growth, "slope_mib_per_run": slope}


def run_soak(engine, runs: int, voices: Sequence[str | Path], settings, texts: Sequence[str] = TEXTS,
             seed: int = 0, allow: Iterable[str] = (), limits: Limits = Limits(), progress: bool = True,
             rss: Callable[[], float] = rss_mib) -> dict:
    """`runs` consecutive generations (run i: text i mod T, voice (i // T) mod V, seed + i); returns the
    report (JSON-ready). `engine.synthesize(text, voice=, settings=, seed=)` as the pipeline's Engine."""
    from tqdm import tqdm

    allow = set(allow)
    voices = [str(v) for v in voices]
    records, anomalies = [], []
    rss_series = [rss()]
    t0 = time.perf_counter()
    interrupted = False
    bar = tqdm(range(runs), desc="soak", unit="run", file=sys.stderr, disable=not progress)
    for i in bar:
        ti, vi = i % len(texts), (i // len(texts)) % len(voices)
        rec = {"run": i, "text_index": ti, "voice_index": vi, "seed": seed + i}
        found: list[tuple[str, str]] = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # cut at max_mel_tokens: checked below
                result = engine.synthesize(texts[ti], voice=voices[vi], settings=settings, seed=seed + i)
            measures, found = check_run(result, texts[ti], limits)
            rec.update(measures)
            del result
        except KeyboardInterrupt:
            interrupted = True
            break
        except Exception as exc:  # noqa: BLE001  (a failing run is what a soak looks for)
            found.append(("exception", f"{type(exc).__name__}: {exc}"))
            rec["traceback"] = traceback.format_exc(limit=8)
        rec["rss_mib"] = rss()
        rss_series.append(rec["rss_mib"])
        rec["anomalies"] = [k for k, _ in found]
        anomalies += [{"run": i, "kind": k, "detail": d} for k, d in found]
        records.append(rec)
        bar.set_postfix(anomalies=len(anomalies), rss=f"{rec['rss_mib']:.0f}M")
    bar.close()
    elapsed = time.perf_counter() - t0
    anomalies += _relative_outliers(records, limits)
    warmup = limits.warmup if limits.warmup is not None else max(2, len(records) // 10)
    memory = memory_trend(rss_series[1:], warmup)
    if memory["judged"] and memory["growth_mib"] > limits.rss_growth_mib:
        anomalies.append({"run": None, "kind": "memory",
                          "detail": f"RSS grew {memory['growth_mib']:.0f} MiB after warm-up "
                                    f"({memory['start_mib']:.0f} -> {memory['end_mib']:.0f} MiB, "
                                    f"{memory['slope_mib_per_run']:.2f} MiB/run; limit {limits.rss_growth_mib})"})
    counts = {k: sum(a["kind"] == k for a in anomalies) for k in KINDS}
    failing = {k: n for k, n in counts.items() if n and k not in allow}
    done = [r for r in records if "duration_s" in r]
    return {
        "format": "indextts-fast soak 1",
        "runs_requested": runs, "runs": len(records), "interrupted": interrupted,
        "elapsed_s": elapsed, "seed": seed,
        "settings": settings.as_dict() if hasattr(settings, "as_dict") else settings,
        "texts": list(texts), "voices": voices,
        "limits": asdict(limits), "allowed": sorted(allow),
        "audio_s": sum(r["duration_s"] for r in done),
        "mean_rtf": _mean([r.get("rtf") for r in done]),
        "rss_mib": {"before": rss_series[0], "after": rss_series[-1], "peak": max(rss_series)},
        "memory": memory,
        "counts": counts, "failing": failing, "ok": not failing and not interrupted,
        "anomalies": anomalies,
        "runs_detail": records,
    }


def _mean(values: list) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _relative_outliers(records: list[dict], limits: Limits) -> list[dict]:
    """Runs whose seconds per syllable are more than outlier_factor off the soak's median (5+ runs),
    unless the absolute check already flagged them."""
    done = [r for r in records if r.get("s_per_syllable")]
    if len(done) < 5:
        return []
    med = statistics.median(r["s_per_syllable"] for r in done)
    out = []
    for r in done:
        ratio = r["s_per_syllable"] / med
        if (ratio > limits.outlier_factor or ratio < 1 / limits.outlier_factor) and "outlier" not in r["anomalies"]:
            r["anomalies"].append("outlier")
            out.append({"run": r["run"], "kind": "outlier",
                        "detail": f"{r['s_per_syllable']:.3f} s per syllable is {ratio:.2f}x the soak's median "
                                  f"{med:.3f} (limit {limits.outlier_factor}x)"})
    return out


def format_summary(report: dict) -> str:
    lines = [f"soak: {report['runs']} of {report['runs_requested']} runs in {report['elapsed_s']:.1f} s"
             + (" (interrupted)" if report["interrupted"] else "")
             + f", {report['audio_s']:.1f} s of audio"
             + (f", mean RTF {report['mean_rtf']:.3f}" if report["mean_rtf"] is not None else "")]
    runs_with = {}
    for a in report["anomalies"]:
        runs_with.setdefault(a["kind"], set()).add(a["run"])
    for kind, n in report["counts"].items():
        mark = "allowed" if kind in report["allowed"] else ("FAIL" if n else "ok")
        lines.append(f"  {kind:<13}{n:>5}  {mark:<8} {KINDS[kind]}")
    mem = report["memory"]
    if mem["judged"]:
        lines.append(f"  memory: {mem['start_mib']:.0f} -> {mem['end_mib']:.0f} MiB after {mem['warmup_runs']} "
                     f"warm-up runs ({mem['growth_mib']:+.0f} MiB, {mem['slope_mib_per_run']:+.2f} MiB/run); "
                     f"peak {report['rss_mib']['peak']:.0f} MiB")
    else:
        lines.append(f"  memory: not judged ({mem['why']})")
    examples = {}
    for a in report["anomalies"]:
        examples.setdefault(a["kind"], a)
    for kind, a in examples.items():
        where = f"run {a['run']}" if a["run"] is not None else "soak"
        lines.append(f"  e.g. {kind} ({where}): {a['detail']}")
    verdict = "PASS" if report["ok"] else "FAIL: " + ", ".join(f"{k} x{n}" for k, n in report["failing"].items())
    if report["interrupted"]:
        verdict = "INCOMPLETE (interrupted)"
    lines.append(f"verdict: {verdict}" + (f" (allowed: {', '.join(report['allowed'])})" if report["allowed"] else ""))
    return "\n".join(lines)


def default_voices(model_dir: str | Path, store_dir: Path) -> list[Path]:
    """The model folder's reference/*.wav prompts if it has any (the reference sets do), else a
    deterministic synthetic speech-like prompt (written once into the data folder)."""
    found = sorted((Path(model_dir) / "reference").glob("*.wav"))
    if found:
        return found
    from .audio import synthetic_prompt

    return [synthetic_prompt(store_dir / "prompts" / "synthetic-4.1s.wav", 4.1)]


def write_report(report: dict, path: str | Path) -> Path:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
    return path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

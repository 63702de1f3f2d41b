"""A compare run: the same texts x voices x variants (presets or any option sets) with the same seeds,
every clip written and measured, a manifest, a summary per variant, a plot.

Layout of the output folder (what `indextts-fast listen` serves):
    manifest.json       texts, voices, variants (every setting), one record per clip with its measures
    clips/<id>.wav      one clip per text x voice x variant (16-bit PCM)
    summary.png         per-variant plot of the main measures

Clip k of text i always uses seed `seed + i`, whatever the voice and variant, so variants differ only by
their settings. Before timing, each voice's conditioning is extracted once (so every clip's RTF is with
a cached speaker) and one untimed warm-up synthesis runs (first-call costs land on no clip). Optional measures (speaker similarity, DNSMOS, WER) run after all generation, so
loading their models never lands in a timing; where they are unavailable the manifest says why.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import metrics
from .errors import OptionError
from .presets import Settings, resolve

MANIFEST = "manifest.json"
CLIPS = "clips"
CLIPPED = 1e-3  # a clip with more than this share of clipped samples counts as clipped


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    overrides: dict = field(default_factory=dict)

    def settings(self, common: Optional[dict] = None) -> Settings:
        return resolve(self.preset, {**(common or {}), **self.overrides})


def parse_variant(spec: str) -> Variant:
    """`NAME=PRESET[:field=value,field=value]`, e.g. `steps8=aggressive:diffusion_steps=8`."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise OptionError(f"variant {spec!r}: expected NAME=PRESET[:field=value,...] with a plain NAME")
    preset, _, opts = rest.partition(":")
    overrides = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise OptionError(f"variant {name}: {item!r} is not field=value")
        overrides[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return Variant(name, preset.strip(), overrides)


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise OptionError(f"{text!r} is not a number or true/false")


def variants_from(presets: Sequence[str], specs: Sequence[str]) -> list[Variant]:
    out = [Variant(p, p) for p in presets] + [parse_variant(s) for s in specs]
    names = [v.name for v in out]
    if not out:
        raise OptionError("nothing to compare: give --presets and/or --variant")
    if len(set(names)) != len(names):
        raise OptionError(f"variant names must be unique, got {', '.join(names)}")
    return out


def read_texts(path: str | Path) -> list[str]:
    """One text per line (UTF-8); blank lines and lines starting with '#' are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise OptionError(f"cannot read text file {path}: {exc}") from exc
    texts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not texts:
        raise OptionError(f"text file {path} has no texts (one per line)")
    return texts


def clip_id(text_index: int, voice_index: int, variant: str) -> str:
    return f"t{text_index:02d}-v{voice_index:02d}-{variant}"


def _mean(values: list) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def run_compare(engine, texts: Sequence[str], voices: Sequence[str | Path], variants: Sequence[Variant],
                out_dir: str | Path, seed: int = 0, common: Optional[dict] = None, extras: bool = True,
                progress: bool = True, model_dir: Optional[str] = None, warmup: int = 1) -> dict:
    """Generate and measure every clip; write clips, manifest.json and return the manifest.

    `engine` needs `synthesize(text, voice=, settings=, seed=) -> SynthesisResult` (and optionally
    `speaker(voice)` to pre-extract conditioning); `common` overrides apply to every variant; `warmup`
    untimed syntheses (first text, voice and variant) run before the first measured clip."""
    from tqdm import tqdm

    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise OptionError(f"{out} already holds a compare run ({MANIFEST}); choose another --out")
    voices = [Path(v) for v in voices]
    for v in voices:
        if not v.is_file():
            raise OptionError(f"voice file not found: {v}")
    settings = {v.name: v.settings(common) for v in variants}  # validates every variant first
    (out / CLIPS).mkdir(parents=True, exist_ok=True)
    if hasattr(engine, "speaker"):
        for v in voices:
            engine.speaker(str(v))
    for _ in range(warmup):  # first-call costs (allocations, lazy init) would land on the first clip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                engine.synthesize(texts[0], voice=str(voices[0]), settings=settings[variants[0].name], seed=seed)
        except Exception:  # noqa: BLE001  (the measured clip will record the same failure)
            break
    clips = []
    bar = tqdm(total=len(texts) * len(voices) * len(variants), desc="compare", unit="clip", file=sys.stderr,
               disable=not progress)
    for ti, text in enumerate(texts):
        for vi, voice in enumerate(voices):
            for variant in variants:
                record = _generate(engine, text, ti, voice, vi, variant.name, settings[variant.name], seed + ti,
                                   out)
                clips.append(record)
                bar.set_postfix(variant=variant.name, rtf=f"{record.get('rtf') or float('nan'):.2f}")
                bar.update()
    bar.close()
    unavailable = add_model_measures(clips, texts, voices, out, progress) if extras else {
        "speaker_similarity": "skipped (--no-extras)", "dnsmos": "skipped (--no-extras)",
        "asr_wer": "skipped (--no-extras)"}
    manifest = {
        "format": "indextts-fast compare 1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_dir": str(model_dir) if model_dir else None,
        "texts": list(texts),
        "voices": [str(v) for v in voices],
        "seeds": {str(ti): seed + ti for ti in range(len(texts))},
        "warmup_runs": warmup,
        "variants": {v.name: {"preset": v.preset, "overrides": {**(common or {}), **v.overrides},
                              "settings": settings[v.name].as_dict()} for v in variants},
        "measures_unavailable": unavailable,
        "clips": clips,
    }
    manifest["summary"] = summarize(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _generate(engine, text: str, ti: int, voice: Path, vi: int, name: str, settings: Settings, seed: int,
              out: Path) -> dict:
    cid = clip_id(ti, vi, name)
    record: dict[str, Any] = {"id": cid, "file": f"{CLIPS}/{cid}.wav", "text_index": ti, "voice_index": vi,
                              "variant": name, "seed": seed, "error": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # cut at max_mel_tokens: recorded below
            result = engine.synthesize(text, voice=str(voice), settings=settings, seed=seed)
    except Exception as exc:  # noqa: BLE001  (one failing clip must not end the run; it is recorded)
        record["error"] = f"{type(exc).__name__}: {exc}"
        return record
    result.save(out / record["file"])
    t = result.timings
    record.update({
        "seconds": t.total, "rtf": t.rtf if math.isfinite(t.rtf) else None, "codes": int(t.codes),
        "segments": len(result.segments),
        "hit_max_mel_tokens": any(bool(s.hit_max_mel_tokens) for s in result.segments),
        "stages": dict(t.stages),
    })
    record.update(metrics.signal_measures(result.audio, result.sample_rate))
    return record


def add_model_measures(clips: list[dict], texts: Sequence[str], voices: Sequence[Path], out: Path,
                       progress: bool = True) -> dict:
    """Speaker similarity, DNSMOS and English WER into each clip record where available; returns
    {measure: reason} for the measures that could not run at all."""
    from tqdm import tqdm

    status = metrics.extras_status()
    unavailable = {k: v for k, v in (("speaker_similarity", status.speaker_similarity), ("dnsmos", status.dnsmos),
                                     ("asr_wer", status.asr)) if v}
    todo = [c for c in clips if c["error"] is None and c.get("finite")]
    if len(unavailable) == 3 or not todo:
        return unavailable
    prompts: dict[int, Any] = {}
    for c in tqdm(todo, desc="measures", unit="clip", file=sys.stderr, disable=not progress):
        x, sr = metrics.load_audio(out / c["file"])
        notes = {}
        if "speaker_similarity" not in unavailable:
            try:
                if c["voice_index"] not in prompts:
                    prompts[c["voice_index"]] = metrics.speaker_embedding(*metrics.load_audio(voices[c["voice_index"]]))
                emb = metrics.speaker_embedding(x, sr)
                c["speaker_similarity"] = float(emb @ prompts[c["voice_index"]])
            except metrics.Unavailable as exc:
                notes["speaker_similarity"] = str(exc)
        if "dnsmos" not in unavailable:
            try:
                c["dnsmos"] = metrics.dnsmos(x, sr)
            except metrics.Unavailable as exc:
                notes["dnsmos"] = str(exc)
        if "asr_wer" not in unavailable:
            try:
                c["asr_wer"], c["asr_transcript"] = metrics.asr_wer(x, sr, texts[c["text_index"]])
            except metrics.Unavailable as exc:
                notes["asr_wer"] = str(exc)
        if notes:
            c["measures_skipped"] = notes
    return unavailable


# ---- summary, table, plot -------------------------------------------------------------------------------

SUMMARY_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("clips", "clips", lambda v: f"{v}"),
    ("errors", "errors", lambda v: f"{v}"),
    ("seconds_total", "generation s (sum)", lambda v: f"{v:.2f}"),
    ("speedup", "speed-up vs first", lambda v: f"{v:.2f}x"),
    ("rtf", "RTF (mean)", lambda v: f"{v:.3f}"),
    ("duration_s", "duration s (mean)", lambda v: f"{v:.2f}"),
    ("codes", "codes (mean)", lambda v: f"{v:.0f}"),
    ("hit_max_mel_tokens", "cut at max_mel_tokens", lambda v: f"{v}"),
    ("silence_ratio", "silence ratio (mean)", lambda v: f"{v:.1%}"),
    ("longest_silence_s", "longest silence s (max)", lambda v: f"{v:.2f}"),
    ("clipped", "clipped clips", lambda v: f"{v}"),
    ("loudness_lufs", "loudness LUFS (mean)", lambda v: f"{v:.1f}"),
    ("speaker_similarity", "speaker similarity", lambda v: f"{v:.3f}"),
    ("dnsmos_ovrl", "DNSMOS ovrl (mean)", lambda v: f"{v:.2f}"),
    ("asr_wer", "English WER (mean)", lambda v: f"{v:.1%}"),
]


def summarize(manifest: dict) -> dict:
    """Per variant: counts, sums and means of the clip measures (None where no clip has the measure)."""
    summary = {}
    for name in manifest["variants"]:
        cs = [c for c in manifest["clips"] if c["variant"] == name]
        ok = [c for c in cs if c["error"] is None]
        summary[name] = {
            "clips": len(cs), "errors": len(cs) - len(ok),
            "seconds_total": sum(c["seconds"] for c in ok),
            "rtf": _mean([c.get("rtf") for c in ok]),
            "duration_s": _mean([c.get("duration_s") for c in ok]),
            "codes": _mean([c.get("codes") for c in ok]),
            "hit_max_mel_tokens": sum(bool(c.get("hit_max_mel_tokens")) for c in ok),
            "nonfinite": sum(not c.get("finite", True) for c in ok),
            "silence_ratio": _mean([c.get("silence_ratio") for c in ok]),
            "longest_silence_s": max((c.get("longest_silence_s") or 0.0 for c in ok), default=None),
            "clipped": sum((c.get("clipped_fraction") or 0.0) > CLIPPED for c in ok),
            "loudness_lufs": _mean([c.get("loudness_lufs") for c in ok]),
            "speaker_similarity": _mean([c.get("speaker_similarity") for c in ok]),
            "dnsmos_ovrl": _mean([(c.get("dnsmos") or {}).get("ovrl") for c in ok]),
            "asr_wer": _mean([c.get("asr_wer") for c in ok]),
        }
    names = list(summary)
    first = summary[names[0]]["seconds_total"] if names else 0.0
    for name in names:
        own = summary[name]["seconds_total"]
        summary[name]["speedup"] = first / own if own and first else None
    return summary


def format_table(manifest: dict) -> str:
    summary = manifest["summary"]
    names = list(summary)
    col = max(12, *(len(n) + 2 for n in names))
    head = "measure".ljust(26) + "".join(n.rjust(col) for n in names)
    lines = [head, "-" * len(head)]
    for key, label, fmt in SUMMARY_ROWS:
        cells = [summary[n].get(key) for n in names]
        if all(c is None for c in cells) and key in ("speaker_similarity", "dnsmos_ovrl", "asr_wer"):
            continue
        lines.append(label.ljust(26) + "".join(("-" if c is None else fmt(c)).rjust(col) for c in cells))
    for measure, why in manifest.get("measures_unavailable", {}).items():
        lines.append(f"{measure}: not measured, {why}")
    return "\n".join(lines)


PLOTTED = [("rtf", "RTF"), ("duration_s", "duration (s)"), ("loudness_lufs", "loudness (LUFS)"),
           ("silence_ratio", "silence ratio"), ("speaker_similarity", "speaker similarity"),
           ("dnsmos", "DNSMOS ovrl"), ("asr_wer", "English WER")]


def plot(manifest: dict, path: str | Path) -> Path:
    """One panel per measure that any clip has: every clip as a dot, the variant mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(manifest["variants"])

    def value(c: dict, key: str):
        v = (c.get("dnsmos") or {}).get("ovrl") if key == "dnsmos" else c.get(key)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else None

    panels = [(k, label) for k, label in PLOTTED
              if any(value(c, k) is not None for c in manifest["clips"] if c["error"] is None)]
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, panels):
        for i, name in enumerate(names):
            vals = [value(c, key) for c in manifest["clips"] if c["variant"] == name and c["error"] is None]
            vals = [v for v in vals if v is not None]
            if vals:
                ax.bar(i, statistics.fmean(vals), color=f"C{i}", alpha=0.35)
                ax.plot([i] * len(vals), vals, "o", color=f"C{i}", markersize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{len(manifest['texts'])} texts x {len(manifest['voices'])} voices x {len(names)} variants",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise OptionError(f"{run_dir} is not a compare run (no {MANIFEST}); make one with `indextts-fast compare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OptionError(f"{path} is not a valid compare manifest: {e}") from None
    kinds = {"texts": list, "voices": list, "variants": dict, "clips": list}
    missing = [k for k, kind in kinds.items() if not isinstance(manifest, dict) or not isinstance(manifest.get(k), kind)]
    if missing:
        raise OptionError(f"{path} is not a compare manifest: {', '.join(missing)} missing or of the wrong type")
    return manifest

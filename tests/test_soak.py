"""The soak's anomaly logic with injected faults (fake engine), and a short soak on the tiny model."""

from __future__ import annotations

import gc
import json
import math

import numpy as np
import pytest

from indextts_fast import soak
from indextts_fast.cli import main
from indextts_fast.errors import OptionError
from indextts_fast.presets import resolve
from indextts_fast.profiling import Timings

SR = 22050
SETTINGS = resolve("extreme")


class Result:
    def __init__(self, audio, cut=False):
        self.audio, self.sample_rate, self.settings = np.asarray(audio, dtype=np.float32), SR, SETTINGS
        self.timings = Timings(total=0.1, audio_seconds=len(audio) / SR, codes=10)
        self.segments = [type("Seg", (), {"hit_max_mel_tokens": cut})()]


class FaultyEngine:
    """Speech-like tone bursts, 0.25 s per estimated syllable; `faults` maps run index -> fault."""

    def __init__(self, faults=None, leak_mib=0):
        self.faults, self.leak_mib, self.run, self.cache = faults or {}, leak_mib, 0, []

    def synthesize(self, text, voice=None, settings=None, seed=None):
        fault, self.run = self.faults.get(self.run), self.run + 1
        if self.leak_mib:  # a cache that never forgets: RSS grows every run (pages really touched)
            self.cache.append(np.ones(self.leak_mib << 20, dtype=np.uint8))
        if fault == "raise":
            raise RuntimeError("decoder exploded")
        n = int(0.25 * soak.metrics.syllable_estimate(text) * SR)
        t = np.arange(n) / SR
        x = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
        if fault == "nan":
            x[n // 2] = np.nan
        elif fault == "silent":
            x = np.zeros(n)
        elif fault == "clip":
            x = np.clip(8 * x, -1, 1)
        elif fault == "gap":
            x = np.concatenate([x, np.zeros(3 * SR), x])
        elif fault == "long":
            x = np.tile(x, 8)
        return Result(x, cut=(fault == "cut"))


def kinds_by_run(report):
    out = {}
    for a in report["anomalies"]:
        out.setdefault(a["run"], set()).add(a["kind"])
    return out


def test_clean_soak_passes():
    report = soak.run_soak(FaultyEngine(), 14, ["a.wav", "b.wav"], SETTINGS, progress=False)
    assert report["ok"] and report["anomalies"] == [] and report["runs"] == 14
    assert [r["voice_index"] for r in report["runs_detail"]] == [0] * 12 + [1] * 2  # texts first, then voices
    assert [r["seed"] for r in report["runs_detail"]] == list(range(14))
    json.dumps(report, allow_nan=False)


def test_every_injected_fault_is_flagged_in_its_run():
    faults = {1: "nan", 3: "silent", 4: "clip", 6: "gap", 7: "raise", 9: "cut", 10: "long"}
    report = soak.run_soak(FaultyEngine(faults), 12, ["a.wav"], SETTINGS, progress=False)
    got = kinds_by_run(report)
    assert got[1] == {"nonfinite"}
    assert got[3] == {"silent"}
    assert got[4] == {"clipped"}
    assert got[6] == {"long_silence"}  # 3 s inside a ~22 s clip: still a plausible length for its text
    assert got[7] == {"exception"} and "decoder exploded" in report["runs_detail"][7]["traceback"]
    assert got[9] == {"cut"}
    assert "outlier" in got[10]  # 8x the plausible duration for its text
    assert set(got) == set(faults.keys())
    assert not report["ok"] and set(report["failing"]) == {"nonfinite", "silent", "clipped", "long_silence",
                                                           "exception", "cut", "outlier"}
    text = soak.format_summary(report)
    assert "FAIL" in text and "decoder exploded" in text


def test_allowed_kinds_do_not_fail_the_soak():
    report = soak.run_soak(FaultyEngine({2: "cut", 5: "cut"}), 8, ["a.wav"], SETTINGS, allow={"cut"}, progress=False)
    assert report["counts"]["cut"] == 2 and report["failing"] == {} and report["ok"]
    assert "allowed" in soak.format_summary(report)
    assert soak.parse_allow("cut, outlier") == {"cut", "outlier"}
    with pytest.raises(OptionError, match="unknown anomaly"):
        soak.parse_allow("cut,typo")


def test_a_leaking_cache_is_flagged_as_memory_growth():
    # real RSS: collect what earlier tests left first, or its release during the soak hides the growth
    # (seen once in a full run)
    gc.collect()
    limits = soak.Limits(rss_growth_mib=40, warmup=2)
    report = soak.run_soak(FaultyEngine(leak_mib=8), 14, ["a.wav"], SETTINGS, limits=limits, progress=False)
    assert report["counts"]["memory"] == 1 and not report["ok"]
    assert report["memory"]["slope_mib_per_run"] == pytest.approx(8, rel=0.3)
    gc.collect()
    clean = soak.run_soak(FaultyEngine(), 14, ["a.wav"], SETTINGS, limits=limits, progress=False)
    assert clean["counts"]["memory"] == 0


def test_memory_trend_with_an_injected_rss_series():
    assert soak.memory_trend([100.0] * 5, warmup=2)["judged"] is False
    flat = soak.memory_trend([300, 500] + [500.0] * 20, warmup=2)  # warm-up growth is not counted
    assert flat["growth_mib"] == 0.0 and flat["slope_mib_per_run"] == pytest.approx(0.0, abs=1e-9)
    rising = soak.memory_trend([500.0 + 10 * i for i in range(22)], warmup=2)
    assert rising["slope_mib_per_run"] == pytest.approx(10.0) and rising["growth_mib"] == pytest.approx(150.0)


def test_relative_duration_outliers():
    # plausible in absolute terms (0.9 s per syllable) but 3.6x the median of the other runs
    class Slow(FaultyEngine):
        def synthesize(self, text, **kw):
            r = super().synthesize(text, **kw)
            if self.run == 6:
                r.audio = np.tile(r.audio, 4)[: int(0.9 * soak.metrics.syllable_estimate(text) * SR)]
            return r

    report = soak.run_soak(Slow(), 10, ["a.wav"], SETTINGS, progress=False)
    assert kinds_by_run(report) == {5: {"outlier"}}
    assert "median" in report["anomalies"][0]["detail"]


def test_soak_command_on_the_tiny_model(tiny_dir, tmp_path, capsys):
    report_path = tmp_path / "soak.json"
    args = ["soak", "--model-dir", str(tiny_dir), "--runs", "4", "--preset", "extreme", "--max-mel-tokens", "8",
            "--diffusion-steps", "2", "--report", str(report_path), "--threads", "1",
            "--allow", "cut,outlier,clipped,long_silence,silent"]
    code = main(args)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["runs"] == 4 and not report["interrupted"]
    assert code == (0 if report["ok"] else 1)
    for r in report["runs_detail"]:
        assert "traceback" not in r, r["traceback"]
        assert r["finite"] and r["codes"] >= 1 and math.isfinite(r["duration_s"])
    assert report["counts"]["exception"] == report["counts"]["nonfinite"] == 0
    assert "verdict:" in capsys.readouterr().out

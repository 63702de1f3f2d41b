"""The compare run: a fake engine for the bookkeeping (fast, exact), the real engine on the tiny model."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from indextts_fast import compare
from indextts_fast.cli import main
from indextts_fast.errors import OptionError
from indextts_fast.profiling import Timings

SR = 22050


class FakeResult:
    def __init__(self, audio, settings, seed, cut):
        self.audio, self.sample_rate, self.settings, self.seed = audio.astype(np.float32), SR, settings, seed
        self.timings = Timings(total=0.01 * settings.diffusion_steps, audio_seconds=len(audio) / SR,
                               codes=int(len(audio) / SR * 50))
        self.segments = [type("Seg", (), {"hit_max_mel_tokens": cut})()]

    def save(self, path):
        sf.write(str(path), self.audio, SR, subtype="PCM_16")


class FakeEngine:
    """Tones: frequency from the seed, length from the text, level from diffusion_steps; a text
    containing 'boom' raises, one containing 'loud' clips, max_mel_tokens < 10 marks the clip cut."""

    def __init__(self):
        self.calls, self.extracted = [], []

    def speaker(self, voice):
        self.extracted.append(voice)

    def synthesize(self, text, voice=None, settings=None, seed=None):
        self.calls.append((text, voice, settings, seed))
        if "boom" in text:
            raise RuntimeError("boom")
        t = np.arange(int(0.05 * len(text) * SR)) / SR
        level = 2.0 if "loud" in text else 0.02 * settings.diffusion_steps
        return FakeResult(np.clip(level * np.sin(2 * np.pi * (200 + seed) * t), -1, 1), settings, seed,
                          settings.max_mel_tokens < 10)


@pytest.fixture
def voices(tmp_path):
    out = []
    for i in range(2):
        p = tmp_path / f"voice{i}.wav"
        sf.write(p, 0.3 * np.sin(2 * np.pi * (150 + 50 * i) * np.arange(SR) / SR), SR)
        out.append(p)
    return out


def test_parse_variant_and_validation():
    v = compare.parse_variant("steps8=aggressive:diffusion_steps=8,do_sample=false,top_p=0.5")
    assert v == compare.Variant("steps8", "aggressive", {"diffusion_steps": 8, "do_sample": False, "top_p": 0.5})
    assert v.settings().diffusion_steps == 8 and v.settings({"max_mel_tokens": 5}).max_mel_tokens == 5
    for bad in ("nameonly", "=baseline", "x=baseline:diffusion_steps", "x=baseline:top_k=abc"):
        with pytest.raises(OptionError):
            compare.parse_variant(bad)
    with pytest.raises(OptionError, match="unique"):
        compare.variants_from(["baseline"], ["baseline=extreme"])
    with pytest.raises(OptionError, match="unknown preset"):
        compare.Variant("x", "nope").settings()


def test_compare_with_a_fake_engine(tmp_path, voices):
    engine = FakeEngine()
    texts = ["Hello there, how are you?", "你好，今天天气很好。", "boom goes the clip", "loud and clipped"]
    variants = compare.variants_from(["baseline", "extreme"], ["tiny=extreme:max_mel_tokens=5"])
    out = tmp_path / "run"
    m = compare.run_compare(engine, texts, voices, variants, out, seed=7, extras=False, progress=False)
    assert engine.extracted == [str(v) for v in voices]  # speakers pre-extracted before timing
    assert engine.calls[0] == (texts[0], str(voices[0]), variants[0].settings(), 7)  # one untimed warm-up
    assert len(m["clips"]) == len(engine.calls) - 1 == 4 * 2 * 3
    # same seed per text, whatever the voice and variant; clips interleave the variants
    for text, _, _, seed in engine.calls:
        assert seed == 7 + texts.index(text)
    assert [c["variant"] for c in m["clips"][:3]] == ["baseline", "extreme", "tiny"]
    assert json.loads((out / "manifest.json").read_text()) == m
    errors = [c for c in m["clips"] if c["error"]]
    assert len(errors) == 6 and all(c["error"] == "RuntimeError: boom" and c["text_index"] == 2 for c in errors)
    for c in m["clips"]:
        if c["error"] is None:
            x, sr = sf.read(out / c["file"])
            assert sr == SR and c["duration_s"] == pytest.approx(len(x) / SR)
            assert c["hit_max_mel_tokens"] == (c["variant"] == "tiny")
            assert (c["clipped_fraction"] > 0.1) == (c["text_index"] == 3)
    s = m["summary"]
    assert s["baseline"]["clips"] == 8 and s["baseline"]["errors"] == 2 and s["tiny"]["hit_max_mel_tokens"] == 6
    assert s["baseline"]["clipped"] == 2 and s["extreme"]["clipped"] == 2
    assert s["extreme"]["speedup"] == pytest.approx(25 / 5)  # fake time is proportional to steps
    assert m["variants"]["tiny"]["settings"]["max_mel_tokens"] == 5
    assert set(m["measures_unavailable"]) == {"speaker_similarity", "dnsmos", "asr_wer"}
    table = compare.format_table(m)
    assert "baseline" in table and "5.00x" in table and "not measured" in table
    png = compare.plot(m, out / "summary.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OptionError, match="already holds"):
        compare.run_compare(engine, texts, voices, variants, out, extras=False, progress=False)


def test_extras_are_measured_or_declared_unavailable(tmp_path, voices):
    m = compare.run_compare(FakeEngine(), ["Hello world, this is a test."], voices[:1],
                            compare.variants_from(["extreme"], []), tmp_path / "run", progress=False)
    status = compare.metrics.extras_status()
    clip = m["clips"][0]
    for key, why, field in (("speaker_similarity", status.speaker_similarity, "speaker_similarity"),
                            ("dnsmos", status.dnsmos, "dnsmos"), ("asr_wer", status.asr, "asr_wer")):
        if why:
            assert m["measures_unavailable"][key] == why and field not in clip
        else:
            assert key not in m["measures_unavailable"]
            assert field in clip or field in clip.get("measures_skipped", {})


def test_read_texts(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("# comment\nHello.\n\n  你好。 \n", encoding="utf-8")
    assert compare.read_texts(p) == ["Hello.", "你好。"]
    p.write_text("\n# only a comment\n")
    with pytest.raises(OptionError, match="no texts"):
        compare.read_texts(p)


def test_compare_command_on_the_tiny_model(tiny_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there.\n今天天气很好。\nThis is a test, 123.\n", encoding="utf-8")
    voices = sorted((tiny_dir / "reference").glob("*.wav"))[:2]
    out = tmp_path / "run"
    args = ["compare", "--model-dir", str(tiny_dir), "--presets", "baseline,conservative,aggressive,extreme",
            "--text-file", str(texts), "--out", str(out), "--max-mel-tokens", "8", "--diffusion-steps", "2",
            "--num-beams", "1", "--no-extras", "--threads", "1"]
    for v in voices:
        args += ["--voice", str(v)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(m["clips"]) == 4 * 3 * len(voices) and all(c["error"] is None for c in m["clips"])
    assert len(list((out / "clips").glob("*.wav"))) == len(m["clips"])
    assert (out / "summary.png").is_file()
    for c in m["clips"]:
        assert c["codes"] >= 1 and c["finite"] and c["duration_s"] > 0
    table = capsys.readouterr().out
    for name in ("baseline", "conservative", "aggressive", "extreme"):
        assert name in table


def test_command_line_errors_are_clean(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("Hello.\n")
    base = ["compare", "--model-dir", str(tmp_path), "--text-file", str(texts), "--voice", "v.wav", "--out",
            str(tmp_path / "o")]
    assert main(base + ["--presets", "baseline", "--preset", "extreme"]) == 2
    assert main(base + ["--presets", "baseline,nope"]) == 2
    assert main(base + ["--presets", "baseline", "--diffusion-steps", "0"]) == 2
    assert main(["listen", str(tmp_path), "--results"]) == 2
    err = capsys.readouterr().err
    assert "not --preset" in err and "unknown preset 'nope'" in err and "diffusion_steps=0" in err
    assert "not a compare run" in err

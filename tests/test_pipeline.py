"""The engine end to end on the tiny reference model: official e2e goldens, presets, determinism,
the speaker registry in the request path, and errors."""

import json
import math

import numpy as np
import torch
import pytest
import soundfile as sf

from indextts_fast.errors import AudioError, IndexTTSFastError, OptionError
from indextts_fast.parity import run as run_parity
from indextts_fast.pipeline import SAMPLE_RATE, Emotion, Engine
from indextts_fast.presets import PRESETS
from indextts_fast.speakers import SpeakerStore

SHORT = {"max_mel_tokens": 30}  # random weights rarely stop: keep requests small

TEXTS = {
    "zh": "今天天气很好，我们去公园散步吧。",
    "en": "The quick brown fox jumps over the lazy dog.",
    "mixed": ("我们在2024年3月15日发布了version 2.0，效果很好。This release improves speed by 35%, "
              "and the price is $12.50 per month. 欢迎大家试用并反馈意见！") * 6,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return SpeakerStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def engine(tiny_dir, store):
    return Engine(tiny_dir, store=store)


@pytest.fixture(scope="module")
def prompt(tiny_dir):
    manifest = json.loads((tiny_dir / "goldens" / "e2e.json").read_text())
    return tiny_dir / manifest["prompt"]["file"]


def test_e2e_goldens(tiny_dir):
    lines = []
    passed, failed = run_parity(tiny_dir, ["e2e"], emit=lines.append)
    assert failed == 0, "\n".join(line for line in lines if not line.startswith("PASS"))
    assert passed > 20


def test_mixed_text_is_long_enough():
    assert len(TEXTS["mixed"]) >= 600


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("lang", list(TEXTS))
def test_presets_give_valid_audio_of_the_implied_length(engine, prompt, preset, lang):
    r = engine.synthesize(TEXTS[lang], voice=prompt, preset=preset, seed=3, **SHORT)
    assert r.sample_rate == SAMPLE_RATE and r.audio.dtype == np.float32
    assert np.isfinite(r.audio).all() and np.abs(r.audio).max() <= 1.0
    frames = [int(np.float32(seg.codes.shape[1]) * np.float32(1.72)) for seg in r.segments]
    silence = int(SAMPLE_RATE * r.settings.interval_silence_ms / 1000)
    assert len(r.audio) == 256 * sum(frames) + silence * (len(r.segments) - 1)
    assert r.timings.codes == sum(seg.codes.shape[1] for seg in r.segments)
    if lang == "mixed":
        assert len(r.segments) > 1


def test_same_seed_same_audio_other_seed_differs(engine, prompt):
    a = engine.synthesize(TEXTS["en"], voice=prompt, preset="aggressive", seed=7, **SHORT)
    b = engine.synthesize(TEXTS["en"], voice=prompt, preset="aggressive", seed=7, **SHORT)
    c = engine.synthesize(TEXTS["en"], voice=prompt, preset="aggressive", seed=8, **SHORT)
    assert np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, c.audio)


def test_registered_speaker_skips_extraction_and_matches(engine, prompt, store, tiny_dir, monkeypatch):
    engine.register_speaker("tiny-voice", prompt, overwrite=True)
    direct = engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1, **SHORT)

    def boom(*a, **k):
        raise AssertionError("extraction must not run for a registered speaker")

    monkeypatch.setattr(engine, "extract_speaker", boom)
    cached = engine.synthesize(TEXTS["en"], speaker_id="tiny-voice", preset="extreme", seed=1, **SHORT)
    assert cached.timings.speaker_cache == "hit"
    assert np.array_equal(direct.audio, cached.audio)
    # after a restart (a new engine and store object on the same folder) the registry is still there
    fresh = Engine(tiny_dir, store=SpeakerStore(store.root))
    monkeypatch.setattr(fresh, "extract_speaker", boom)
    again = fresh.synthesize(TEXTS["en"], speaker_id="tiny-voice", preset="extreme", seed=1, **SHORT)
    assert np.array_equal(direct.audio, again.audio)


def test_adhoc_voice_is_cached_by_content(engine, prompt, tmp_path):
    copy = tmp_path / "renamed.wav"
    copy.write_bytes(prompt.read_bytes())
    engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1, **SHORT)
    before = engine.extractions
    r = engine.synthesize(TEXTS["en"], voice=copy, preset="extreme", seed=1, **SHORT)
    assert engine.extractions == before and r.timings.speaker_cache == "hit"
    data, sr = sf.read(str(prompt), dtype="float32")
    sf.write(str(copy), data * 0.5, sr)  # edited file: must be recomputed
    r = engine.synthesize(TEXTS["en"], voice=copy, preset="extreme", seed=1, **SHORT)
    assert engine.extractions == before + 1 and r.timings.speaker_cache == "miss"


def test_emotion_vector_and_audio(engine, prompt):
    neutral = engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1, **SHORT)
    happy = engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1,
                              emotion=Emotion(vector=[0.8, 0, 0, 0, 0, 0, 0, 0]), **SHORT)
    assert not np.array_equal(neutral.audio, happy.audio)
    same_clip = engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1,
                                  emotion=Emotion(audio=prompt, alpha=1.0), **SHORT)
    assert np.isfinite(same_clip.audio).all()


def test_default_emotion_is_computed_once_per_speaker(engine, prompt, monkeypatch):
    spk = engine.speaker(prompt)
    engine.clear_caches()
    first = engine.emotion_vector(spk, Emotion())
    calls = []
    real = engine.gpt.merge_emovec
    monkeypatch.setattr(engine.gpt, "merge_emovec", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = engine.emotion_vector(spk, Emotion())
    assert torch.equal(first, again) and calls == []          # cached: same values, no encoder pass
    assert torch.equal(first, real(spk.spk_cond_emb, spk.emo_cond_emb, 1.0).float())
    engine.emotion_vector(spk, Emotion(vector=[0.8, 0, 0, 0, 0, 0, 0, 0]))
    assert calls == [1]                                      # other emotions are not cached
    engine.clear_caches()
    engine.emotion_vector(spk, Emotion())
    assert calls == [1, 1]


def test_profile_timings(engine, prompt):
    r = engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1, profile=True, **SHORT)
    t = r.timings
    assert t.total > 0 and t.audio_seconds == pytest.approx(r.duration)
    assert t.stages["gpt_gen"] > 0 and t.stages["s2mel"] > 0 and t.stages["bigvgan"] > 0
    assert math.isclose(t.rtf, t.total / t.audio_seconds)
    assert len(t.segments) == len(r.segments)


def test_forced_codes(engine, prompt):
    r = engine.synthesize(TEXTS["en"], voice=prompt, preset="extreme", seed=1, forced_codes=17)
    assert [s.codes.shape[1] for s in r.segments] == [17] * len(r.segments)


def test_errors(engine, prompt, tmp_path):
    with pytest.raises(OptionError, match="text is empty"):
        engine.synthesize("   ", voice=prompt)
    with pytest.raises(OptionError, match="no tokens"):
        engine.synthesize("\u200b", voice=prompt)
    with pytest.raises(OptionError, match="unknown preset"):
        engine.synthesize("hello", voice=prompt, preset="warp")
    with pytest.raises(OptionError, match="top_p"):
        engine.synthesize("hello", voice=prompt, top_p=1.5)
    with pytest.raises(OptionError, match="exactly one"):
        engine.synthesize("hello")
    with pytest.raises(IndexTTSFastError, match="nobody"):
        engine.synthesize("hello", speaker_id="nobody")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio")
    with pytest.raises(AudioError):
        engine.synthesize("hello", voice=bad)
    with pytest.raises(AudioError, match="not found"):
        engine.synthesize("hello", voice=tmp_path / "missing.wav")
    with pytest.raises(OptionError, match="8 finite numbers"):
        Emotion(vector=[1, 2])
    with pytest.raises(OptionError, match="alpha"):
        Emotion(alpha=1.5)


def test_emotion_from_text_without_the_classifier(engine, prompt):
    with pytest.raises(IndexTTSFastError, match="emotion classifier"):
        engine.synthesize(TEXTS["en"], voice=prompt, emotion=Emotion(from_text=True), **SHORT)


def test_wrong_text_types_and_seeds_are_named(engine, prompt):
    with pytest.raises(OptionError, match="text must be a str, got bytes"):
        engine.synthesize(b"Hello", voice=prompt)
    with pytest.raises(OptionError, match="seed"):
        engine.synthesize("Hello", voice=prompt, seed=2 ** 64)
    with pytest.raises(OptionError, match="seed"):
        engine.synthesize("Hello", voice=prompt, seed=-1)


def test_save_writes_whole_files_only(engine, prompt, tmp_path):
    r = engine.synthesize("Hello.", voice=prompt, preset="extreme", seed=1, **SHORT)
    out = r.save(tmp_path / "sub" / "a.flac")
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["a.flac"]   # no temp file left
    assert sf.info(str(out)).samplerate == r.sample_rate
    with pytest.raises(OptionError, match="choose a .wav"):
        r.save(tmp_path / "a.mp3")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(OptionError, match="is a folder"):
        r.save(tmp_path / "d.wav")
    assert not (tmp_path / "a.mp3").exists()


def test_stream_yields_each_segment_and_concatenates_to_synthesize(engine, prompt):
    text = TEXTS["en"] + " " + TEXTS["en"]
    kwargs = dict(voice=prompt, preset="extreme", seed=5, max_text_tokens_per_segment=20, **SHORT)
    chunks = list(engine.stream(text, **kwargs))
    whole = engine.synthesize(text, **kwargs)
    assert len(chunks) == len(whole.segments) >= 2
    assert [c.index for c in chunks] == list(range(len(chunks))) and chunks[-1].last and not chunks[0].last
    assert all(c.count == len(chunks) and c.sample_rate == SAMPLE_RATE and c.seed == 5 for c in chunks)
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), whole.audio)
    assert all(torch.equal(c.segment.codes, s.codes) for c, s in zip(chunks, whole.segments))
    silence = int(SAMPLE_RATE * whole.settings.interval_silence_ms / 1000)
    assert not chunks[1].audio[:silence].any()                  # the pause leads the second chunk
    with pytest.raises(OptionError, match="got bytes"):
        engine.stream(b"Hello", voice=prompt)                   # checked when called, not when iterated


def test_concurrent_requests_give_the_audio_they_give_alone(engine, prompt):
    import threading

    jobs = [(TEXTS["en"], 11), (TEXTS["zh"], 12), (TEXTS["mixed"], 13)]
    alone = [engine.synthesize(t, voice=prompt, preset="extreme", seed=s, **SHORT).audio for t, s in jobs]
    engine.clear_caches()
    together, errors = [None] * len(jobs), []

    def run(i):
        try:
            t, s = jobs[i]
            together[i] = engine.synthesize(t, voice=prompt, preset="extreme", seed=s, **SHORT).audio
        except Exception as e:   # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_first_segment_tokens_makes_the_first_segment_short(engine, prompt):
    """The official quick_streaming_tokens: sentences are not merged into one segment until that many tokens
    were seen, so the first segment (the first audio of a stream) is one sentence."""
    text = "The fox jumps over it. The dog runs away now. Then it comes back here. And it sleeps."
    kw = dict(voice=prompt, preset="extreme", seed=2, max_text_tokens_per_segment=24, **SHORT)
    plain = list(engine.stream(text, **kw))
    quick = list(engine.stream(text, first_segment_tokens=len(plain[0].segment.text_ids) + 2, **kw))
    assert len(quick[0].segment.text_ids) < len(plain[0].segment.text_ids)
    assert sum(len(c.segment.text_ids) for c in quick) == sum(len(c.segment.text_ids) for c in plain)
    with pytest.raises(OptionError, match="first_segment_tokens"):
        engine.stream(text, voice=prompt, first_segment_tokens=-1)

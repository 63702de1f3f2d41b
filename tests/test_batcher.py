"""Continuous batching (batcher.py, decoding.step_all) on the tiny reference model: batch invariance in every
precision mode this CPU runs natively, joining and leaving, no starvation, errors and cancellation."""

import json
import threading

import numpy as np
import pytest
import torch

from indextts_fast.batcher import Batcher
from indextts_fast.decoding import batch_rows, search, step_all
from indextts_fast.errors import OptionError
from indextts_fast.pipeline import Engine
from indextts_fast.plan import make_plan

SHORT = {"max_mel_tokens": 30}
# (text, preset, seed, voice): different texts, presets (1 and 3 beams, sampling, greedy), seeds and voices
REQUESTS = [
    ("The quick brown fox jumps over the lazy dog.", "baseline", 11, "prompt"),
    ("今天天气很好，我们去公园散步吧。", "extreme", 12, "stereo"),
    ("Hello there, how are you doing today?", "aggressive", 13, "prompt"),
    ("One more sentence. And a second one here.", "conservative", 14, "stereo"),
    ("Numbers: 3 apples and 12 pears.", "baseline", 15, "stereo"),
    ("Short.", "extreme", 16, "prompt"),
    ("我们在2024年发布了新版本。", "aggressive", 17, "prompt"),
    ("The last one of the batch.", "baseline", 18, "stereo"),
]


def native_modes() -> list[str]:
    """fp32, auto, and every single mode this CPU runs natively (emulated ones are refused by the plan)."""
    modes = ["fp32", "auto"]
    for mode in ("int8", "int8dyn", "bf16", "int8max"):
        try:
            make_plan(mode)
            modes.append(mode)
        except OptionError:
            pass
    return modes


@pytest.fixture(scope="module")
def voices(tiny_dir):
    manifest = json.loads((tiny_dir / "goldens" / "e2e.json").read_text())
    return {"prompt": tiny_dir / manifest["prompt"]["file"], "stereo": tiny_dir / "reference" / "prompt_44k_stereo.wav"}


def _audio(chunks) -> np.ndarray:
    return np.concatenate([c.audio for c in chunks])


def _kw(voices, preset, seed, voice):
    return dict(voice=voices[voice], preset=preset, seed=seed, **SHORT)


@pytest.mark.parametrize("mode", native_modes())
def test_a_seeded_request_gives_the_same_bits_alone_and_in_any_batch(tiny_dir, voices, mode, one_thread):
    engine = Engine(tiny_dir, precision=mode)
    target = ("The target request, spoken in every batch.", "baseline", 7, "prompt")
    alone = _audio(engine.stream(target[0], **_kw(voices, *target[1:])))
    for others in (1, 3, 7):
        batcher = Batcher(engine, max_active=8)
        tickets = [batcher.stream(text, **_kw(voices, *rest)) for text, *rest in [target, *REQUESTS[:others]]]
        results = [_audio(t) for t in tickets]
        batcher.close()
        assert np.array_equal(results[0], alone), f"{mode}: the target differs in a batch of {others + 1}"
        for (text, *rest), got in zip(REQUESTS[:others], results[1:]):   # and every other request as alone
            assert np.array_equal(got, _audio(engine.stream(text, **_kw(voices, *rest))))
        st = batcher.stats
        assert st.requests == others + 1 and st.prefills >= others + 1
        if batcher.rows:   # row-invariant products: several requests really shared decode calls
            assert st.decode_rows > st.decode_calls * 3, st


def test_step_all_reads_every_request_in_one_call_and_matches_alone(tiny_dir):
    """decoding.step_all: three searches with their own options and generators stepped together give the codes
    and logits each gives alone (fp32 plan: the row kernel sums every row in one order)."""
    from indextts_fast import stages
    from indextts_fast.decoding import DecodingOptions, generate

    m = stages.load(tiny_dir, "cpu", make_plan("fp32"))
    assert batch_rows(m.gpt) >= 8
    spk = stages.speaker_conditioning(m, tiny_dir / "reference" / "prompt.wav")
    emovec = m.gpt.merge_emovec(spk.spk_cond_emb, spk.emo_cond_emb, 1.0)
    opts = [DecodingOptions(num_beams=3, do_sample=True, max_mel_tokens=20),
            DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=12),
            DecodingOptions(num_beams=2, do_sample=False, repetition_penalty=2.0, max_mel_tokens=25)]
    ids = [torch.tensor([5, 9, 14, 2]), torch.tensor([7, 7, 30]), torch.tensor([40, 3, 3, 8, 1, 6])]
    alone = [generate(m.gpt, spk.spk_latent, i, emovec, o, torch.Generator().manual_seed(k), record=True)
             for k, (i, o) in enumerate(zip(ids, opts))]
    searches = [search(m.gpt, spk.spk_latent, i, emovec, o, torch.Generator().manual_seed(k), record=True)
                for k, (i, o) in enumerate(zip(ids, opts))]
    calls = 0
    with torch.inference_mode():
        for s in searches:
            s.start()
        while any(not s.done for s in searches):
            step_all(m.gpt, [s for s in searches if not s.done])   # they leave as they finish
            calls += 1
    for a, s in zip(alone, searches):
        assert torch.equal(a.codes, s.codes) and a.steps == s.steps
        assert all(torch.equal(x, y) for x, y in zip(a.trace.logits, s.trace.logits))
    assert calls == max(a.steps for a in alone) - 1      # one call per step for all of them


def test_a_long_request_is_not_starved_by_a_stream_of_short_ones(tiny_dir, voices, one_thread):
    """Counts, not timings: the rounds the long request needs among 24 short arrivals are at most twice the
    rounds it needs alone (every active request advances every round; prefills are one per round)."""
    engine = Engine(tiny_dir)
    long_text = "A long request. " * 12
    kw = dict(voice=voices["prompt"], preset="extreme", seed=3, max_text_tokens_per_segment=20, max_mel_tokens=30)
    batcher = Batcher(engine, max_active=4)
    alone_ticket = batcher.stream(long_text, **kw)
    alone = _audio(alone_ticket)
    assert batcher.load == (0, 0)
    rounds_alone = alone_ticket.rounds
    long_ticket = batcher.stream(long_text, **kw)
    shorts, done = [], threading.Event()

    def arrive():   # a short request whenever fewer than 3 are in flight, until the long one is done
        while not done.is_set() and len(shorts) < 24:
            if sum(1 for t in shorts if not t._ended) < 3:
                shorts.append(batcher.stream("Short one.", voice=voices["stereo"], preset="extreme",
                                             seed=len(shorts), max_mel_tokens=10))
                threading.Thread(target=lambda t=shorts[-1]: list(t), daemon=True).start()
            done.wait(0.002)

    feeder = threading.Thread(target=arrive)
    feeder.start()
    got = _audio(long_ticket)
    done.set()
    feeder.join()
    batcher.close()
    assert np.array_equal(got, alone)
    assert len(shorts) >= 4 and batcher.stats.requests == 2 + len(shorts)
    assert long_ticket.rounds <= 2 * rounds_alone, (long_ticket.rounds, rounds_alone)


def test_a_closed_ticket_leaves_at_the_next_round_and_frees_its_place(tiny_dir, voices, monkeypatch, one_thread):
    from indextts_fast import stages

    engine = Engine(tiny_dir)
    texts, real = [], stages.text_segments
    monkeypatch.setattr(stages, "text_segments", lambda m, text, *a: texts.append(text) or real(m, text, *a))
    batcher = Batcher(engine, max_active=1)
    first = batcher.stream("A long request. " * 8, voice=voices["prompt"], preset="extreme", seed=1,
                           max_text_tokens_per_segment=20, **SHORT)
    second = batcher.stream("Next.", voice=voices["prompt"], preset="extreme", seed=2, **SHORT)
    third = batcher.stream("Never mind.", voice=voices["prompt"], preset="extreme", seed=3, **SHORT)
    third.close()        # given up while it still waits: it never starts
    next(first)          # its first segment came out; then the client goes away
    first.close()
    assert len(list(second)) == 1 and list(first) == [] and list(third) == []
    batcher.close()
    assert batcher.stats.requests == 1 and batcher.load == (0, 0)
    assert "Never mind." not in texts and len(texts) == 2           # the third never ran a stage


def test_errors_reach_their_own_request_only(tiny_dir, voices, monkeypatch, one_thread):
    engine = Engine(tiny_dir)
    batcher = Batcher(engine, max_active=4)
    with pytest.raises(OptionError, match="got bytes"):
        batcher.stream(b"Hello", voice=voices["prompt"])           # checked when asked, before queueing
    with pytest.raises(OptionError, match="max_active"):
        Batcher(engine, max_active=0)
    ok = batcher.stream("Fine.", voice=voices["prompt"], preset="extreme", seed=1, **SHORT)
    bad = batcher.stream("Fine too.", voice=voices["prompt"].with_name("missing.wav"), preset="extreme", seed=1,
                         **SHORT)
    with pytest.raises(Exception, match="missing.wav"):
        list(bad)
    assert len(list(ok)) == 1
    batcher.close()
    with pytest.raises(OptionError, match="closed"):
        batcher.stream("Late.", voice=voices["prompt"])

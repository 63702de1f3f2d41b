"""Decoding: options validation, processors, the ancestry KV cache against full recomputation, the decoding
modes' contracts, stop handling and input errors. Golden parity of codes/scores is in test_parity_gpt.py."""

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from indextts_fast.decoding import (DecodingOptions, KVCache, MaxMelTokensWarning, decode_step, generate, prefill,
                                    trim_codes, _history)
from indextts_fast.sampling import process_scores
from indextts_fast.errors import OptionError
from indextts_fast.models.gpt import causal_attend, load_gpt


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_gpt(tiny_dir)


@pytest.fixture(scope="module")
def inputs(model):
    g = torch.Generator().manual_seed(1)
    spk = model.speaker_latent(torch.randn(1, 80, model.conditioning_input_dim, generator=g))
    emo = model.emovec(torch.randn(1, 60, model.conditioning_input_dim, generator=g))
    text = torch.randint(2, 12000, (9,), generator=g, dtype=torch.int32)
    return spk, text, emo


def test_options_defaults_are_infer_v2s():
    o = DecodingOptions()
    assert (o.num_beams, o.do_sample, o.top_p, o.top_k, o.temperature, o.repetition_penalty, o.length_penalty,
            o.max_mel_tokens, o.num_return_sequences) == (3, True, 0.8, 30, 0.8, 10.0, 0.0, 1500, 1)
    assert o.mode == "beam_sample" and o.min_tokens_to_keep == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.num_beams = 1


@pytest.mark.parametrize("field,value", [
    ("num_beams", 0), ("num_beams", 1.5), ("top_p", 1.5), ("top_p", -0.1), ("temperature", 0.0),
    ("temperature", -1.0), ("temperature", math.nan), ("top_k", -1), ("repetition_penalty", 0.0),
    ("length_penalty", math.inf), ("max_mel_tokens", 0), ("min_new_tokens", -1), ("do_sample", 1),
    ("num_return_sequences", 0), ("num_return_sequences", 4),
])
def test_options_reject_out_of_range(field, value):
    with pytest.raises(OptionError, match=f"DecodingOptions.{field}="):
        DecodingOptions(**{field: value})


def test_options_num_return_sequences_per_mode():
    with pytest.raises(OptionError, match="greedy"):
        DecodingOptions(num_beams=1, do_sample=False, num_return_sequences=2)
    assert DecodingOptions(num_beams=1, do_sample=True, num_return_sequences=3).mode == "sample"
    assert DecodingOptions(num_beams=4, do_sample=False, num_return_sequences=4).mode == "beam_search"


def test_repetition_penalty_hits_fake_prompt_ids(model):
    """Official quirk: codes 1 and 8192 are penalised from the first step (the fake prompt ids)."""
    scores = torch.full((1, 8194), 2.0)
    scores[0, 5] = -2.0
    hist = _history(torch.tensor([[5, 7]]), model.cfg)
    out = process_scores(scores, hist, DecodingOptions(num_beams=1, do_sample=False), 2, 8193)
    assert out[0, 1] == 0.2 and out[0, 8192] == 0.2 and out[0, 7] == 0.2 and out[0, 5] == -20.0
    assert out[0, 3] == 2.0
    forced = process_scores(scores, hist, DecodingOptions(num_beams=1, do_sample=False, min_new_tokens=3), 2, 8193)
    assert forced[0, 8193] == -math.inf


def _full_logits(model, prompt, valid, tokens):
    """Reference without cache: the whole [prompt; start; tokens] pass with the cached-path positions."""
    positions = torch.tensor([0] + list(range(2, len(tokens) + 2)))
    mel = model.embed_mel(torch.tensor([model.cfg.start_mel_token] + tokens), positions)
    x = torch.cat((prompt, mel.unsqueeze(0)), 1)
    n = x.shape[1]
    keys = F.pad(valid, (0, len(tokens) + 1), value=True)
    mask = torch.ones(n, n, dtype=torch.bool).tril() & (keys[None, :] | torch.eye(n, dtype=torch.bool))
    return model.head(model.gpt(x, causal_attend(model.cfg.heads, mask))[:, -1])[0]


@pytest.mark.parametrize("rows,text", [(1, [5, 77, 310]), (3, [5, 0, 77, 1, 310])])
def test_kv_cache_matches_full_recompute(model, inputs, rows, text):
    spk, _, emo = inputs
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        prompt, valid = model.prompt(spk, torch.tensor(text), emo)
        cache = KVCache(model, rows, capacity=2)             # small capacity: exercises growth
        logits = prefill(model, prompt, valid, cache).expand(rows, -1)
        histories = [[] for _ in range(rows)]
        for step in range(6):
            for r in range(rows):
                torch.testing.assert_close(logits[r], _full_logits(model, prompt, valid, histories[r]),
                                           atol=2e-5, rtol=1e-5)
            order = torch.randint(0, rows, (rows,), generator=g)    # beam reorder, with duplicates
            histories = [list(histories[i]) for i in order.tolist()]
            cache.reorder(order)
            tokens = torch.randint(0, 8192, (rows,), generator=g)
            for r in range(rows):
                histories[r].append(int(tokens[r]))
            logits = decode_step(model, cache, tokens, position=step + 2)


def test_text_start_stop_ids_dropped_in_generation(model, inputs):
    spk, text, emo = inputs
    opts = DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=6)
    dirty = torch.cat((text[:3], torch.tensor([0, 1], dtype=torch.int32), text[3:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaxMelTokensWarning)
        assert torch.equal(generate(model, spk, dirty, emo, opts).codes, generate(model, spk, text, emo, opts).codes)


def test_modes_shapes_seeds_and_max_tokens_warning(model, inputs):
    spk, text, emo = inputs
    with pytest.warns(MaxMelTokensWarning, match="max_mel_tokens=5"):
        greedy = generate(model, spk, text, emo, DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=5))
    assert greedy.codes.shape == (1, 5) and greedy.codes.dtype == torch.int64
    sample = DecodingOptions(num_beams=1, do_sample=True, num_return_sequences=2, max_mel_tokens=5)
    beam = DecodingOptions(num_beams=3, do_sample=True, num_return_sequences=2, max_mel_tokens=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaxMelTokensWarning)
        for opts in (sample, beam):
            a = generate(model, spk, text, emo, opts, torch.Generator().manual_seed(5))
            b = generate(model, spk, text, emo, opts, torch.Generator().manual_seed(5))
            assert a.codes.shape[0] == 2 and torch.equal(a.codes, b.codes)
        search = generate(model, spk, text, emo, DecodingOptions(num_beams=4, do_sample=False, max_mel_tokens=5,
                                                                 num_return_sequences=3))
    assert search.codes.shape[0] == 3 and search.codes.shape[1] <= 5


def test_min_new_tokens_forbids_the_stop_code(model, inputs):
    spk, text, emo = inputs
    saved = model.mel_head.bias.data[8193].clone()
    model.mel_head.bias.data[8193] += 30.0                   # make the stop code the favourite
    try:
        stop_first = generate(model, spk, text, emo, DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=4))
        with pytest.warns(MaxMelTokensWarning):
            forced = generate(model, spk, text, emo,
                              DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=4, min_new_tokens=4))
    finally:
        model.mel_head.bias.data[8193] = saved
    assert stop_first.codes.tolist() == [[8193]]
    assert forced.codes.shape == (1, 4) and not (forced.codes == 8193).any()
    codes, lens, hit = trim_codes(stop_first.codes, 8193)
    assert codes.shape == (1, 0) and lens.tolist() == [0] and not hit


def test_trim_codes():
    codes = torch.tensor([[4, 5, 8193, 8193], [6, 7, 8, 9]])
    cut, lens, hit = trim_codes(codes, 8193)
    assert cut.tolist() == codes.tolist() and lens.tolist() == [2, 4] and hit
    cut, lens, hit = trim_codes(codes[:1], 8193)
    assert cut.tolist() == [[4, 5]] and lens.tolist() == [2] and not hit
    with pytest.raises(OptionError, match="codes must be"):
        trim_codes(torch.tensor([4, 5]), 8193)


def test_generate_rejects_bad_inputs(model, inputs):
    spk, text, emo = inputs
    opts = DecodingOptions(num_beams=1, do_sample=False, max_mel_tokens=3)
    cases = [
        ((spk, torch.tensor([], dtype=torch.int32), emo, opts), "text_ids is empty"),
        ((spk, torch.tensor([[1, 2], [3, 4]]), emo, opts), "text_ids must be a 1-D integer"),
        ((spk, torch.tensor([1.0, 2.0]), emo, opts), "text_ids must be a 1-D integer"),
        ((spk, [5, 6], emo, opts), "text_ids must be a torch tensor"),
        ((spk[0], text, emo, opts), "spk_latent must have shape"),
        ((spk, text, emo[0], opts), "emovec must have shape"),
        ((spk, text, emo, {"num_beams": 1}), "options must be a DecodingOptions"),
        ((spk, text, emo, opts, 1234), "generator must be a torch.Generator"),
        ((spk, text, emo, DecodingOptions(max_mel_tokens=5000)), "max_mel_tokens=5000"),
        ((spk, torch.arange(2, 700), emo, opts), "more than the model's maximum 600"),
    ]
    for args, message in cases:
        with pytest.raises(OptionError, match=message):
            generate(model, *args)

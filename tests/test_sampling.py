"""Sampling: the processors' semantics, and the cheap paths giving torch's bits exactly — top-p sorting only the
finite scores, multinomial drawing through kernels/sampling.c — against torch's own operations (same indices, same
generator state afterwards), including the inputs where they must hand over to torch."""

import math

import pytest
import torch

from indextts_fast.kernels import portable
from indextts_fast.sampling import _top_p_tail, apply_top_k, apply_top_p, multinomial


def _top_p_by_full_sort(scores, top_p, min_keep):
    """The official formula (HF TopPLogitsWarper), as the reference."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -min_keep:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), -math.inf)


def test_top_k_keeps_ties_and_top_p_keeps_min_tokens():
    s = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(apply_top_k(s, 2)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(apply_top_k(s, 1, min_keep=2)).sum() == 3
    dominant = torch.tensor([[20.0, 0.0, 0.0, 0.0]])
    assert torch.isfinite(apply_top_p(dominant, 0.8)).sum() == 1
    assert torch.isfinite(apply_top_p(dominant, 0.8, min_keep=2)).sum() == 2


@pytest.mark.parametrize("seed", range(12))
def test_top_p_after_top_k_equals_the_full_sort(seed):
    g = torch.Generator().manual_seed(seed)
    rows, width = 1 + seed % 3, 8194
    scores = torch.log_softmax(torch.randn(rows, width, generator=g) * (0.5 + seed), dim=-1) / 0.8
    if seed % 4 == 1:
        scores[:, 8193] = -math.inf                  # min_new_tokens' stop mask
    kept = apply_top_k(scores, [30, 5, 1, 64][seed % 4], 2)
    if seed % 4 == 2:
        kept[0, :] = -math.inf                       # a row with fewer finite scores than another
        kept[0, 7] = 1.0
    top_p, min_keep = [0.8, 0.5, 0.99, 0.2][seed % 4], 1 + seed % 2
    assert _top_p_tail(kept, top_p, min_keep) is not None     # the short sort is the path under test
    assert torch.equal(apply_top_p(kept, top_p, min_keep), _top_p_by_full_sort(kept, top_p, min_keep))


def test_top_p_hands_ties_nan_and_dense_rows_to_the_full_sort():
    tied = torch.full((2, 4096), -math.inf)
    tied[:, :4] = torch.tensor([1.0, 0.5, 0.5, -1.0])
    nan = tied.clone()
    nan[0, 9] = math.nan
    dense = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0))
    for scores in (tied, nan, dense):
        assert _top_p_tail(scores, 0.8, 1) is None
        torch.testing.assert_close(apply_top_p(scores, 0.8, 1), _top_p_by_full_sort(scores, 0.8, 1),
                                   rtol=0, atol=0, equal_nan=True)


def _probs(seed, rows, width, positives=None, peaked=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, width, generator=g) * peaked
    if positives is not None:
        drop = torch.rand(rows, width, generator=g).argsort(dim=1)[:, positives:]
        logits.scatter_(1, drop, -math.inf)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("rows,width,k,positives", [
    (1, 24582, 6, 70), (1, 24582, 6, None), (3, 8194, 1, 24), (2, 8194, 1, None), (1, 300, 6, 4),
    (1, 300, 6, 6), (2, 777, 3, 2), (1, 5, 5, None), (1, 8194, 1, 1),
])
def test_multinomial_is_torchs_draw_and_leaves_the_generator_as_torch_does(rows, width, k, positives):
    if portable() is None:
        pytest.skip("no C kernels here: multinomial is torch.multinomial itself")
    for seed in range(6):
        probs = _probs(seed, rows, width, positives, peaked=1 + seed)
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for g in (ours, theirs):   # a generator part-way through its 624-word block, as in a real search
            torch.rand(97 * seed + 1, generator=g)
        for _ in range(3):
            assert torch.equal(multinomial(probs, k, ours), torch.multinomial(probs, k, generator=theirs))
            assert torch.equal(ours.get_state(), theirs.get_state())
        one_d = probs[0]
        assert torch.equal(multinomial(one_d, k, ours), torch.multinomial(one_d, k, generator=theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_multinomial_leaves_torchs_global_generator_to_torch():
    """None = torch's global generator, shared by every thread: torch draws (it locks the generator)."""
    probs = _probs(3, 1, 1000, 40)
    torch.manual_seed(5)
    expected = torch.multinomial(probs, 4)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    assert torch.equal(multinomial(probs, 4), expected) and torch.equal(torch.get_rng_state(), after)


@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "zero row"])
def test_multinomial_rejects_what_torch_rejects_without_drawing(bad):
    probs = _probs(1, 2, 50)
    probs[1, 3] = {"nan": math.nan, "inf": math.inf, "negative": -0.5, "zero row": 0.0}[bad]
    if bad == "zero row":
        probs[1] = 0.0
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    with pytest.raises(RuntimeError) as ours:
        multinomial(probs, 2, g)
    with pytest.raises(RuntimeError) as theirs:
        torch.multinomial(probs, 2, generator=torch.Generator().manual_seed(0))
    assert str(ours.value) == str(theirs.value)
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize("seed", range(10))
def test_top_k_then_top_p_in_one_selection_equals_the_two_steps(seed):
    from indextts_fast.options import DecodingOptions
    from indextts_fast.sampling import _top_k_top_p, process_scores

    g = torch.Generator().manual_seed(seed)
    rows = 1 + seed % 3
    scores = torch.log_softmax(torch.randn(rows, 8194, generator=g) * (0.3 + seed), dim=-1)
    history = torch.randint(0, 8194, (rows, 5 + seed), generator=g)
    o = DecodingOptions(num_beams=rows, do_sample=True, top_k=[30, 1, 50, 7][seed % 4], top_p=[0.8, 0.95, 0.3, 0.6][seed % 4],
                        temperature=[0.8, 1.0, 1.3][seed % 3], repetition_penalty=[10.0, 1.0][seed % 2])
    two_steps = apply_top_p(apply_top_k(scores / o.temperature, o.top_k, o.min_tokens_to_keep), o.top_p,
                            o.min_tokens_to_keep)
    assert _top_k_top_p(scores / o.temperature, o.top_k, o.top_p, o.min_tokens_to_keep) is not None
    assert torch.equal(_top_k_top_p(scores / o.temperature, o.top_k, o.top_p, o.min_tokens_to_keep), two_steps)
    ref = _top_p_by_full_sort(apply_top_k(process_scores(scores, history, DecodingOptions(
        num_beams=rows, do_sample=False, repetition_penalty=o.repetition_penalty), 1, 8193) / o.temperature,
        o.top_k, o.min_tokens_to_keep), o.top_p, o.min_tokens_to_keep)
    assert torch.equal(process_scores(scores, history, o, 1, 8193), ref)


def test_top_k_then_top_p_hands_ties_at_the_kth_score_to_the_two_steps():
    from indextts_fast.sampling import _top_k_top_p

    scores = torch.full((1, 4096), -5.0)
    scores[0, :10] = torch.arange(10.0)
    scores[0, 20] = 7.0                           # ties the 3rd largest: top-k keeps 4 scores, not 3
    assert _top_k_top_p(scores, 3, 0.9, 1) is None
    assert torch.isfinite(apply_top_k(scores, 3)).sum() == 4

"""The official logits processors and torch's multinomial draw, with the same bits, for a fraction of the work.

The processors (HF transformers 4.52.1 semantics, SPEC-gpt.md §9): repetition penalty, min-new-tokens, then
(sampling only) temperature, top-k, top-p. Two of torch's operations dominate a sampled decode step's choice
of codes (`indextts-fast bench sampling` times both ways per preset): the full sort of
`apply_top_p`, and the exponential draws of `torch.multinomial` (one per code and beam, each a double `log`).
Both have a cheaper equivalent whose result is bit-identical by construction, not merely close:

- Top-p after a top-k: the k kept scores per row are the full sort's ascending tail (every other entry is -inf,
  whose order cannot change the result), so `process_scores` takes them from ONE selection of the k + 1 largest
  (kernels/sampling.c), and the softmax runs on the very tensor the full sort would have produced (its running
  sum on the tail only: the -inf prefix adds exactly 0). Ties at the k-th score or among the kept, NaN, or a row
  with fewer than k finite scores take the official two steps (`apply_top_k`, then `apply_top_p`, which sorts
  only the finite scores when few are, else `sort_top_p`: the full sort).
- `multinomial(probs, k, generator)` is torch.multinomial without replacement: torch draws q ~ Exp(1) for
  every entry (`exponential_`: u = a double from two mt19937 outputs, q = float(-log(1 - u))) and takes the
  top k of probs / q. Entries of probability 0 give 0 whatever their draw, so kernels/sampling.c advances torch's
  generator state exactly as those draws would (the twist only) and takes the log only where the probability
  is positive; torch ranks the same ratio tensor it would have made: the same indices, the same generator
  state after (tested against torch.multinomial).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .kernels import ops
from .options import DecodingOptions

FAST_TOP_P_FRACTION = 8    # the short sort when every row keeps at most 1/8 of its entries finite


def apply_repetition_penalty(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Every id present in the row's history once: score < 0 -> score·p, else score / p."""
    picked = scores.gather(1, history)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, history, picked)


def apply_top_k(scores: torch.Tensor, top_k: int, min_keep: int = 1) -> torch.Tensor:
    """Scores strictly below the k'-th largest (k' = max(k, min_keep)) become -inf; ties are kept."""
    k = min(max(top_k, min_keep), scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, -math.inf)


def apply_top_p(scores: torch.Tensor, top_p: float, min_keep: int = 1) -> torch.Tensor:
    """Drop the tokens whose ascending cumulative probability is <= 1 - p, keeping the `min_keep` largest."""
    fast = _top_p_tail(scores, top_p, min_keep)
    return sort_top_p(scores, top_p, min_keep) if fast is None else fast


def sort_top_p(scores: torch.Tensor, top_p: float, min_keep: int = 1) -> torch.Tensor:
    """`apply_top_p` by the official formula: a full sort of every row (the reference; the fallback)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    remove = _top_p_remove(sorted_scores, top_p, min_keep)
    return scores.masked_fill(remove.scatter(1, order, remove), -math.inf)


def _top_p_remove(sorted_scores: torch.Tensor, top_p: float, min_keep: int, tail: int = 0) -> torch.Tensor:
    """Which sorted entries top-p drops; `tail` > 0: only the last `tail` (every entry before them is -inf, its
    probability 0: the running sum over them is 0, so the tail's own running sum is the same, tested)."""
    probs = sorted_scores.softmax(dim=-1)
    cumulative = (probs[:, -tail:] if tail else probs).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -min_keep:] = False
    return remove


def _top_p_tail(scores: torch.Tensor, top_p: float, min_keep: int):
    """`apply_top_p` sorting only the finite scores, or None where that could differ from the full sort."""
    if scores.dim() != 2 or top_p >= 1.0:
        return None
    width = scores.shape[-1]
    kept = int((scores > -math.inf).sum(-1).max())
    if kept == 0 or kept * FAST_TOP_P_FRACTION > width or bool(torch.isnan(scores).any()):
        return None
    tail, where = torch.topk(scores, kept, dim=-1, largest=True, sorted=True)
    tail, where = tail.flip(-1), where.flip(-1)                # ascending, as the sort's last `kept` entries
    finite = tail > -math.inf
    if bool(((tail[:, 1:] == tail[:, :-1]) & finite[:, 1:]).any()):
        return None                                            # tied scores: the sort's tie order decides
    return _top_p_of_tail(scores, tail, where, top_p, min_keep)


def _top_p_of_tail(scores: torch.Tensor, tail: torch.Tensor, where: torch.Tensor, top_p: float, min_keep: int):
    """Top-p of `scores` given every row's finite scores `tail` (ascending, as the sort's last entries; rows with
    fewer padded with -inf) at columns `where`: the softmax runs on the very tensor the full sort would give."""
    width, kept = scores.shape[-1], tail.shape[-1]
    sorted_scores = scores.new_full(scores.shape, -math.inf)
    sorted_scores[:, width - kept:] = tail
    remove = _top_p_remove(sorted_scores, top_p, min_keep, tail=kept)
    return scores.new_full(scores.shape, -math.inf).scatter_(1, where, tail.masked_fill(remove, -math.inf))


def process_scores(scores: torch.Tensor, history: torch.Tensor, options: DecodingOptions, generated: int,
                   stop_token: int) -> torch.Tensor:
    """The official processor list, in its order: repetition penalty, min-new-tokens, then (sampling only)
    temperature, top-k, top-p. `history`: the ids the penalty sees; `generated`: codes generated so far."""
    if options.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, history, options.repetition_penalty)
    if generated < options.min_new_tokens:
        scores = scores.clone()
        scores[:, stop_token] = -math.inf
    if options.do_sample:
        if options.temperature != 1.0:
            scores = scores / options.temperature
        both = _top_k_top_p(scores, options.top_k, options.top_p, options.min_tokens_to_keep) \
            if options.top_k != 0 and options.top_p < 1.0 else None
        if both is not None:
            return both
        if options.top_k != 0:
            scores = apply_top_k(scores, options.top_k, options.min_tokens_to_keep)
        if options.top_p < 1.0:
            scores = apply_top_p(scores, options.top_p, options.min_tokens_to_keep)
    return scores


def _top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float, min_keep: int):
    """apply_top_p(apply_top_k(scores, top_k, min_keep), top_p, min_keep) from one top-k selection: the k
    kept scores are the sort's tail top-p needs; None where that could differ (ties at the k-th score, a row
    with fewer than k finite scores, NaN, ties among the kept)."""
    width = scores.shape[-1]
    k = max(top_k, min_keep)
    if scores.dim() != 2 or k >= width or k * FAST_TOP_P_FRACTION > width:
        return None
    top = ops.top_scores(scores, k + 1)          # None: equal scores among the k + 1 largest, or NaN
    if top is None or not bool((top[0][:, k - 1] > -math.inf).all()):
        return None
    return _top_p_of_tail(scores, top[0][:, :k].flip(-1), top[1][:, :k].flip(-1), top_p, min_keep)


def multinomial(probs: torch.Tensor, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`torch.multinomial(probs, k, replacement=False, generator=generator)`: the same indices and the same
    generator state afterwards, the exponential draws' logs taken only where the probability is positive
    (kernels/sampling.c); torch's own call wherever the kernel does not take the input (its checks, its errors)
    and for torch's global generator (None), which other threads may draw from: torch locks it for a draw, our
    read-advance-write of its state could not. A generator of one's own must not be drawn from by two threads
    at once (the engine makes one per request)."""
    rows = probs.view(1, -1) if probs.dim() == 1 and probs.is_contiguous() else probs
    drawn = None if generator is None else ops.exponential_pick(rows, k, generator)
    if drawn is None:
        return torch.multinomial(probs, k, generator=generator)
    ratio, picked = drawn
    if picked is None:    # ties or too few positive entries: torch ranks the very tensor it would have made
        picked = ratio.argmax(dim=-1, keepdim=True) if k == 1 else torch.topk(ratio, k).indices
    return picked.view(-1) if probs.dim() == 1 else picked

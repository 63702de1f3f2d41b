"""Splitting a token list into segments synthesised one by one (official `split_segments`, SPEC-text.md 5)."""

from __future__ import annotations

import warnings
from typing import Sequence

from ..errors import OptionError

# Tokens that end a sentence. Official quirk: `▁!` is absent and `▁...` never occurs, so `!` after a space and
# ellipses never end a segment.
SENTENCE_TOKENS = (".", "!", "?", "▁.", "▁?", "▁...")
COMMA_TOKENS = (",", "▁,")
HYPHEN_TOKENS = ("-",)
QUOTE_TOKENS = ("'", "▁'")


def check_segment_options(max_tokens, quick_streaming_tokens) -> None:
    # Official: max 0 raises "range() arg 3 must not be zero", max < 0 silently drops every token.
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise OptionError(f"max_text_tokens_per_segment must be an integer >= 1, got {max_tokens!r}")
    if isinstance(quick_streaming_tokens, bool) or not isinstance(quick_streaming_tokens, int) \
            or quick_streaming_tokens < 0:
        raise OptionError(f"quick_streaming_tokens must be an integer >= 0, got {quick_streaming_tokens!r}")


def split_counting(tokens: Sequence[str], max_tokens: int, quick_streaming_tokens: int = 0,
                   ) -> tuple[list[list[str]], list[list[str]]]:
    """(segments, over-long pieces that were cut by length) — the official result and its warnings."""
    check_segment_options(max_tokens, quick_streaming_tokens)
    cuts: list[list[str]] = []
    return _split(list(tokens), SENTENCE_TOKENS, max_tokens, quick_streaming_tokens, cuts), cuts


def split_segments(tokens: Sequence[str], max_tokens: int = 120, quick_streaming_tokens: int = 0) -> list[list[str]]:
    """Segments of at most max_tokens tokens (one more when a quote follows a sentence end, as officially).

    A RuntimeWarning is issued for every piece that had to be cut by length, like the official code.
    """
    segments, cuts = split_counting(tokens, max_tokens, quick_streaming_tokens)
    for piece in cuts:
        warnings.warn(f"a text segment exceeds {max_tokens} tokens and was cut by length: {piece}",
                      RuntimeWarning, stacklevel=2)
    return segments


def _split(tokens: list[str], cut_at: tuple, max_tokens: int, quick: int, cuts: list) -> list[list[str]]:
    """One call of the official recursive routine with cut set `cut_at`."""
    pieces: list[list[str]] = []
    current: list[str] = []
    comma_cut = not any(t in cut_at for t in COMMA_TOKENS)
    hyphen_cut = "-" not in cut_at
    has_comma = has_hyphen = False  # whether `current` holds one (tracked instead of searched)
    for i, token in enumerate(tokens):
        current.append(token)
        has_comma = has_comma or token in COMMA_TOKENS
        has_hyphen = has_hyphen or token == "-"
        if comma_cut and has_comma:
            pieces.extend(_split(current, COMMA_TOKENS, max_tokens, quick, cuts))  # every comma ends a segment
        elif hyphen_cut and has_hyphen:
            pieces.extend(_split(current, HYPHEN_TOKENS, max_tokens, quick, cuts))  # so does every hyphen
        elif len(current) <= max_tokens:
            if token in cut_at and len(current) > 2:
                if i + 1 < len(tokens) and tokens[i + 1] in QUOTE_TOKENS:
                    # Quirk: the quote is appended here and still starts the next segment (duplicated).
                    current.append(tokens[i + 1])
                pieces.append(current)
                current = []
                has_comma = has_hyphen = False
            continue
        else:  # exactly max_tokens + 1: cut into [max_tokens] + [1]
            cuts.append(current)
            pieces.extend(current[j:j + max_tokens] for j in range(0, len(current), max_tokens))
        current = []
        has_comma = has_hyphen = False
    if current:
        pieces.append(current)
    return _merge(pieces, max_tokens, quick)


def _merge(pieces: list[list[str]], max_tokens: int, quick: int) -> list[list[str]]:
    """Join neighbours that fit in max_tokens once more than `quick` tokens were seen, or fit in max_tokens / 2."""
    merged: list[list[str]] = []
    seen = 0
    for piece in pieces:
        seen += len(piece)
        if not piece:
            continue
        if merged and len(merged[-1]) + len(piece) <= max_tokens and seen > quick:
            merged[-1] = merged[-1] + piece
        elif merged and len(merged[-1]) + len(piece) <= max_tokens / 2:
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return merged

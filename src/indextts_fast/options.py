"""Options that need no torch: the GPT's decoding options, validated once at the edge.

The CLI parses and validates every argument with this module, presets.py and plan.py before anything
heavy is imported (`indextts-fast --help` imports no torch; a test checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OptionError

SEED_MAX = 2 ** 63 - 1   # torch.Generator.manual_seed takes a signed 64-bit seed


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_seed(seed) -> int:
    """A request seed: an integer in [0, 2^63 - 1]; anything else is an OptionError naming it."""
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise OptionError(f"seed={seed!r} is invalid: expected an integer in [0, {SEED_MAX}]")
    return seed


@dataclass(frozen=True)
class DecodingOptions:
    """How codes are chosen. Defaults are infer_v2's (beam sampling with 3 beams).

    num_beams 1 + do_sample False: greedy; 1 + True: sampling; > 1 + False: beam search; > 1 + True: beam
    sampling. temperature/top_k/top_p only act when do_sample is True (as in HF generate). top_k 0 and
    top_p 1.0 disable those filters, repetition_penalty 1.0 and temperature 1.0 are no-ops.
    min_new_tokens: the stop code is forbidden while fewer codes exist (HF's MinNewTokensLengthLogitsProcessor).
    """

    num_beams: int = 3
    do_sample: bool = True
    top_p: float = 0.8
    top_k: int = 30
    temperature: float = 0.8
    repetition_penalty: float = 10.0
    length_penalty: float = 0.0
    max_mel_tokens: int = 1500
    num_return_sequences: int = 1
    min_new_tokens: int = 0

    def __post_init__(self):
        def bad(name: str, why: str):
            raise OptionError(f"DecodingOptions.{name}={getattr(self, name)!r} is invalid: {why}")

        if not _is_int(self.num_beams) or self.num_beams < 1:
            bad("num_beams", "expected an integer >= 1")
        if not isinstance(self.do_sample, bool):
            bad("do_sample", "expected True or False")
        if not _is_real(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            bad("top_p", "expected a number in [0, 1] (1.0 disables top-p)")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "expected an integer >= 0 (0 disables top-k)")
        if not _is_real(self.temperature) or self.temperature <= 0:
            bad("temperature", "expected a finite number > 0")
        if not _is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "expected a finite number > 0 (1.0 disables it)")
        if not _is_real(self.length_penalty):
            bad("length_penalty", "expected a finite number")
        if not _is_int(self.max_mel_tokens) or self.max_mel_tokens < 1:
            bad("max_mel_tokens", "expected an integer >= 1")
        if not _is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad("min_new_tokens", "expected an integer >= 0")
        if not _is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            bad("num_return_sequences", "expected an integer >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            bad("num_return_sequences", f"beam modes return at most num_beams={self.num_beams} hypotheses")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences != 1:
            bad("num_return_sequences", "greedy decoding returns exactly one sequence")

    @property
    def mode(self) -> str:
        if self.num_beams == 1:
            return "sample" if self.do_sample else "greedy"
        return "beam_sample" if self.do_sample else "beam_search"

    @property
    def min_tokens_to_keep(self) -> int:
        # HF: top-k/top-p keep at least 1 + (number of stop ids) = 2 tokens in beam modes, else 1.
        return 2 if self.num_beams > 1 else 1

"""TextFrontEnd: normalise, tokenise and segment a text exactly as official IndexTTS2 inference does."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Optional

from ..errors import OptionError
from .normalize import TextNormalizer
from .segment import split_segments
from .tokenize import UNK_ID, SentencePieceTokenizer, pretokenize
from .wetext import default_backend  # noqa: F401  (re-exported)


class UnknownTokensWarning(UserWarning):
    """The text contains characters the checkpoint's vocabulary cannot encode (they become id 2)."""


class TextFrontEnd:
    """The official text front end: `tokenize(text)` -> pieces, `encode(pieces)` -> ids, `split_segments`.

    Built on the checkpoint's bpe.model (ModelFolder.bpe_model); `from_folder` also loads the folder's
    glossary.yaml when there is one, as the official code does.
    """

    def __init__(self, bpe_model: str | Path, glossary: Optional[Mapping] = None, backend=None):
        self.tokenizer = SentencePieceTokenizer(bpe_model)
        self.normalizer = TextNormalizer(backend=backend, glossary=glossary)

    @classmethod
    def from_folder(cls, folder, backend=None) -> "TextFrontEnd":
        front = cls(folder.bpe_model, backend=backend)
        glossary = Path(folder.root) / "glossary.yaml"
        if glossary.is_file():
            front.normalizer.load_glossary_yaml(glossary)
        return front

    def load(self) -> "TextFrontEnd":
        """Load the normaliser's FSTs now instead of on the first text."""
        self.normalizer.backend
        return self

    def normalize(self, text: str) -> str:
        return self.normalizer.normalize(_checked(text))

    def tokenize(self, text: str) -> list[str]:
        """SentencePiece pieces of the text (the official `tokenize`)."""
        text = _checked(text)
        if not normalization_applies(text):
            # Official quirk: a single visible character skips normalisation and upper-casing.
            return self.tokenizer.pieces(text)
        return self.pieces(self.normalizer.normalize(text))

    def pieces(self, normalized: str) -> list[str]:
        """Pieces of an already normalised text: CJK pre-tokeniser (upper-casing), then SentencePiece."""
        return self.tokenizer.pieces(pretokenize(normalized))

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of the pieces (unknown pieces give id 2)."""
        return self.tokenizer.ids(tokens)

    def unknown_tokens(self, tokens: list[str]) -> list[str]:
        return [t for t, i in zip(tokens, self.encode(tokens)) if i == UNK_ID]

    def warn_unknown(self, tokens: list[str]) -> list[str]:
        """Issue an UnknownTokensWarning naming the pieces that map to the unknown id; return them."""
        unknown = self.unknown_tokens(tokens)
        if unknown:
            warnings.warn(f"text contains {len(unknown)} unknown token(s) (id {UNK_ID}): {unknown}; "
                          "they cannot be pronounced", UnknownTokensWarning, stacklevel=2)
        return unknown

    def split_segments(self, tokens: list[str], max_tokens: int = 120,
                       quick_streaming_tokens: int = 0) -> list[list[str]]:
        return split_segments(tokens, max_tokens, quick_streaming_tokens)

    def segments_for_synthesis(self, text: str, max_tokens: int = 120,
                               quick_streaming_tokens: int = 0) -> list[list[int]]:
        """Id lists to synthesise one after the other; refuses a text that yields no tokens.

        Warns (UnknownTokensWarning) about unknown tokens, as the official inference prints them.
        """
        tokens = self.tokenize(text)
        segments = self.split_segments(tokens, max_tokens, quick_streaming_tokens)
        if not tokens:
            raise OptionError(f"text yields no tokens (empty or only whitespace after normalisation): {text!r}")
        self.warn_unknown(tokens)
        return [self.encode(segment) for segment in segments]


def normalization_applies(text: str) -> bool:
    """False for the empty text and for one visible character, which the official tokenize passes on raw."""
    return len(text) != 0 and len(text.strip()) != 1


def _checked(text) -> str:
    if not isinstance(text, str):
        raise OptionError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise OptionError(f"text is not valid Unicode: unpaired surrogate {text[exc.start]!r} "
                          f"at index {exc.start}") from None
    return text

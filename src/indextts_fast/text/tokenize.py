"""From normalised text to SentencePiece pieces and ids, as the official TextTokenizer does (SPEC-text.md 3)."""

from __future__ import annotations

import re
from pathlib import Path

UNK_ID = 2
# Characters the official pre-tokeniser cuts out as words of their own (Hangul Jamo, CJK radicals to Yi,
# Hangul, compatibility ideographs, CJK compatibility forms, half-width forms, CJK extension B-...).
# Full-width ASCII forms (U+FF01-FF5E) are not among them.
_CJK_SPLIT = re.compile("([\u1100-\u11ff\u2e80-\ua4cf\ua840-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff65-\uffdc"
                        "\U00020000-\U0002ffff])")


def pretokenize(text: str) -> str:
    """Space out CJK characters and upper-case everything else (full Unicode `str.upper`, so `ß` -> `SS`)."""
    return " ".join(w.strip().upper() for w in _CJK_SPLIT.split(text.strip()) if w.strip())


class SentencePieceTokenizer:
    """The checkpoint's bpe.model (a Unigram model despite the name); pieces are upper-case words and CJK chars."""

    def __init__(self, model_path: str | Path):
        from sentencepiece import SentencePieceProcessor

        path = Path(model_path)
        if not path.is_file():
            from ..errors import ModelFolderError

            raise ModelFolderError(f"{path} not found: expected the SentencePiece text model (bpe.model)")
        self.path = path
        self.sp = SentencePieceProcessor(model_file=str(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def pieces(self, text: str) -> list[str]:
        return self.sp.Encode(text, out_type=str)

    def ids(self, pieces: list[str]) -> list[int]:
        """One PieceToId lookup per piece; pieces outside the vocabulary give the unknown id 2."""
        return [self.sp.PieceToId(p) for p in pieces]

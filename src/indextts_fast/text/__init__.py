"""The IndexTTS2 text front end: normalisation, SentencePiece tokenisation and segmentation, with exact parity
to the official implementation (see shared/reference/SPEC-text.md).

    front = TextFrontEnd(folder.bpe_model)           # or TextFrontEnd.from_folder(folder)
    tokens = front.tokenize("今天是2024年3月15日。")    # normalise + pre-tokenise + SentencePiece
    ids = front.encode(tokens)
    segments = front.split_segments(tokens, max_tokens=120, quick_streaming_tokens=0)
    id_segments = front.segments_for_synthesis(text)  # OptionError when the text yields no tokens
"""

from .frontend import TextFrontEnd, UnknownTokensWarning, default_backend
from .normalize import TextNormalizer
from .segment import split_segments
from .tokenize import UNK_ID, pretokenize

__all__ = ["TextFrontEnd", "TextNormalizer", "UnknownTokensWarning", "UNK_ID", "default_backend", "pretokenize",
           "split_segments"]

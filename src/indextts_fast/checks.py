"""Checks at the edge: what a request names (output files, text files), validated before anything heavy is
imported or loaded. Torch-free. Every failure is an OptionError of one line naming the problem."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OptionError

# extension -> (soundfile format, subtype) of what `SynthesisResult.save` writes
AUDIO_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
# tried, in this order, to name the encoding of a text file that is not UTF-8
LIKELY_ENCODINGS = ("gb18030", "big5", "shift_jis", "euc-kr", "utf-16")


def check_output_path(path: str | os.PathLike) -> Path:
    """An audio file we may write: a supported extension, not a folder, and a writable folder to hold it (made
    when missing, as `save` does) with no file standing where a folder must be."""
    path = Path(path)
    if path.suffix.lower() not in AUDIO_FORMATS:
        raise OptionError(f"cannot write {path}: choose a {', '.join(AUDIO_FORMATS)} file name "
                          f"(got {path.suffix or 'no extension'})")
    if path.is_dir():
        raise OptionError(f"cannot write {path}: it is a folder")
    folder = path.parent
    while not folder.exists():               # the nearest existing ancestor decides
        folder = folder.parent
    if not folder.is_dir():
        raise OptionError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OptionError(f"cannot write {path}: no permission to write in {folder}")
    return path


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a BOM is dropped); a file in another encoding is named with a guess."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise OptionError(f"cannot read text file {path}: it is a folder") from None
    except OSError as e:
        raise OptionError(f"cannot read text file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        guess = next((enc for enc in LIKELY_ENCODINGS if _decodes(data, enc)), None)
        hint = f"; it looks like {guess.upper()}: convert it with `iconv -f {guess.upper()} -t UTF-8`" if guess else ""
        raise OptionError(f"text file {path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}){hint}") \
            from None


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False

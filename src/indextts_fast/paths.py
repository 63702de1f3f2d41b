"""Where indextts-fast keeps its data (speaker registry, compiled kernels, random full-size models).

Imports nothing heavy: `mkl_vendor` needs it before torch is loaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOME_ENV = "INDEXTTS_FAST_HOME"


def default_store_dir() -> Path:
    """The data folder used when none is given: $INDEXTTS_FAST_HOME, else the user's cache folder +
    indextts-fast (~/.cache/indextts-fast on Linux, ~/Library/Caches/indextts-fast, %LOCALAPPDATA%\\...)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "indextts-fast"

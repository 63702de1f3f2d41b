"""indextts-fast: a fast, measured re-implementation of IndexTTS2 inference."""

__version__ = "0.1.0"

from . import cpu, mkl_vendor

cpu.apply_forced_tier()  # $INDEXTTS_FAST_CPU_TIER: torch/oneDNN/oneMKL/fbgemm limited to it (see cpu.py)
mkl_vendor.enable()  # before torch is loaded (see mkl_vendor.py)

from .errors import (  # noqa: F401, E402  (re-exported; after the set-up above, before torch loads)
    AudioError,
    CheckpointError,
    IndexTTSFastError,
    ModelFolderError,
    OptionError,
)

__all__ = ["AudioError", "CheckpointError", "IndexTTSFastError", "ModelFolderError", "OptionError", "__version__"]

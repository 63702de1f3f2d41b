"""Error types. Every error a user can provoke is one of these, with a message naming the problem."""


class IndexTTSFastError(Exception):
    """Base class of all errors raised on purpose by indextts-fast."""


class ModelFolderError(IndexTTSFastError):
    """A model folder, or a file in it, is missing or malformed."""


class CheckpointError(ModelFolderError):
    """A checkpoint's keys or shapes do not match the model built from the config."""


class OptionError(IndexTTSFastError, ValueError):
    """A request option or API argument is out of range or of the wrong shape."""


class AudioError(IndexTTSFastError, ValueError):
    """Audio that cannot be used: unreadable, empty, silent, too short, not finite."""

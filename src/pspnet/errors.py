"""The project's own error types: each message names the file or value, what was wrong and the fix."""


class PSPNetError(Exception):
    """Base class of every error pspnet raises on purpose."""


class DataError(PSPNetError, ValueError):
    """A dataset file is missing, unreadable or holds values the dataset does not allow."""


class ConfigError(PSPNetError, ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class WeightsError(PSPNetError, ValueError):
    """A weight file is unsafe, corrupt or does not fit the model."""


class TrainingError(PSPNetError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN/inf)."""


class UnsafePathError(PSPNetError, ValueError):
    """A path built from outside data (a URL, a catalogue, a config) would lie outside its folder."""


class MemoryBudgetError(PSPNetError, MemoryError):
    """A model or an image would need more memory than the budget (``--max-memory``) allows."""


class OutputError(PSPNetError, OSError):
    """An output file could not be written (disk full, read-only folder); nothing half-written is left."""

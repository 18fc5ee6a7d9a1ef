"""Exception tree of xearthformer.

Every error raised on purpose derives from :class:`XEarthformerError`, so callers can catch
all of them at once, and from the matching built-in (``ValueError``, ``TypeError``...), so
generic handlers keep working. Messages say what was found, what was expected, and the fix.
"""

from __future__ import annotations


class XEarthformerError(Exception):
    """Base class of all errors raised by xearthformer."""


class ShapeError(XEarthformerError, ValueError):
    """A tensor or array has the wrong shape, rank or dtype."""


class ConfigError(XEarthformerError, ValueError):
    """A model configuration, preset or pattern name is invalid."""


class DataError(XEarthformerError, ValueError):
    """Labelled input data cannot be used as given (missing dims/variables, NaNs, grid...)."""


class CheckpointError(XEarthformerError, ValueError):
    """A checkpoint or bundle is corrupt, untrusted, incompatible or of an unknown version."""


class ModelTypeError(XEarthformerError, TypeError):
    """An object of the wrong type was passed where a model bundle was expected."""


class DownloadError(XEarthformerError, OSError):
    """A user-requested download failed (offline, bad hash...)."""


class TrainingError(XEarthformerError, ArithmeticError):
    """Training produced non-finite numbers (a loss or gradient of NaN/inf): the run stops
    instead of writing a model whose every forecast is NaN."""


class XEarthformerWarning(UserWarning):
    """Warnings of xearthformer (a check skipped and why, a default adapted to the data...);
    filter them with ``warnings.filterwarnings("ignore", category=XEarthformerWarning)``."""

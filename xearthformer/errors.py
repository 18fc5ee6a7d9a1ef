"""Exception tree of xearthformer.

Every error raised on purpose derives from :class:`XEarthformerError`, so callers can catch
all of them at once, and from the matching built-in (``ValueError``, ``TypeError``...), so
generic handlers keep working. Messages say what was found, what was expected, and the fix.
"""

from __future__ import annotations


class XEarthformerError(Exception):
    """Base class of all errors raised by xearthformer.

    Examples
    --------
    Catch every error of the package at once:

    >>> import xearthformer as xef
    >>> try:
    ...     xef.EarthformerConfig(input_shape=(4, 16, 16, 1), target_shape=(2, 8, 16, 1))
    ... except xef.XEarthformerError as err:
    ...     print(type(err).__name__, "-", err)
    ConfigError - input and target must share H, W: input_shape=(4, 16, 16, 1), target_shape=(2, 8, 16, 1)
    """


class ShapeError(XEarthformerError, ValueError):
    """A tensor or array has the wrong shape, rank or dtype.

    Examples
    --------
    >>> import torch, xearthformer as xef
    >>> net = xef.Earthformer(xef.EarthformerConfig(input_shape=(4, 16, 16, 1),
    ...                                             target_shape=(2, 16, 16, 1), base_units=16))
    >>> net(torch.zeros(1, 3, 16, 16, 1))
    Traceback (most recent call last):
        ...
    xearthformer.errors.ShapeError: expected input of shape (N, 4, 16, 16, 1) (N, T, H, W, C), got (1, 3, 16, 16, 1); build the model with input_shape=(3, 16, 16, 1) to use it
    >>> issubclass(ShapeError, ValueError)
    True
    """


class ConfigError(XEarthformerError, ValueError):
    """A model configuration, preset or pattern name is invalid.

    Examples
    --------
    >>> import xearthformer as xef
    >>> xef.EarthformerConfig(input_shape=(4, 16, 16, 1), target_shape=(2, 8, 16, 1))
    Traceback (most recent call last):
        ...
    xearthformer.errors.ConfigError: input and target must share H, W: input_shape=(4, 16, 16, 1), target_shape=(2, 8, 16, 1)
    """


class DataError(XEarthformerError, ValueError):
    """Labelled input data cannot be used as given (missing dims/variables, NaNs, grid...).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xearthformer.layout import find_axes
    >>> find_axes(xr.DataArray(np.zeros(3), dims="x"))
    Traceback (most recent call last):
        ...
    xearthformer.errors.DataError: found no time axis; dims found: x (3). Expected a time coordinate ... Fix: rename your time dim to 'time' or set ds[dim].attrs['axis'] = 'T'.
    """


class CheckpointError(XEarthformerError, ValueError):
    """A checkpoint or bundle is corrupt, untrusted, incompatible or of an unknown version.

    Examples
    --------
    >>> import os, tempfile, xearthformer as xef
    >>> path = os.path.join(tempfile.mkdtemp(), "model.xef")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a bundle")
    >>> xef.load(path)
    Traceback (most recent call last):
        ...
    xearthformer.errors.CheckpointError: ...model.xef is not an xearthformer bundle (no valid safetensors header). ...
    """


class ModelTypeError(XEarthformerError, TypeError):
    """An object of the wrong type was passed where a model bundle was expected.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> from xearthformer.forecast import forecast
    >>> forecast(xr.DataArray(np.zeros(3), dims="x"), "model.xef")
    Traceback (most recent call last):
        ...
    xearthformer.errors.ModelTypeError: expected a xearthformer.Forecaster, got str. Train one with xearthformer.train(...) or load one with xearthformer.load('model.xef').
    >>> issubclass(ModelTypeError, TypeError)
    True
    """


class DownloadError(XEarthformerError, OSError):
    """A user-requested download failed (offline, bad hash...).

    Examples
    --------
    >>> import xearthformer as xef
    >>> try:                                                          # doctest: +SKIP
    ...     model = xef.pretrained("earthformer-enso")                # on a machine offline
    ... except xef.DownloadError as err:
    ...     print(err)                                                # says how to install it by hand
    >>> issubclass(DownloadError, OSError)
    True
    """


class TrainingError(XEarthformerError, ArithmeticError):
    """Training produced non-finite numbers (a loss or gradient of NaN/inf): the run stops
    instead of writing a model whose every forecast is NaN.

    Examples
    --------
    >>> import xearthformer as xef
    >>> try:                                                          # doctest: +SKIP
    ...     model = xef.train(sst, preset="tiny")
    ... except xef.TrainingError as err:                           # a loss or gradient became NaN/inf
    ...     print(err)                                            # names the step and what to change
    >>> issubclass(TrainingError, ArithmeticError)
    True
    """


class XEarthformerWarning(UserWarning):
    """Warnings of xearthformer (a check skipped and why, a default adapted to the data...);
    filter them with ``warnings.filterwarnings("ignore", category=XEarthformerWarning)``.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("a check was skipped", XEarthformerWarning)
    >>> caught[0].category.__name__, issubclass(XEarthformerWarning, UserWarning)
    ('XEarthformerWarning', True)
    """

"""Products users ask an ensemble for: exceedance probabilities and quantiles over members.

Both reduce the ``member`` dim and return CF-described variables that stay lazy on Dask:

* :func:`probability` gives ``P(x >= threshold)``, the fraction of members at or above the
  threshold, in units "1", named ``probability_of_<X>_above_threshold`` (X: the variable's
  standard_name, else its name), with a ``threshold`` coordinate in the data's units that
  carries the data's standard_name, and ``cell_methods`` ``realization: mean``: the layout
  the Met Office's IMPROVER post-processing uses. ``<X>_above_threshold`` is not in the CF
  standard-name table, so it is the variable's name and long_name, not a standard_name
  (compliance-checker would reject an unknown standard_name).
* :func:`quantile` gives member quantiles along a ``quantile`` coordinate; a quantile of a
  temperature is a temperature, so the variable keeps its attributes (units, standard_name).

>>> import numpy as np, xarray as xr
>>> ens = xr.DataArray(np.array([[1.0, 2.0, 3.0, 4.0]]), dims=("x", "member"), name="vil",
...                    attrs={"units": "kg m-2"})
>>> p = probability(ens, 2.5)
>>> p.name, p.values.tolist(), p.attrs["units"], p.threshold.attrs["units"]
('probability_of_vil_above_threshold', [0.5], '1', 'kg m-2')
>>> quantile(ens, [0.0, 1.0]).values.tolist()
[[1.0], [4.0]]
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import MEMBER, THRESHOLD, XArray, is_lazy, single_variable, to_xarray

#: how IMPROVER records which side of the threshold the probability is for
RELATIVE_TO_THRESHOLD = "greater_than_or_equal_to"
# attributes of the input that still describe an exceedance probability of it
_KEPT_FOR_PROBABILITY = ("grid_mapping", "coordinates", "cell_measures")


def _ensemble(obj: Any, member_dim: Hashable, what: str) -> XArray:
    obj = to_xarray(obj)
    if member_dim not in obj.dims:
        raise DataError(
            f"{what} needs an ensemble with a {member_dim!r} dim; the data has dims "
            f"{list(obj.dims)}. Pass member_dim=NAME, or forecast with members=..."
        )
    return obj


def _exceedance(ensemble: xr.DataArray, thresholds: xr.DataArray, member_dim: Hashable
               ) -> xr.DataArray:
    """Fraction of the members present (not NaN) at or above ``thresholds``; NaN where no
    member is present. The one formula behind :func:`probability`, the Brier score, the
    reliability diagram and the ROC."""
    present = ensemble.notnull()
    n = present.sum(member_dim)
    # NaN >= thr is False, so missing members are never counted as events
    return (ensemble >= thresholds).sum(member_dim) / n.where(n > 0)


def _probability_name(da: xr.DataArray) -> str:
    quantity = da.attrs.get("standard_name") or (str(da.name) if da.name is not None else "value")
    return f"probability_of_{quantity}_above_threshold"


def _threshold_coord(thr: xr.DataArray, da: xr.DataArray) -> dict[str, Any]:
    attrs = {"long_name": "threshold", "spp__relative_to_threshold": RELATIVE_TO_THRESHOLD}
    if "units" in da.attrs:
        attrs["units"] = da.attrs["units"]
    if "standard_name" in da.attrs:
        attrs["standard_name"] = da.attrs["standard_name"]
    return attrs


def probability(
    ensemble: Any,
    threshold: Any,
    member_dim: Hashable = MEMBER,
) -> XArray:
    """Exceedance probability ``P(x >= threshold)`` over the members of an ensemble.

    Parameters
    ----------
    ensemble
        DataArray (or a Dataset of one variable) with ``member_dim``.
    threshold
        A number (a scalar ``threshold`` coordinate) or a list (a ``threshold`` dim), in the
        data's units.
    member_dim
        The member dim (default ``member``).

    Returns
    -------
    Same type as ``ensemble``
        The fraction of members at or above the threshold (of the members present: NaN
        members are left out; NaN where all are missing), named
        ``probability_of_<X>_above_threshold``, units "1", ``cell_methods`` ending in
        ``realization: mean``; the ``threshold`` coordinate has the data's units and
        standard_name and ``spp__relative_to_threshold = "greater_than_or_equal_to"``.
        A Dataset keeps its global attributes. Lazy on Dask input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 1.0], [5.0, 6.0]]), dims=("x", "member"))
    >>> probability(ens, [1.0, 5.5]).transpose("threshold", "x").values.tolist()
    [[0.5, 1.0], [0.0, 0.5]]
    """
    from .categorical import _threshold_array

    obj = _ensemble(ensemble, member_dim, "probability()")
    da = single_variable(obj, "the ensemble")
    thr, _ = _threshold_array(threshold)
    prob = _exceedance(da, thr, member_dim)
    if THRESHOLD not in prob.dims:
        prob = prob.assign_coords({THRESHOLD: thr.astype(float)})
    prob[THRESHOLD].attrs = _threshold_coord(thr, da)
    prob[THRESHOLD].encoding["_FillValue"] = None  # CF: coordinate variables have no fill value
    name = _probability_name(da)
    prob = prob.rename(name)
    methods = " ".join(filter(None, [da.attrs.get("cell_methods", ""), "realization: mean"]))
    prob.attrs = {
        **{k: da.attrs[k] for k in _KEPT_FOR_PROBABILITY if k in da.attrs},
        "long_name": name,
        "units": "1",
        "cell_methods": methods,
        "comment": "fraction of the ensemble members with value >= threshold",
    }
    if isinstance(obj, xr.Dataset):
        out = prob.to_dataset()
        out.attrs = dict(obj.attrs)
        return out
    return prob


def quantile(
    ensemble: Any,
    q: Any,
    member_dim: Hashable = MEMBER,
    method: str = "linear",
) -> XArray:
    """Quantiles of an ensemble over its members.

    Parameters
    ----------
    ensemble
        DataArray or Dataset with ``member_dim``.
    q
        A quantile in [0, 1] (a scalar ``quantile`` coordinate) or a list (a ``quantile`` dim).
    method
        Interpolation between members, as in :meth:`xarray.DataArray.quantile` (default
        ``"linear"``, numpy's default). NaN members are skipped.

    Returns
    -------
    Same type as ``ensemble``
        With a ``quantile`` coordinate (units "1"); variables keep their attributes (units,
        standard_name); a Dataset keeps its global attributes. Lazy on Dask input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 1.0, 2.0, 3.0, 4.0]]), dims=("x", "member"))
    >>> quantile(ens, 0.5).values.tolist()
    [2.0]
    """
    obj = _ensemble(ensemble, member_dim, "quantile()")
    values = np.atleast_1d(np.asarray(q, dtype=float))
    if values.size == 0 or not np.all((values >= 0) & (values <= 1)):
        raise DataError(f"quantiles must lie in [0, 1]; got {np.asarray(q).tolist()}. "
                        "For percentiles divide by 100")
    if is_lazy(obj):  # xarray's quantile needs the reduced dim in one chunk
        obj = obj.chunk({member_dim: -1})
    with warnings.catch_warnings():  # NaN where every member is missing, as documented
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        out = obj.quantile(q, dim=member_dim, method=method, skipna=True, keep_attrs=True)
    out["quantile"].attrs = {"long_name": "quantile of the ensemble members", "units": "1"}
    out["quantile"].encoding["_FillValue"] = None  # CF: coordinate variables have no fill value
    if isinstance(out, xr.Dataset):
        out.attrs = dict(obj.attrs)
    return out


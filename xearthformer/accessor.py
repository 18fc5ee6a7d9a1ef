"""The ``.earthformer`` accessor on xarray Datasets and DataArrays.

A thin facade: every method hands its work to a plain, separately tested function in
:mod:`xearthformer.forecast`, :mod:`xearthformer.training` or :mod:`xearthformer.metrics`.
Nothing here does maths, and ``__init__`` cannot fail.

>>> import xearthformer  # registers the accessor
>>> fc = sst.earthformer.forecast(model, init=slice("2009", "2010"))   # doctest: +SKIP
>>> fc.earthformer.nino34_skill(sst)                                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import xarray as xr

if TYPE_CHECKING:  # pragma: no cover
    from .models.base import Forecaster


class EarthformerAccessor:
    """Forecasting and verification helpers available as ``obj.earthformer``."""

    def __init__(self, xarray_obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = xarray_obj

    # -- forecasting -------------------------------------------------------------------------
    def forecast(
        self,
        model: Any,
        init: Any = None,
        lead: int | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        **kwargs: Any,
    ) -> xr.Dataset:
        """Forecast from this data with a :class:`xearthformer.Forecaster`.

        See :func:`xearthformer.forecast.forecast` for the parameters.
        """
        from .forecast import forecast

        return forecast(
            self._obj, model, init=init, lead=lead, batch_size=batch_size, device=device, **kwargs
        )

    def ensemble(self, model: Any, *args: Any, **kwargs: Any) -> xr.Dataset:
        """An ensemble forecast (``member`` dim) from this data with a stochastic family's
        :class:`xearthformer.Forecaster`: ``ensemble(model, members=16, seed=0, init=None,
        lead=None, ...)``.

        See :func:`xearthformer.forecast.ensemble` for the parameters.
        """
        from .forecast import ensemble

        return ensemble(self._obj, model, *args, **kwargs)

    def fit(self, **kwargs: Any) -> Forecaster:
        """Train a Forecaster on this data; see :func:`xearthformer.train`."""
        from .training.labelled import train

        return train(self._obj, **kwargs)

    # -- verification ------------------------------------------------------------------------
    def csi(self, observed: xr.Dataset | xr.DataArray, thresholds: Any = None, pool: int | None = None,
            **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Critical success index of this forecast against ``observed``; see
        :func:`xearthformer.metrics.csi`."""
        from .metrics import csi

        return csi(self._obj, observed, thresholds=thresholds, pool=pool, **kwargs)

    def nino34(self, **kwargs: Any) -> xr.DataArray:
        """Nino3.4 index of this SST (observations or forecasts); see
        :func:`xearthformer.metrics.nino34_index`."""
        from .metrics import nino34_index

        return nino34_index(self._obj, **kwargs)

    def nino34_skill(self, observed: xr.Dataset | xr.DataArray, **kwargs: Any) -> xr.Dataset:
        """Nino3.4 correlation skill per lead (and C-Nino3.4-M/WM) of this forecast; see
        :func:`xearthformer.metrics.nino34_skill`."""
        from .metrics import nino34_skill

        return nino34_skill(self._obj, observed, **kwargs)

    def crps(self, observed: xr.Dataset | xr.DataArray, **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Continuous ranked probability score of this ensemble; see
        :func:`xearthformer.metrics.crps`."""
        from .metrics import crps

        return crps(self._obj, observed, **kwargs)

    def plot_by_lead(self, **kwargs: Any) -> Any:
        """Plot these scores against lead time; see :func:`xearthformer.metrics.plot_by_lead`."""
        from .metrics import plot_by_lead

        return plot_by_lead(self._obj, **kwargs)

    # -- ensemble products -------------------------------------------------------------------
    def probability(self, threshold: Any, **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Exceedance probability ``P(x >= threshold)`` over the members of this ensemble;
        see :func:`xearthformer.metrics.probability`."""
        from .metrics import probability

        return probability(self._obj, threshold, **kwargs)

    def quantile(self, q: Any, **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Quantiles over the members of this ensemble; see
        :func:`xearthformer.metrics.quantile`."""
        from .metrics import quantile

        return quantile(self._obj, q, **kwargs)


xr.register_dataset_accessor("earthformer")(EarthformerAccessor)
xr.register_dataarray_accessor("earthformer")(EarthformerAccessor)

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

        Examples
        --------
        >>> model = xearthformer.load("sst.xef")                             # doctest: +SKIP
        >>> fc = sst.earthformer.forecast(model, init=slice("2009", "2010"))  # doctest: +SKIP
        >>> fc.sst.dims                                                       # doctest: +SKIP
        ('init_time', 'lead_time', 'lat', 'lon')
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

        Examples
        --------
        >>> ens = radar.earthformer.ensemble(model, members=16, seed=0)   # doctest: +SKIP
        >>> ens.sizes["member"]                                           # doctest: +SKIP
        16
        >>> again = radar.earthformer.ensemble(model, members=[7])        # member 7 alone  # doctest: +SKIP
        """
        from .forecast import ensemble

        return ensemble(self._obj, model, *args, **kwargs)

    def fit(self, **kwargs: Any) -> Forecaster:
        """Train a Forecaster on this data; see :func:`xearthformer.train`.

        Examples
        --------
        >>> model = sst.earthformer.fit(variables="sst", context=6, lead=6)   # doctest: +SKIP
        >>> xearthformer.save(model, "sst.xef")                               # doctest: +SKIP
        """
        from .training.labelled import train

        return train(self._obj, **kwargs)

    # -- verification ------------------------------------------------------------------------
    def csi(self, observed: xr.Dataset | xr.DataArray, thresholds: Any = None, pool: int | None = None,
            **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Critical success index of this forecast against ``observed``; see
        :func:`xearthformer.metrics.csi`.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> fc = xr.DataArray(np.array([1.0, 5.0, 5.0]), dims="x")
        >>> float(fc.earthformer.csi(xr.DataArray(np.array([5.0, 5.0, 1.0]), dims="x"), thresholds=3.0))
        0.3333333333333333
        """
        from .metrics import csi

        return csi(self._obj, observed, thresholds=thresholds, pool=pool, **kwargs)

    def nino34(self, **kwargs: Any) -> xr.DataArray:
        """Nino3.4 index of this SST (observations or forecasts); see
        :func:`xearthformer.metrics.nino34_index`.

        Examples
        --------
        A seasonal cycle (no anomaly) plus 1 K in 2001: 2/3 K above the 2000-2002
        climatology in 2001, 1/3 K below it in the other years.

        >>> import numpy as np, pandas as pd, xarray as xr
        >>> time = pd.date_range("2000-01", periods=36, freq="MS")
        >>> t = 300.0 + np.cos(2 * np.pi * np.arange(36) / 12) + (time.year == 2001)
        >>> sst = xr.DataArray(np.broadcast_to(t[:, None, None], (36, 3, 5)), dims=("time", "lat", "lon"),
        ...                    coords={"time": time, "lat": [-5.0, 0.0, 5.0],
        ...                            "lon": [190.0, 210.0, 230.0, 250.0, 270.0]}, attrs={"units": "K"})
        >>> index = sst.earthformer.nino34()
        >>> round(index.sel(time="2001-06").item(), 2), round(index.sel(time="2000-06").item(), 2)
        (0.67, -0.33)
        """
        from .metrics import nino34_index

        return nino34_index(self._obj, **kwargs)

    def nino34_skill(self, observed: xr.Dataset | xr.DataArray, **kwargs: Any) -> xr.Dataset:
        """Nino3.4 correlation skill per lead (and C-Nino3.4-M/WM) of this forecast; see
        :func:`xearthformer.metrics.nino34_skill`.

        Examples
        --------
        >>> fc = sst.earthformer.forecast(model)                 # doctest: +SKIP
        >>> skill = fc.earthformer.nino34_skill(sst)             # doctest: +SKIP
        >>> float(skill.c_nino34_m)                              # doctest: +SKIP
        """
        from .metrics import nino34_skill

        return nino34_skill(self._obj, observed, **kwargs)

    def crps(self, observed: xr.Dataset | xr.DataArray, **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Continuous ranked probability score of this ensemble; see
        :func:`xearthformer.metrics.crps`.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> ens = xr.DataArray(np.array([[0.0, 1.0], [5.0, 6.0]]), dims=("x", "member"))
        >>> float(ens.earthformer.crps(xr.DataArray([0.0, 6.0], dims="x")))
        0.25
        """
        from .metrics import crps

        return crps(self._obj, observed, **kwargs)

    def plot_by_lead(self, **kwargs: Any) -> Any:
        """Plot these scores against lead time; see :func:`xearthformer.metrics.plot_by_lead`.

        Examples
        --------
        >>> import pandas as pd, xarray as xr
        >>> lead = pd.to_timedelta([1, 2, 3], "h")
        >>> scores = xr.DataArray([0.6, 0.4, 0.3], dims="lead_time", coords={"lead_time": lead}, name="csi")
        >>> ax = scores.earthformer.plot_by_lead()
        """
        from .metrics import plot_by_lead

        return plot_by_lead(self._obj, **kwargs)

    # -- ensemble products -------------------------------------------------------------------
    def probability(self, threshold: Any, **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Exceedance probability ``P(x >= threshold)`` over the members of this ensemble;
        see :func:`xearthformer.metrics.probability`.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> ens = xr.DataArray(np.array([[0.0, 1.0], [5.0, 6.0]]), dims=("x", "member"))
        >>> ens.earthformer.probability(5.5).values.tolist()
        [0.0, 0.5]
        """
        from .metrics import probability

        return probability(self._obj, threshold, **kwargs)

    def quantile(self, q: Any, **kwargs: Any) -> xr.Dataset | xr.DataArray:
        """Quantiles over the members of this ensemble; see
        :func:`xearthformer.metrics.quantile`.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> ens = xr.DataArray(np.array([[0.0, 1.0], [5.0, 6.0]]), dims=("x", "member"))
        >>> ens.earthformer.quantile(0.5).values.tolist()
        [0.5, 5.5]
        """
        from .metrics import quantile

        return quantile(self._obj, q, **kwargs)


xr.register_dataset_accessor("earthformer")(EarthformerAccessor)
xr.register_dataarray_accessor("earthformer")(EarthformerAccessor)

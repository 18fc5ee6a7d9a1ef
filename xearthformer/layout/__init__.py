"""Labelled xarray data <-> the model's (N, [M,] T, H, W, C) tensor layout, both directions.

A :class:`DataSpec` holds everything needed to use a model on labelled data except the
weights: which variables (and vertical levels) go in and come out, their normalisation,
static inputs and calendar features, the grid, the time step, context length and lead count.
:func:`fit_spec` builds one from training data; :func:`encode_inputs` /
:func:`encode_targets` cut normalised windows; :func:`decode` turns model output (with an
ensemble member axis M when asked) back into a labelled dataset on the input's own grid. CF attributes/encoding of the result are
:mod:`xearthformer.cf`'s job; this package produces the values, dims and coords.

Time convention: ``init_time`` is the time of the last context step; leads are 1..L steps
after it. Fixed steps give a timedelta ``lead_time``; calendar steps (months, years) give an
integer ``lead_time`` with ``units`` "months"/"years" (climpred's convention). ``valid_time``
is computed in the data's own calendar.

One module per job; this file only re-exports their public names:

- :mod:`.axes` -- find time/y/x/vertical axes and the grid mapping (cf-xarray)
- :mod:`.timeaxis` -- time steps, calendars, forecast time coordinates
- :mod:`.spec` -- the DataSpec/Channel/Grid dataclasses and their serialisation
- :mod:`.dataview` -- variables, channels, extra dims and laziness of a labelled dataset
- :mod:`.grid` -- reading a grid from data and matching data onto the model grid
- :mod:`.fit` -- fitting a DataSpec (normalisation statistics) to training data
- :mod:`.windows` -- usable init times and the time positions they need
- :mod:`.encoding` / :mod:`.decoding` -- labelled data -> tensors -> labelled forecast

>>> spec = fit_spec(sst, ["sst"], context=6, lead=3)                   # doctest: +SKIP
>>> inits = init_times(sst, spec)                                      # doctest: +SKIP
>>> x = encode_inputs(sst, spec, inits)            # (N, 6, H, W, C_in)  # doctest: +SKIP
>>> fc = decode(model_output, spec, inits, like=sst)                  # doctest: +SKIP
"""

from __future__ import annotations

from .axes import COMMON_NAMES, Axes, XArray, find_axes, find_coord
from .dataview import is_lazy
from .decoding import MEMBER_ATTRS, decode
from .encoding import encode_inputs, encode_targets, sample_dims
from .fit import fit_spec
from .spec import (
    CALENDAR_FEATURES,
    KEPT_ATTRS,
    NORMALIZATIONS,
    SPEC_VERSION,
    Channel,
    DataSpec,
    Grid,
    area_weights,
    coslat,
    target_mask,
)
from .timeaxis import CALENDAR_UNITS, FIXED_UNITS, TimeStep, add_steps, format_time, infer_step, time_coords
from .windows import init_times, required_time_slice, valid_windows

__all__ = [
    "CALENDAR_FEATURES",
    "CALENDAR_UNITS",
    "COMMON_NAMES",
    "FIXED_UNITS",
    "KEPT_ATTRS",
    "MEMBER_ATTRS",
    "NORMALIZATIONS",
    "SPEC_VERSION",
    "Axes",
    "Channel",
    "DataSpec",
    "Grid",
    "TimeStep",
    "XArray",
    "add_steps",
    "area_weights",
    "coslat",
    "decode",
    "encode_inputs",
    "encode_targets",
    "find_axes",
    "find_coord",
    "format_time",
    "fit_spec",
    "infer_step",
    "init_times",
    "is_lazy",
    "required_time_slice",
    "sample_dims",
    "target_mask",
    "time_coords",
    "valid_windows",
]

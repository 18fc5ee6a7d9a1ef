"""Import the official Earthformer weights (``earthformer`` 0.2.1, amazon-science) safely.

The ``sevir`` and ``enso`` presets of :class:`~xearthformer.models.earthformer.network.Earthformer` have
exactly the official module tree, so an official state_dict loads key for key (including the
``relative_position_index`` buffers, which are checked against the values they must have).
The importer never unpickles code: files are read with ``torch.load(weights_only=True)``.

Compatibility. For the same weights and input, outputs equal the official
``CuboidTransformerModel`` built from its v1 YAML to float32 round-off (tested to 1e-5 in
eval mode, also for other patterns, padding and global-vector settings). xearthformer
deliberately differs from the official code only off those paths:

* ``padding_type="ignore"`` with global vectors: the official global-to-local mask is in grid
  order while its keys are in cuboid order (it masks the wrong positions); xearthformer masks
  the padded ones.
* ``padding_type="nearest"``: the official code stretches the whole axis by nearest
  interpolation; xearthformer repeats the edge values.
* Cuboid attention with zero padding in *cross*-attention (a ``cross_KxK`` pattern on a
  grid that K does not divide) crashes in the official code; it works here.
* Patch merging also pads the time axis when needed (the official code skips padding when
  only T needs it, and then fails).

:func:`official_forecaster` (the family's official loader in
:mod:`xearthformer.models.registry`) wraps the model with the data description of the official
data set (:func:`official_spec`) into a :class:`~xearthformer.models.base.Forecaster`; the hub
and ``xearthformer convert official.pt out.xef --preset sevir|enso`` use it.

>>> model = load_official("earthformer_icarenso2021.pt", preset="enso")   # doctest: +SKIP
>>> model(x).shape                                                        # doctest: +SKIP
torch.Size([1, 14, 24, 48, 1])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ...errors import CheckpointError, ConfigError
from ..official_io import cast_like, check_index_buffers, check_state_dict, read_state_dict

if TYPE_CHECKING:  # pragma: no cover
    from ...layout import DataSpec
    from ..base import Forecaster
    from .network import Earthformer

OFFICIAL_PRESETS = ("sevir", "enso")
#: the one part an official Earthformer checkpoint has (hub entries and the convert command)
WEIGHTS = "weights"
_HINT = "Is it an official Earthformer checkpoint of that preset?"


def load_official(path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                  preset: str = "sevir") -> Earthformer:
    """Earthformer of an official preset, with the official weights.

    Parameters
    ----------
    path_or_state_dict
        A ``.pt`` file (the official pretrained checkpoints are plain state_dicts), a
        ``.safetensors`` file, or the state_dict itself. Lightning checkpoints (``state_dict`` with the
        ``torch_nn_module.`` prefix) are accepted too.
    preset
        ``"sevir"`` (earthformer_sevir.pt) or ``"enso"`` (earthformer_icarenso2021.pt).

    Returns
    -------
    Earthformer
        In eval mode, float32, on the CPU.

    Raises
    ------
    CheckpointError
        The file needs code to unpickle, or keys are missing/unexpected, or shapes differ
        (all named in the message).
    ConfigError
        Unknown preset.

    Examples
    --------
    The official ICAR-ENSO checkpoint, downloaded by hand:

    >>> net = load_official("earthformer_icarenso2021.pt", preset="enso")   # doctest: +SKIP

    A state_dict works as well; here a randomly initialised one stands in for the official
    weights (the keys and shapes are the official ones):

    >>> import xearthformer as xef
    >>> state = xef.Earthformer(xef.presets()["enso"]).state_dict()
    >>> net = load_official(state, preset="enso")
    >>> sum(p.numel() for p in net.parameters())           # the official model's count
    1394325
    """
    from .network import Earthformer

    if preset not in OFFICIAL_PRESETS:
        raise ConfigError(f"preset must be one of {OFFICIAL_PRESETS} (the official checkpoints), got {preset!r}")
    state = read_state_dict(path_or_state_dict)
    model = Earthformer.from_preset(preset)
    expected = model.state_dict()
    check_state_dict(state, expected, f"the official {preset!r} Earthformer", _HINT)
    check_index_buffers(model, state)
    model.load_state_dict(cast_like(state, expected), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- data description

def official_spec(preset: str) -> DataSpec:
    """The :class:`~xearthformer.layout.DataSpec` of an official preset's data set.

    ``sevir``: VIL (SEVIR pixel code 0-255) scaled by 1/255, 13 -> 12 frames at 5 minutes on
    the 384 x 384 patch of 1 km pixels. ``enso``: ICAR-ENSO SST anomalies (min-max scaled
    with the official constants), 12 -> 14 months on the 24 x 48 grid (lat -55..60,
    lon 95..330, 5 degrees).
    """
    import numpy as np

    from ...data.icar_enso import SST_MAX, SST_MIN
    from ...layout import Channel, DataSpec, Grid, TimeStep

    if preset == "sevir":
        # the official scalings map the full data range onto [0, 1]: that is the training range
        vil = Channel("vil", method="scale", offset=0.0, scale=255.0, range=(0.0, 1.0),
                      attrs={"units": "1", "long_name": "vertically integrated liquid (SEVIR pixel code)"})
        grid = Grid(y="y", x="x", y_values=np.arange(384), x_values=np.arange(384), lat=None, lon=None,
                    coord_attrs={"y": {"long_name": "pixel row (1 km pixels)", "units": "1"},
                                 "x": {"long_name": "pixel column (1 km pixels)", "units": "1"}})
        return DataSpec(inputs=(vil,), targets=(vil,), grid=grid, step=TimeStep(5, "minutes"),
                        context=13, lead=12)
    if preset == "enso":
        sst = Channel("sst", method="minmax", offset=SST_MIN, scale=SST_MAX - SST_MIN, range=(0.0, 1.0),
                      attrs={"units": "degC", "long_name": "sea surface temperature anomaly"})
        grid = Grid(y="lat", x="lon", y_values=np.arange(-55.0, 60.1, 5.0), x_values=np.arange(95.0, 330.1, 5.0),
                    lat="lat", lon="lon",
                    coord_attrs={"lat": {"standard_name": "latitude", "units": "degrees_north"},
                                 "lon": {"standard_name": "longitude", "units": "degrees_east"}})
        return DataSpec(inputs=(sst,), targets=(sst,), grid=grid, step=TimeStep(1, "months"),
                        context=12, lead=14)
    raise ConfigError(f"preset must be one of {OFFICIAL_PRESETS}, got {preset!r}")


def official_forecaster(files: Mapping[str, str | os.PathLike[str]], preset: str,
                        metadata: dict[str, Any] | None = None) -> Forecaster:
    """The registry's official loader: the official weights in ``files["weights"]`` as a
    Forecaster with the data description of the preset's data set (:func:`official_spec`).

    Used by :func:`xearthformer.hub.pretrained` and ``xearthformer convert``.
    """
    from ..base import Forecaster

    if WEIGHTS not in files:
        raise CheckpointError(f"an official Earthformer checkpoint is one file, part {WEIGHTS!r}; "
                              f"got parts {sorted(files)}.")
    model = load_official(files[WEIGHTS], preset=preset)
    return Forecaster(model, official_spec(preset), metadata=metadata)

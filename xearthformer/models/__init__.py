"""Model families behind one seam: what every family provides and the table that lists them.

- :mod:`.base` -- :class:`~.base.Forecaster` (a network + its data spec) and the
  :class:`~.base.ForecastModel` protocol every family's network implements
- :mod:`.registry` -- the one table of families (network, config, presets, default training
  objective, official loader) as lazy ``"module:attribute"`` strings
- :mod:`.config` -- the frozen-config base every family's config derives from
- :mod:`.keys` -- noise keys per (sample, member) and noise drawn key by key
- :mod:`.official_io` -- reading official checkpoints safely and checking their keys/shapes
- :mod:`.earthformer` -- the Earthformer family (config, network, official importer)

Nothing above this package branches on the family: it asks the registry. Importing this
package (or the registry) imports no torch.
"""

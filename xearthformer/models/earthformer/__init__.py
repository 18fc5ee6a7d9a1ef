"""The Earthformer family: :mod:`.config` (``EarthformerConfig`` and the presets),
:mod:`.network` (the ``Earthformer`` module) and :mod:`.official` (importing the official
``earthformer`` 0.2.1 weights and the data description of their data sets)."""

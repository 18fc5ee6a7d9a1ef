"""Family-neutral torch parts of cuboid-attention networks (no xarray, no model family).

- :mod:`.decomposition` -- cutting (T, H, W) into cuboids (local/dilated, shifts, padding)
- :mod:`.patterns` -- the named attention patterns (``axial``, ``cross_1x1``...)
- :mod:`.cuboid` -- cuboid self- and cross-attention, with global vectors
- :mod:`.layers` -- FFN, patch merging, upsampling, positional embeddings, conv stems/heads
- :mod:`.blocks` -- attention stacks and the hierarchical encoder/decoder, with their
  :class:`~.blocks.BlockOptions`

The model families in :mod:`xearthformer.models` (Earthformer, and PreDiff's UNet next) build
on these; nothing here imports from above.
"""

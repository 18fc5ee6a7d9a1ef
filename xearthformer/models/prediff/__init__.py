"""PreDiff (latent diffusion with an Earthformer core): its three networks on torch tensors.

* :class:`FrameVAE` - frame-by-frame KL autoencoder (official ``AutoencoderKL``);
* :class:`CuboidTransformerUNet` - the Earthformer-UNet noise predictor;
* :class:`NoisyCuboidTransformerEncoder` - the knowledge-alignment network;
* :class:`PreDiff` / :class:`PreDiffConfig` - the family behind the seam (:mod:`.family`):
  encode the context, sample the latent future with keyed noise, decode;

their configs and presets (:mod:`.config`), the VAE loss (:mod:`.vae_loss`) and strict
loaders of the official state_dicts (:mod:`.official`). All take and return channels-last
(N, T, H, W, C) tensors.

>>> from xearthformer.models.prediff import preset, FrameVAE
>>> vae_cfg, unet_cfg, align_cfg = preset("tiny")
>>> FrameVAE(vae_cfg).downsample_factor
4
"""

from .alignment import NoisyCuboidTransformerEncoder
from .config import PRESETS, AlignmentConfig, UNetConfig, VAEConfig, preset
from .family import PreDiff, PreDiffConfig
from .official import (
    load_official_alignment,
    load_official_prediff,
    load_official_unet,
    load_official_vae,
    load_strict,
)
from .unet import CuboidTransformerUNet
from .vae import FrameVAE, sample_posterior, split_moments
from .vae_loss import PatchDiscriminator, VAELoss, kl_divergence

__all__ = [
    "PRESETS",
    "AlignmentConfig",
    "CuboidTransformerUNet",
    "FrameVAE",
    "NoisyCuboidTransformerEncoder",
    "PatchDiscriminator",
    "PreDiff",
    "PreDiffConfig",
    "UNetConfig",
    "VAEConfig",
    "VAELoss",
    "kl_divergence",
    "load_official_alignment",
    "load_official_prediff",
    "load_official_unet",
    "load_official_vae",
    "load_strict",
    "preset",
    "sample_posterior",
    "split_moments",
]

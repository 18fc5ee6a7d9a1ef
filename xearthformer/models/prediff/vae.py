"""The PreDiff frame VAE: a KL-regularised convolutional autoencoder applied frame by frame.

The architecture is the official one (a diffusers-style ``AutoencoderKL`` copied into the
PreDiff repository): per level a down block of ResNet blocks (GroupNorm eps 1e-6, SiLU) and,
except at the last level, an asymmetric zero pad (right/bottom) + stride-2 3x3 conv; a mid
block of ResNet -> single-head self-attention -> ResNet; ``quant_conv`` (1x1) to the moments
(mean, log-variance); the decoder mirrors it with ``layers_per_block + 1`` ResNet blocks per
level, nearest upsampling + 3x3 conv, after ``post_quant_conv`` (1x1). The posterior
log-variance is clamped to [-30, 20]. Module names equal the official ones, so the SEVIR-LR
checkpoint (``pretrained_sevirlr_vae_8x8x64_v1.pt``) loads unchanged.

Tensors are channels-last sequences of frames, (N, T, H, W, C); every frame is coded on its
own. Frame sizes that are not multiples of the downsampling factor f are padded inside
:meth:`FrameVAE.encode` by repeating the last row/column (so the network sees the even sizes it
was trained on, and no artificial zero edge), giving latents of ``ceil(H / f) x ceil(W / f)``;
:meth:`FrameVAE.decode` returns ``(h * f, w * f)`` frames or crops them to ``size``, and
:meth:`FrameVAE.forward` returns the input's own size.

>>> import torch
>>> from xearthformer.models.prediff.config import preset
>>> vae = FrameVAE(preset("tiny")[0]).eval()
>>> x = torch.rand(2, 3, 30, 30, 1)                   # 30 is not a multiple of f = 4
>>> mean, logvar = vae.encode(x)
>>> mean.shape, vae(x).shape
(torch.Size([2, 3, 8, 8, 4]), torch.Size([2, 3, 30, 30, 1]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ShapeError
from .config import VAEConfig
from .layers import GroupNorm

__all__ = ["FrameVAE", "LOGVAR_RANGE", "sample_posterior", "split_moments"]

#: the official clamp of the posterior log-variance
LOGVAR_RANGE = (-30.0, 20.0)
_EPS = 1e-6  # GroupNorm eps everywhere in the official VAE


def split_moments(moments: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, logvar) of raw moments (..., 2 c) (channels last): the first c channels, and the
    last c clamped to :data:`LOGVAR_RANGE`, as the official ``DiagonalGaussianDistribution``.

    >>> split_moments(torch.tensor([0.5, -99.0]))
    (tensor([0.5000]), tensor([-30.]))
    """
    if moments.shape[-1] % 2:
        raise ShapeError(f"moments need an even number of channels (mean, logvar), got {tuple(moments.shape)}")
    mean, logvar = moments.chunk(2, dim=-1)
    return mean, logvar.clamp(*LOGVAR_RANGE)


def sample_posterior(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """A draw ``mean + exp(logvar / 2) * noise`` from the diagonal Gaussian posterior, with the
    caller's standard-normal ``noise`` (so seeds stay under the caller's control).

    >>> sample_posterior(torch.zeros(1), torch.zeros(1), torch.ones(1))
    tensor([1.])
    """
    if noise.shape != mean.shape or logvar.shape != mean.shape:
        raise ShapeError(f"mean {tuple(mean.shape)}, logvar {tuple(logvar.shape)} and noise {tuple(noise.shape)} "
                         "must have the same shape")
    return mean + torch.exp(0.5 * logvar) * noise


# ------------------------------------------------------------------------ building blocks (NCHW)

class ResnetBlock2D(nn.Module):
    """``x + conv2(SiLU(GN(conv1(SiLU(GN(x))))))``, with a 1x1 conv skip when channels change."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels, eps=_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(nn.Module):
    """Zero pad one row/column at the bottom/right, then a stride-2 3x3 conv (official)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H x W positions, pre-GroupNorm, with residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, eps=_EPS)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.proj_attn = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.query(y), self.key(y), self.value(y)
        scores = torch.baddbmm(torch.empty(b, h * w, h * w, dtype=q.dtype, device=q.device), q, k.transpose(1, 2),
                               beta=0, alpha=1 / math.sqrt(c))
        y = torch.bmm(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
        y = self.proj_attn(y).transpose(1, 2).reshape(b, c, h, w)
        return y + x


class MidBlock2D(nn.Module):
    """ResNet -> attention -> ResNet at the coarsest level (``attentions`` before ``resnets``,
    the official attribute order)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups)])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """Frames (B, C, H, W) -> 2 x latent_channels moments (B, 2c, H / f, W / f), before quant_conv."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < len(ch) - 1)
            for i in range(len(ch)))
        self.mid_block = MidBlock2D(ch[-1], g)
        self.conv_norm_out = GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    """Latents (B, c, h, w) (after post_quant_conv) -> frames (B, C_out, h * f, w * f)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < len(ch) - 1)
            for i in range(len(ch)))
        self.mid_block = MidBlock2D(ch[0], g)
        self.conv_norm_out = GroupNorm(g, ch[-1], eps=_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


# ----------------------------------------------------------------------------------- the VAE

def _frames(x: Tensor) -> Tensor:
    """(N, T, H, W, C) -> (N * T, C, H, W), N-major like the official ``(N T)`` (a view with
    channels-last strides: the convolutions' fast CPU path)."""
    n, t, h, w, c = x.shape
    return x.reshape(n * t, h, w, c).permute(0, 3, 1, 2)


def _sequences(y: Tensor, n: int) -> Tensor:
    """(N * T, C, H, W) -> (N, T, H, W, C)."""
    _, c, h, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(n, -1, h, w, c)  # (reshape copies: the result is contiguous)


class FrameVAE(nn.Module):
    """KL autoencoder of single frames, on (N, T, H, W, C) sequences.

    Parameters
    ----------
    config
        The architecture (:class:`~xearthformer.models.prediff.config.VAEConfig`), kept as
        ``vae.config``; ``VAEConfig()`` is the official SEVIR-LR VAE (84,499,393 parameters).

    Examples
    --------
    >>> vae = FrameVAE(VAEConfig(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
    ...                          norm_num_groups=8))
    >>> x = torch.rand(1, 2, 16, 16, 1)
    >>> mean, logvar = vae.encode(x)
    >>> z = sample_posterior(mean, logvar, torch.randn_like(mean))
    >>> vae.decode(z).shape
    torch.Size([1, 2, 16, 16, 1])
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    @property
    def downsample_factor(self) -> int:
        """f: a frame of H x W has a latent of ceil(H / f) x ceil(W / f)."""
        return self.config.downsample_factor

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (where the adversarial loss weighs its gradient)."""
        return self.decoder.conv_out.weight

    def latent_size(self, size: Sequence[int]) -> tuple[int, int]:
        """(h, w) of the latent of an (H, W) frame."""
        f = self.downsample_factor
        return (-(-int(size[0]) // f), -(-int(size[1]) // f))

    def _check(self, x: Tensor, channels: int, what: str) -> None:
        if x.dim() != 5 or x.shape[-1] != channels:
            raise ShapeError(f"{what} must be (N, T, H, W, {channels}) (channels last), got {tuple(x.shape)}")

    def moments(self, x: Tensor) -> Tensor:
        """Raw posterior moments (N, T, h, w, 2 c): mean, then the unclamped log-variance."""
        self._check(x, self.config.in_channels, "x")
        n, _, h, w, _ = x.shape
        f = self.downsample_factor
        frames = _frames(x)
        pad_h, pad_w = -h % f, -w % f
        if pad_h or pad_w:  # repeat the edge: no artificial zero border for the convolutions
            frames = F.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
        return _sequences(self.quant_conv(self.encoder(frames)), n)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar), each (N, T, h, w, latent_channels); logvar clamped to [-30, 20]."""
        return split_moments(self.moments(x))

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Frames (N, T, h * f, w * f, out_channels) from latents z (N, T, h, w, c), cropped to
        ``size`` = (H, W) when given (the size of the frames that were encoded)."""
        self._check(z, self.config.latent_channels, "z")
        n, _, h, w, _ = z.shape
        f = self.downsample_factor
        y = _sequences(self.decoder(self.post_quant_conv(_frames(z))), n)
        if size is None:
            return y
        big_h, big_w = int(size[0]), int(size[1])
        if not (h * f - f < big_h <= h * f and w * f - f < big_w <= w * f):
            raise ShapeError(f"size {tuple(size)} does not belong to latents of {h} x {w}: frames of H x W have "
                             f"latents of ceil(H / {f}) x ceil(W / {f})")
        return y[:, :, :big_h, :big_w]

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of ``x`` from the posterior mode (the mean), as the official forward."""
        mean, _ = self.encode(x)
        return self.decode(mean, size=x.shape[2:4])

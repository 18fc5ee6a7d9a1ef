"""Training loss of the frame VAE: reconstruction + KL, and an optional PatchGAN term.

As the official ``LPIPSWithDiscriminator`` with the SEVIR-LR settings (its perceptual weight is
0 there, so no LPIPS here): the reconstruction error (L1, or MSE) summed over pixels and
channels and the KL divergence to N(0, I) summed over latent elements, both divided by the
number of frames (the official loss sees a batch of frames), total = rec + kl_weight * KL
(kl_weight 1e-6). The official training reconstructs from a posterior *sample*.

The adversarial term (off by default) is the official one: a PatchGAN discriminator (3 strided
4x4 conv layers with BatchNorm, LeakyReLU 0.2, 64 base channels; 2,763,585 parameters for one
input channel), the hinge loss for the discriminator, ``-mean(D(recon))`` for the autoencoder
weighted adaptively by ``||grad rec|| / (||grad gan|| + 1e-4)`` at the decoder's last layer
(clamped to [0, 1e4], times ``disc_weight`` 0.5), switched on from step ``disc_start``.

>>> import torch
>>> loss_fn = VAELoss()
>>> x = torch.rand(2, 3, 8, 8, 1)
>>> mean, logvar = torch.zeros(2, 3, 2, 2, 4), torch.zeros(2, 3, 2, 2, 4)
>>> loss, logs = loss_fn(x, x, mean, logvar)     # perfect reconstruction, posterior N(0, I)
>>> float(loss)
0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, ShapeError

__all__ = ["PatchDiscriminator", "VAELoss", "hinge_d_loss", "kl_divergence"]

RECONSTRUCTIONS = ("l1", "mse")


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the first axis: (N,)."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``(mean(relu(1 - real)) + mean(relu(1 + fake))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (official ``NLayerDiscriminator``, key names ``main.*``) on
    (B, C, H, W) frames of at least 24 x 24 (3 layers), giving a map of real/fake logits."""

    def __init__(self, in_channels: int = 1, base_channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(base_channels * prev, base_channels * mult, 4, stride=2 if n < n_layers else 1,
                                 padding=1, bias=False),
                       nn.BatchNorm2d(base_channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # official weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _frames(x: Tensor) -> Tensor:
    """(N, T, H, W, C) -> (N * T, C, H, W)."""
    n, t, h, w, c = x.shape
    return x.reshape(n * t, h, w, c).permute(0, 3, 1, 2)


class VAELoss(nn.Module):
    """Loss of the frame VAE on (N, T, H, W, C) frames and (N, T, h, w, c) posteriors.

    Parameters
    ----------
    kl_weight
        Weight of the KL term (official 1e-6).
    reconstruction
        ``"l1"`` (official) or ``"mse"``.
    discriminator
        Add the adversarial term (builds a :class:`PatchDiscriminator` as ``self.discriminator``,
        to be trained with :meth:`discriminator_loss` and its own optimiser).
    disc_in_channels, disc_start, disc_weight, disc_factor
        Input channels of the discriminator, the step from which the term counts (official
        50001), the scale of the adaptive weight (0.5) and the factor once on (1.0).
    """

    def __init__(self, kl_weight: float = 1e-6, reconstruction: str = "l1", discriminator: bool = False,
                 disc_in_channels: int = 1, disc_start: int = 50001, disc_weight: float = 0.5,
                 disc_factor: float = 1.0) -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        if kl_weight < 0 or disc_weight < 0 or disc_factor < 0:
            raise ConfigError("kl_weight, disc_weight and disc_factor must be >= 0")
        self.kl_weight, self.reconstruction = kl_weight, reconstruction
        self.disc_start, self.disc_weight, self.disc_factor = disc_start, disc_weight, disc_factor
        self.discriminator = PatchDiscriminator(disc_in_channels) if discriminator else None

    def _disc_factor(self, step: int) -> float:
        return self.disc_factor if step >= self.disc_start else 0.0

    def adaptive_weight(self, rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
        """``||d rec / d last|| / (||d gan / d last|| + 1e-4)``, clamped to [0, 1e4], x disc_weight;
        0 where no gradient can be taken (evaluation without autograd)."""
        if not (torch.is_grad_enabled() and rec_loss.requires_grad and g_loss.requires_grad):
            return torch.zeros((), device=rec_loss.device)
        rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        weight = torch.clamp(rec_grad.norm() / (g_grad.norm() + 1e-4), 0.0, 1e4).detach()
        return weight * self.disc_weight

    def forward(self, x: Tensor, recon: Tensor, mean: Tensor, logvar: Tensor, step: int = 0,
                last_layer: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Autoencoder loss and detached logs (``rec_loss`` per pixel, ``kl_loss``, ``g_loss``, ``d_weight``).

        ``mask`` (1 = valid, 0 = ignore) broadcasts to ``x``; ``last_layer`` (the decoder's last
        weight, :attr:`FrameVAE.last_layer`) is needed once the adversarial term is on.
        """
        if x.shape != recon.shape or x.dim() != 5:
            raise ShapeError(f"x and recon must both be (N, T, H, W, C), got {tuple(x.shape)} and {tuple(recon.shape)}")
        if mean.shape != logvar.shape or mean.shape[:2] != x.shape[:2]:
            raise ShapeError(f"mean/logvar {tuple(mean.shape)}/{tuple(logvar.shape)} must be (N, T, h, w, c) of "
                             f"the same N, T as x {tuple(x.shape)}")
        frames = x.shape[0] * x.shape[1]
        if mask is not None:
            x, recon = x * mask, recon * mask
        err = (x - recon).abs() if self.reconstruction == "l1" else (x - recon).pow(2)
        rec = err.sum() / frames
        kl = kl_divergence(mean.flatten(0, 1), logvar.flatten(0, 1)).sum() / frames
        loss = rec + self.kl_weight * kl
        logs = {"rec_loss": err.detach().mean(), "nll_loss": rec.detach(), "kl_loss": kl.detach()}
        factor = self._disc_factor(step)
        if self.discriminator is not None and factor > 0.0:
            if last_layer is None:
                raise ConfigError("the adversarial term needs last_layer (the decoder's last weight, vae.last_layer)")
            g_loss = -self.discriminator(_frames(recon)).mean()
            d_weight = self.adaptive_weight(rec, g_loss, last_layer)
            loss = loss + d_weight * factor * g_loss
            logs.update(g_loss=g_loss.detach(), d_weight=d_weight.detach())
        logs["total_loss"] = loss.detach()
        return loss, logs

    def discriminator_loss(self, x: Tensor, recon: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the discriminator on real ``x`` and (detached) ``recon``, times the
        disc factor (0 before ``disc_start``)."""
        if self.discriminator is None:
            raise ConfigError("this VAELoss has no discriminator: build it with VAELoss(discriminator=True)")
        real = self.discriminator(_frames(x.detach()))
        fake = self.discriminator(_frames(recon.detach()))
        loss = self._disc_factor(step) * hinge_d_loss(real, fake)
        return loss, {"disc_loss": loss.detach(), "logits_real": real.detach().mean(),
                      "logits_fake": fake.detach().mean()}

"""A test-only stochastic model family that proves the seam: nothing outside the registry knows it.

``ToyNet`` forecasts every lead as the last input frame times a learnable scale, plus a
learnable sigma times keyed noise: ``y = scale * x[:, -1] + sigma * eps``, ``eps`` drawn per
(sample, member) from :class:`xearthformer.models.keys.KeyedNoise`. It trains with the shared
loop through its own objective (:class:`GaussianNLL`), saves and loads as a bundle, and
forecasts and ensembles through the accessor, exactly like Earthformer does.

Register it inside a test with ``register_family(TOY)`` (see ``tests/test_toy_family.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xearthformer.errors import ConfigError, ShapeError
from xearthformer.models.config import ModelConfig
from xearthformer.models.keys import KeyedNoise
from xearthformer.models.registry import Family
from xearthformer.training.objectives import Batch, LossTerms, WeightedObjective, point_weights


@dataclass(frozen=True)
class ToyConfig(ModelConfig):
    """Shapes (T, H, W, C) and the initial noise level."""

    input_shape: tuple[int, int, int, int]
    target_shape: tuple[int, int, int, int]
    init_sigma: float = 1.0

    def _validate(self) -> None:
        if self.input_shape[1:] != self.target_shape[1:]:
            raise ConfigError(f"the toy needs the same (H, W, C) in and out, got {self.input_shape} "
                              f"-> {self.target_shape}")


def presets() -> dict[str, ToyConfig]:
    return {"default": ToyConfig(input_shape=(2, 6, 6, 1), target_shape=(2, 6, 6, 1))}


class ToyNet(nn.Module):
    """``y = scale * (last input frame) + sigma * eps`` for every lead."""

    stochastic = True

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.ones(()))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(config.init_sigma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T_in, H, W, C) -> (N, 2, T_out, H, W, C): the Gaussian's mean and sigma."""
        if tuple(x.shape[1:]) != tuple(self.config.input_shape):
            raise ShapeError(f"expected (N, {self.config.input_shape}), got {tuple(x.shape)}")
        t_out = self.config.target_shape[0]
        mean = (self.scale * x[:, -1:]).expand(-1, t_out, -1, -1, -1)
        sigma = torch.exp(self.log_sigma).expand_as(mean)
        return torch.stack([mean, sigma], dim=1)

    def predict(self, x: torch.Tensor, *, keys: torch.Tensor | None = None, **sampling: Any) -> torch.Tensor:
        """(N, T_in, H, W, C) -> (N, M, T_out, H, W, C), member m of sample n from keys[n, m]."""
        try:
            temperature = float(sampling.pop("temperature", 1.0))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"ToyNet's temperature must be a number, got {err}") from err
        if sampling:
            raise ConfigError(f"ToyNet takes only the sampling option 'temperature', got {sorted(sampling)}")
        if keys is None:
            raise ConfigError("ToyNet is stochastic: predict needs keys (N, M)")
        params = self(x)
        n, m = keys.shape
        noise = KeyedNoise(keys).randn(params.shape[2:], device=x.device, dtype=x.dtype)
        noise = noise.reshape(n, m, *params.shape[2:])
        return params[:, 0, None] + temperature * params[:, 1, None] * noise


class GaussianNLL(WeightedObjective):
    """Negative log-likelihood of the targets under the toy's Gaussian, over valid points."""

    def __call__(self, model: nn.Module, batch: Batch) -> LossTerms:
        params = model(batch.x)
        mean, sigma = params[:, 0], params[:, 1]
        w = point_weights(batch.y, batch.mask, self.weights_on(batch.y.device))
        y = torch.where(w > 0, batch.y, torch.zeros((), device=batch.y.device))
        nll = 0.5 * math.log(2 * math.pi) + torch.log(sigma) + 0.5 * ((y - mean) / sigma) ** 2
        return LossTerms((nll * w).sum(), w.sum(), logs={"sigma": float(sigma.detach().mean())})


TOY = Family(
    name="toy",
    network="tests.toy_family:ToyNet",
    config="tests.toy_family:ToyConfig",
    presets="tests.toy_family:presets",
    objective="tests.toy_family:GaussianNLL",
    bundle_classes=("ToyNet",),
)

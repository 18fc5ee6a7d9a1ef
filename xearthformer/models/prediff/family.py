"""The PreDiff family behind the seam: encode the context, sample the latent future, decode.

:class:`PreDiffConfig` is the one config a PreDiff bundle stores: the data shapes (T, H, W, C),
the nested VAE and denoiser configs (as JSON dicts; the denoiser's latent shapes are derived
from the data shapes and the VAE), the noise schedule, the parameterisation, the default
sampler, which weights the bundle holds, and the alignment entries of knowledge control.

:class:`PreDiff` holds the networks as submodules ``vae`` (:class:`~.vae.FrameVAE`),
``denoiser`` (:class:`~.unet.CuboidTransformerUNet`) and ``alignments`` (an
``nn.ModuleDict``, one network per alignment entry), so its state_dict nests their weights by
those names. :meth:`PreDiff.predict` is the family's ``predict`` (see
:class:`~xearthformer.models.base.ForecastModel`):

1. the context frames are encoded once per sample (posterior mode, the official conditioning);
2. the M members of each of the N samples run as one batch of N * M latent chains;
3. the initial noise and every stochastic step's noise of member (n, m) come from its own
   generator, seeded by ``keys[n, m]`` alone (:class:`~xearthformer.models.keys.KeyedNoise`);
4. the clean latents are decoded frame by frame and cropped to the data grid (the VAE pads
   grids its factor does not divide by repeating the edge, see :mod:`.vae`).

>>> import torch
>>> net = PreDiff(presets()["tiny"].replace(input_shape=(2, 16, 16, 1), target_shape=(2, 16, 16, 1)))
>>> y = net.predict(torch.rand(3, 2, 16, 16, 1), keys=torch.arange(6).reshape(3, 2), steps=2)
>>> tuple(y.shape)
(3, 2, 2, 16, 16, 1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...diffusion import PREDICTIONS, SAMPLERS, NoiseSchedule, make_sampler, sample
from ...errors import ConfigError, ShapeError
from ..config import ModelConfig
from ..keys import KeyedNoise
from .alignment import NoisyCuboidTransformerEncoder
from .config import AlignmentConfig, UNetConfig, VAEConfig, preset
from .unet import CuboidTransformerUNet
from .vae import FrameVAE

__all__ = ["PreDiff", "PreDiffConfig", "WEIGHTS", "presets"]

#: what a bundle's denoiser weights are: the EMA average (our training's default) or the raw
#: last weights (the official release)
WEIGHTS = ("ema", "raw")
#: the sampling options :meth:`PreDiff.predict` takes
SAMPLING_OPTIONS = ("steps", "sampler", "eta", "progress", "guidance")

Shape = tuple[int, int, int, int]


def _official_schedule() -> dict[str, Any]:
    return NoiseSchedule("linear", 1000).to_dict()


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"PreDiffConfig.{what} must be JSON-able (dicts, lists, numbers, text): {err}") from err


def _shape(value: Any, what: str) -> Shape:
    ok = (isinstance(value, tuple) and len(value) == 4
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise ConfigError(f"PreDiffConfig.{what} must be 4 positive ints (T, H, W, C), got {value!r}")
    return value


@dataclass(frozen=True)
class PreDiffConfig(ModelConfig):
    """The PreDiff family's config (the one a bundle stores).

    Parameters
    ----------
    input_shape, target_shape : tuple of 4 int
        Data-space shapes (T_in, H, W, C) of the context and (T_out, H, W, C) of the forecast.
        Context and target frames are coded by the same VAE, so H, W and C are shared.
    vae : dict
        :class:`~.config.VAEConfig` fields; ``in_channels``/``out_channels`` are set to C.
    unet : dict
        :class:`~.config.UNetConfig` fields of the denoiser; ``input_shape``/``target_shape``
        are derived: (T, ceil(H / f), ceil(W / f), latent_channels) for the VAE's factor f.
    schedule : dict
        :meth:`~xearthformer.diffusion.NoiseSchedule.to_dict` of the training noise schedule
        (default: the official linear 1e-4..2e-2 over 1000 steps).
    prediction : str
        What the denoiser predicts: ``"eps"`` (official), ``"x0"`` or ``"v"``.
    sampler, steps, eta : str, int, float
        Default sampler (``"ddpm"``, ``"ddim"``, ``"dpm++2m"``), its number of denoiser
        evaluations (1..timesteps) and DDIM's eta.
    latent_scale : float
        Latents are multiplied by it before diffusion (and divided after sampling); 1.0 is the
        official (unscaled latents), :func:`~xearthformer.training.prediff.train_prediff` sets
        ``1 / std`` of the training latents (LDM's ``scale_by_std``).
    weights : str
        Which denoiser weights the bundle holds: ``"ema"`` or ``"raw"`` (see :data:`WEIGHTS`).
    alignments : tuple of dict
        Knowledge-control alignment networks, one JSON dict per network with at least
        ``"name"`` (its key in :attr:`PreDiff.alignments`) and ``"config"`` (an
        :class:`~.config.AlignmentConfig` dict); empty by default.

    Examples
    --------
    >>> cfg = presets()["tiny"].replace(input_shape=(4, 30, 30, 1), target_shape=(3, 30, 30, 1))
    >>> cfg.unet_config.input_shape, cfg.unet_config.target_shape       # 30 / 4 -> 8 (padded)
    ((4, 8, 8, 4), (3, 8, 8, 4))
    >>> PreDiffConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    input_shape: Shape
    target_shape: Shape
    vae: dict[str, Any] = field(default_factory=lambda: VAEConfig().to_dict())
    unet: dict[str, Any] = field(default_factory=lambda: UNetConfig().to_dict())
    schedule: dict[str, Any] = field(default_factory=_official_schedule)
    prediction: str = "eps"
    sampler: str = "dpm++2m"
    steps: int = 20
    eta: float = 0.0
    latent_scale: float = 1.0
    weights: str = "ema"
    alignments: tuple[dict[str, Any], ...] = ()

    def _validate(self) -> None:
        t_in, h, w, c = _shape(self.input_shape, "input_shape")
        t_out, *grid = _shape(self.target_shape, "target_shape")
        if (h, w, c) != tuple(grid):
            raise ConfigError(
                f"PreDiff codes context and target frames with one VAE, so they need the same (H, W, C); "
                f"got input_shape={self.input_shape}, target_shape={self.target_shape}. Fix: predict the "
                "input variables themselves (targets = inputs) without static or calendar channels.")
        for what in ("vae", "unet", "schedule"):
            if not isinstance(getattr(self, what), Mapping):
                raise ConfigError(f"PreDiffConfig.{what} must be a dict, got {type(getattr(self, what)).__name__}")
        # canonical JSON forms, so a config equals itself after a JSON round trip
        vae = VAEConfig.from_dict({**_json_copy(dict(self.vae), "vae"), "in_channels": c, "out_channels": c})
        f = vae.downsample_factor
        latent = (-(-h // f), -(-w // f), vae.latent_channels)
        unet = UNetConfig.from_dict({**_json_copy(dict(self.unet), "unet"),
                                     "input_shape": (t_in, *latent), "target_shape": (t_out, *latent)})
        schedule = NoiseSchedule.from_dict(_json_copy(dict(self.schedule), "schedule"))
        object.__setattr__(self, "vae", vae.to_dict())
        object.__setattr__(self, "unet", unet.to_dict())
        object.__setattr__(self, "schedule", schedule.to_dict())
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"PreDiffConfig.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        check_sampling(self.sampler, self.steps, self.eta, schedule.num_timesteps, "PreDiffConfig")
        scale = self.latent_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"PreDiffConfig.latent_scale must be a finite number > 0, got {scale!r}")
        object.__setattr__(self, "latent_scale", float(scale))
        if self.weights not in WEIGHTS:
            raise ConfigError(f"PreDiffConfig.weights must be one of {WEIGHTS} (EMA average or raw weights), "
                              f"got {self.weights!r}")
        object.__setattr__(self, "alignments", tuple(_alignment_entry(a, self.target_shape[0], latent)
                                                     for a in self.alignments))
        names = [a["name"] for a in self.alignments]
        if len(set(names)) != len(names):
            raise ConfigError(f"PreDiffConfig.alignments need distinct names, got {names}")

    def __hash__(self) -> int:  # (the nested dicts are not hashable themselves)
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def vae_config(self) -> VAEConfig:
        """The frame VAE's config."""
        return VAEConfig.from_dict(self.vae)

    @property
    def unet_config(self) -> UNetConfig:
        """The denoiser's config (latent shapes derived from the data shapes)."""
        return UNetConfig.from_dict(self.unet)

    def noise_schedule(self) -> NoiseSchedule:
        """The training noise schedule."""
        return NoiseSchedule.from_dict(dict(self.schedule))

    def without_dropout(self) -> PreDiffConfig:
        """Copy with the denoiser's dropouts off (the VAE has none)."""
        return self.replace(unet=self.unet_config.without_dropout().to_dict())


def _alignment_entry(entry: Any, t_out: int, latent: tuple[int, int, int]) -> dict[str, Any]:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) \
            or not isinstance(entry.get("config"), Mapping):
        raise ConfigError("each PreDiffConfig.alignments entry is a dict with a 'name' (text) and a "
                          f"'config' (AlignmentConfig dict), got {entry!r}")
    entry = _json_copy(dict(entry), "alignments")
    cfg = AlignmentConfig.from_dict(entry["config"])
    if tuple(cfg.input_shape) != (t_out, *latent):
        raise ConfigError(f"alignment {entry['name']!r} takes latents {tuple(cfg.input_shape)}, but this "
                          f"PreDiff's noisy latents are {(t_out, *latent)}; rebuild it for these shapes.")
    entry["config"] = cfg.to_dict()
    return entry


def check_sampling(sampler: Any, steps: Any, eta: Any, timesteps: int, what: str = "sampling") -> None:
    """ConfigError unless ``sampler`` is a known name, ``steps`` an int in 1..``timesteps``
    and ``eta`` a number in [0, 1]; each message says what is valid."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"{what}: unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ConfigError(f"{what}: steps must be an int in 1..{timesteps} (the model's training "
                          f"timesteps), got {steps!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ConfigError(f"{what}: eta must be a number in [0, 1] (DDIM only; 0: deterministic), got {eta!r}")


def _guided(guidance: Any, net: PreDiff, denoise: Any, chain: Any, x: Tensor, cond: Tensor) -> Any:
    """Knowledge control's hook (:mod:`.knowledge`): the guided denoiser."""
    from .knowledge import Guidance

    if not isinstance(guidance, Guidance):
        raise ConfigError(f"guidance= takes a knowledge.Guidance (prepare_guidance), got {type(guidance).__name__}; "
                          "to steer an ensemble pass control={'n': 2} to ds.earthformer.ensemble instead.")
    return guidance.wrap(net, denoise, chain, x, cond)


def presets() -> dict[str, PreDiffConfig]:
    """The PreDiff presets (see :mod:`.config`): ``"sevirlr"`` (official SEVIR-LR, 7 -> 6 frames
    of 128 x 128 x 1, raw weights) and ``"tiny"`` (CPU: 7 -> 6 frames of 48 x 48 x 1).

    >>> sorted(presets())
    ['sevirlr', 'tiny']
    """
    out = {}
    for name, frames, weights in (("sevirlr", 128, "raw"), ("tiny", 48, "ema")):
        vae, unet, _ = preset(name)
        out[name] = PreDiffConfig(input_shape=(7, frames, frames, 1), target_shape=(6, frames, frames, 1),
                                  vae=vae.to_dict(), unet=unet.to_dict(), weights=weights)
    return out


class PreDiff(nn.Module):
    """Latent diffusion forecaster: frame VAE + Earthformer-UNet denoiser (+ alignment networks).

    Parameters
    ----------
    config : PreDiffConfig
        Kept as ``.config``.

    Attributes
    ----------
    vae : FrameVAE
    denoiser : CuboidTransformerUNet
    alignments : nn.ModuleDict
        One :class:`~.alignment.NoisyCuboidTransformerEncoder` per ``config.alignments`` entry.
    schedule : NoiseSchedule
        The training noise schedule (not a module: its tensors are derived, never saved).

    Examples
    --------
    >>> net = PreDiff(presets()["tiny"])
    >>> sorted(name for name, _ in net.named_children())
    ['alignments', 'denoiser', 'vae']
    """

    stochastic = True

    def __init__(self, config: PreDiffConfig) -> None:
        super().__init__()
        if not isinstance(config, PreDiffConfig):
            raise ConfigError(f"PreDiff takes a PreDiffConfig, got {type(config).__name__}")
        self.config = config
        self.vae = FrameVAE(config.vae_config)
        self.denoiser = CuboidTransformerUNet(config.unet_config)
        self.alignments = nn.ModuleDict({
            a["name"]: NoisyCuboidTransformerEncoder(AlignmentConfig.from_dict(a["config"])) for a in config.alignments})
        self.schedule = config.noise_schedule()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PreDiff:
        """The network of a preset (``"tiny"``, ``"sevirlr"``) with some config fields replaced."""
        table = presets()
        if name not in table:
            raise ConfigError(f"unknown PreDiff preset {name!r}; valid: {', '.join(table)}")
        return cls(table[name].replace(**overrides) if overrides else table[name])

    def forward(self, z_t: Tensor, t: Tensor | int, cond: Tensor) -> Tensor:
        """The denoiser's prediction (N, T_out, h, w, c) for noisy scaled latents ``z_t`` at
        diffusion times ``t`` given the scaled latent context ``cond`` (what training calls:
        under DistributedDataParallel only a call of the module synchronises gradients)."""
        return self.denoiser(z_t, t, cond)

    # ------------------------------------------------------------------ latents
    def encode_context(self, x: Tensor) -> Tensor:
        """Scaled latent context (N, T_in, h, w, c): the VAE posterior mode of each frame."""
        self._check_input(x)
        mean, _ = self.vae.encode(x)
        return mean * self.config.latent_scale

    def decode_latents(self, z: Tensor) -> Tensor:
        """Frames (N, T_out, H, W, C) on the data grid from scaled latents (N, T_out, h, w, c)."""
        return self.vae.decode(z / self.config.latent_scale, size=self.config.target_shape[1:3])

    def _check_input(self, x: Tensor) -> None:
        want = tuple(self.config.input_shape)
        if not isinstance(x, Tensor) or x.dim() != 5 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"PreDiff input must be (N, {', '.join(map(str, want))}) (N, T, H, W, C), got {got}; "
                             f"build the model with input_shape={got[1:] if isinstance(got, tuple) else '...'}")
        if not x.is_floating_point():
            raise ShapeError(f"PreDiff input must be a floating-point tensor, got dtype {x.dtype}")

    # ------------------------------------------------------------------ sampling
    def predict(self, x: Tensor, *, keys: Tensor | None = None, steps: int | None = None,
                sampler: str | None = None, eta: float | None = None, progress: bool | None = None,
                guidance: Any = None, **sampling: Any) -> Tensor:
        """Ensemble members (N, M, T_out, H, W, C) of the future of ``x`` (N, T_in, H, W, C).

        Parameters
        ----------
        x : Tensor
            Normalised context frames.
        keys : Tensor
            (N, M) int64 noise keys (:func:`xearthformer.models.keys.make_keys`): member m of
            sample n draws its initial noise and every stochastic step's noise from ``keys[n, m]``.
        steps, sampler, eta : optional
            Denoiser evaluations (1..timesteps), sampler name (``"ddpm"``, ``"ddim"``,
            ``"dpm++2m"``) and DDIM's eta; defaults from the config.
        progress : bool, optional
            Progress bar over the sampler's steps (None: on a terminal).
        guidance : Guidance, optional
            Knowledge control (:func:`~.knowledge.prepare_guidance`; ``ensemble(control=...)``
            makes it): every step's denoiser output is shifted toward its targets.

        Raises
        ------
        ConfigError
            No keys, an unknown sampler or option (the message lists the valid ones), steps out
            of range, eta given for a sampler other than DDIM.
        ShapeError
            ``x`` or ``keys`` of the wrong shape.

        Examples
        --------
        >>> net = PreDiff(presets()["tiny"])                                    # doctest: +SKIP
        >>> net.predict(x, keys=make_keys(0, inits, 0, 8), sampler="ddim", steps=10)  # doctest: +SKIP
        """
        if sampling:
            raise ConfigError(f"PreDiff takes the sampling options {', '.join(SAMPLING_OPTIONS)}; got unknown "
                              f"{sorted(sampling)}")
        if keys is None:
            raise ConfigError("PreDiff is stochastic: predict needs keys=(N, M) int64 noise keys "
                              "(xearthformer.models.keys.make_keys), or use ds.earthformer.ensemble/forecast.")
        cfg = self.config
        name = cfg.sampler if sampler is None else sampler
        n_steps = cfg.steps if steps is None else steps
        if eta is not None and name != "ddim":
            raise ConfigError(f"eta is an option of the 'ddim' sampler only, not of {name!r}; drop eta or "
                              "use sampler='ddim'.")
        eta = cfg.eta if eta is None else eta
        check_sampling(name, n_steps, eta, self.schedule.num_timesteps)
        self._check_input(x)
        keys = torch.as_tensor(keys)
        if keys.dim() != 2 or keys.shape[0] != x.shape[0] or keys.dtype not in (torch.int64, torch.int32):
            raise ShapeError(f"keys must be an (N, M) integer tensor with N = {x.shape[0]} (one per sample and "
                             f"member), got {tuple(keys.shape)} {keys.dtype}")
        n, m = keys.shape
        options = {"eta": float(eta)} if name == "ddim" else {}
        chain = make_sampler(name, self.schedule, int(n_steps), cfg.prediction, **options)
        cond = self.encode_context(x).repeat_interleave(m, dim=0)  # once per sample; members share it
        noise = KeyedNoise(keys)  # rows in C order: (n, m) -> n * M + m, as repeat_interleave
        latent = tuple(cfg.unet_config.target_shape)

        def draw(shape: torch.Size) -> Tensor:
            return noise.randn(shape[1:], device=x.device, dtype=x.dtype)

        def denoise(z_t: Tensor, t: Tensor) -> Tensor:
            return self(z_t, t, cond)

        if guidance is not None:
            denoise = _guided(guidance, self, denoise, chain, x, cond)
        z = sample(denoise, draw((n * m, *latent)), chain, noise_fn=draw, progress=progress)
        y = self.decode_latents(z)
        return y.reshape(n, m, *y.shape[1:])

    def inference_bytes_per_sample(self) -> int:
        """Peak bytes one (sample, member) pair adds to an inference pass (the memory planner's
        estimate, :func:`xearthformer.memory.activation_bytes`).

        The largest of three phases: the denoiser's attention blocks at level 0 (``128 B`` per
        value of the (T_in + T_out) x h x w x base_units tokens, as Earthformer's estimate),
        and the VAE's encoder and decoder, whose first/last level runs at full resolution
        (``24 B`` per value of T x H_pad x W_pad x block_out_channels[0]) and whose mid-block
        attention holds (h w)^2 scores per frame; plus ``64 B`` per input and output value. The
        factors were fitted to the peak resident memory of one 1-step pass measured on the CPU
        (batches of 8, torch 2.13): the estimate was 1.0-1.2x the measurement on the tiny and
        sevirlr presets at 30-128 pixels (``benchmarks/bench_memory.py --family prediff``).
        """
        cfg = self.config
        t_in, t_out = cfg.input_shape[0], cfg.target_shape[0]
        _, h, w, _ = cfg.unet_config.input_shape
        f = self.vae.downsample_factor
        ch0 = cfg.vae_config.block_out_channels[0]
        body = 128 * (t_in + t_out) * h * w * cfg.unet_config.base_units
        vae = max(t_in, t_out) * (24 * (h * f) * (w * f) * ch0 + 8 * (h * w) ** 2)
        io = math.prod(cfg.input_shape) + math.prod(cfg.target_shape)
        return int(max(body, vae) + 64 * io)

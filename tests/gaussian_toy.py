"""Gaussian data, whose optimal denoiser and the samplers' exact output moments are known.

Data x0 ~ N(MU, diag(S^2)). Under the forward process x_t = a x0 + sigma eps (a = sqrt(alpha_bar_t),
sigma = sqrt(1 - alpha_bar_t)) every dim is Gaussian, and the optimal (MSE) denoiser is linear:

    E[x0 | x_t]  = MU + k_t (x_t - a MU),   k_t = a S^2 / (a^2 S^2 + sigma^2)
    E[eps | x_t] = (x_t - a E[x0 | x_t]) / sigma,    E[v | x_t] = a E[eps | x_t] - sigma E[x0 | x_t]

With it, each sampler is a linear map of its Gaussian inputs, so its output is Gaussian with a
mean and variance computable in float64 without running it. The references below are derived
independently of the sampler code (geometry and Gaussian conditioning, not the samplers'
coefficient formulas), so a sampler agreeing with them within sampling error is correct, and
their distance from the data moments is the sampler's discretization bias.

All samplers preserve the mean exactly (E[output] = MU) when started from the exact marginal
q(x_{T-1}) = N(a_{T-1} MU, a^2 S^2 + sigma^2), which the tests use: with x_T ~ N(0, I) instead,
the schedule's alpha_bar_{T-1} = 7.3e-4 > 0 leaves a bias of about a_{T-1} MU times the
sampler's gain (~4 standard errors for the ODE samplers at 20000 samples), a property of the
schedule, not of the sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MU = np.array([1.0, -0.5, 0.2, 0.0])
S = np.array([0.5, 1.0, 0.1, 2.0])  # 0.1: sharp data, hard for few steps; 1: matches the noise


def _alpha_sigma(schedule, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    alpha_bar = torch.tensor(schedule.alphas_cumprod64[t.cpu().numpy()], dtype=torch.float64)
    return (alpha_bar.sqrt().to(dtype).reshape(-1, 1),
            (1 - alpha_bar).sqrt().to(dtype).reshape(-1, 1))


def optimal_denoiser(schedule, prediction: str = "eps", mu=MU, s=S):
    """``denoise(x_t, t) -> E[eps|x_t]``, E[x0|x_t] or E[v|x_t] (per ``prediction``), x_t (N, D)."""
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if bool((t == t[0]).all()):  # one timestep for the batch (as in sampling): scalars, fast
            alpha_bar = float(schedule.alphas_cumprod64[int(t[0])])
            a, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        else:
            a, sigma = _alpha_sigma(schedule, t, x_t.dtype)
        m, var = (torch.as_tensor(v, dtype=x_t.dtype) for v in (mu, np.asarray(s) ** 2))
        x0 = m + a * var / (a ** 2 * var + sigma ** 2) * (x_t - a * m)
        eps = (x_t - a * x0) / sigma
        return {"eps": eps, "x0": x0, "v": a * eps - sigma * x0}[prediction]
    return denoise


def optimal_statistic(schedule, weights, mu=MU, s=S):
    """The exact E[weights . x0 | x_t] as ``f(x_t, t) -> (N, 1)``: an ideal alignment network."""
    x0_of = optimal_denoiser(schedule, "x0", mu, s)
    w = torch.as_tensor(weights)
    return lambda x_t, t: (x0_of(x_t, t) * w.to(x_t.dtype)).sum(dim=1, keepdim=True)


def marginal_start(schedule, n: int, generator: torch.Generator, dtype=torch.float32,
                   mu=MU, s=S) -> torch.Tensor:
    """n draws of x_{T-1} from its exact marginal N(a MU, a^2 S^2 + sigma^2)."""
    alpha_bar = schedule.alphas_cumprod64[-1]
    mean = math.sqrt(alpha_bar) * mu
    std = np.sqrt(alpha_bar * s ** 2 + 1 - alpha_bar)
    z = torch.randn(n, len(mu), generator=generator, dtype=dtype)
    return torch.as_tensor(mean, dtype=dtype) + z * torch.as_tensor(std, dtype=dtype)


def _chain(schedule, timesteps) -> tuple[np.ndarray, np.ndarray]:
    """(a, sigma) at the sampler's timesteps, then at the clean end (a = 1, sigma = 0)."""
    alpha_bar = np.append(schedule.alphas_cumprod64[np.asarray(timesteps)], 1.0)
    return np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)


def start_variance(schedule, s=S) -> np.ndarray:
    alpha_bar = schedule.alphas_cumprod64[-1]
    return alpha_bar * s ** 2 + 1 - alpha_bar


def ddim_gain(schedule, timesteps, s=S) -> np.ndarray:
    """d output / d x_{T-1} of deterministic DDIM (eta = 0), per dim, by geometry.

    Write a S = rho cos(phi), sigma = rho sin(phi). With the exact denoiser, DDIM maps
    x_t - a MU to (a' a S^2 + sigma' sigma) / rho^2 (x_t - a MU) = (rho'/rho) cos(phi' - phi)
    (x_t - a MU): a rotation by the angle step, projected. So the gain over the chain is
    (rho_end / rho_start) * prod cos(delta phi), with rho_end = S (clean) and phi_end = 0.
    """
    a, sigma = _chain(schedule, timesteps)
    s = np.asarray(s)[:, None]
    rho = np.sqrt(a ** 2 * s ** 2 + sigma ** 2)
    phi = np.arctan2(sigma, a * s)
    return rho[:, -1] / rho[:, 0] * np.prod(np.cos(np.diff(phi, axis=1)), axis=1)


def ddpm_variance(schedule, timesteps, s=S) -> np.ndarray:
    """Output variance of ancestral DDPM (any respacing; = DDIM eta = 1) from x_{T-1}'s marginal.

    Each step samples q(x_t' | x_t, x0 = E[x0 | x_t]). That posterior is obtained here by Gaussian
    conditioning of the forward process (x_t' = a' x0 + sigma' e1, x_t = (a/a') x_t' +
    sqrt(1 - a^2/a'^2) e2): given x0, Cov(x_t', x_t) = (a/a') sigma'^2 and Var(x_t) = sigma^2, so
    E[x_t' | x_t, x0] = a' x0 + g (x_t - a x0) with g = (a/a') sigma'^2 / sigma^2, and
    Var = sigma'^2 - g^2 sigma^2. Propagating x_t - a MU through one step multiplies it by
    f = a' k + g (1 - a k) and adds that variance.
    """
    a, sigma = _chain(schedule, timesteps)
    s = np.asarray(s)
    var = a[0] ** 2 * s ** 2 + sigma[0] ** 2
    for i in range(len(a) - 1):
        k = a[i] * s ** 2 / (a[i] ** 2 * s ** 2 + sigma[i] ** 2)
        g = (a[i] / a[i + 1]) * sigma[i + 1] ** 2 / sigma[i] ** 2
        f = a[i + 1] * k + g * (1 - a[i] * k)
        var = f ** 2 * var + (sigma[i + 1] ** 2 - g ** 2 * sigma[i] ** 2)
    return var


def ode_gain(schedule, timesteps, s=S) -> np.ndarray:
    """d output / d x_{T-1} of the *exact* probability-flow ODE from T-1 to the last timestep,
    followed by the last step's jump to E[x0 | x_t] (what an ODE solver's last step does).

    The exact ODE keeps (x_t - a MU) / rho_t fixed (it transports N(a MU, rho^2) onto itself),
    and E[x0|x_t] - MU = k (x_t - a MU): the gain is (rho_last / rho_start) * k_last.
    """
    a, sigma = _chain(schedule, timesteps)
    s = np.asarray(s)
    rho = np.sqrt(a[:-1, None] ** 2 * s ** 2 + sigma[:-1, None] ** 2)
    k_last = a[-2] * s ** 2 / rho[-1] ** 2
    return rho[-1] / rho[0] * k_last


def measured_gain(sampler, denoise, schedule, mu=MU) -> np.ndarray:
    """d output / d x_{T-1} of a deterministic sampler, measured exactly (float64, linear map)."""
    from xearthformer.diffusion import sample

    start = math.sqrt(schedule.alphas_cumprod64[-1]) * torch.tensor(mu, dtype=torch.float64)
    x = torch.stack([start, start + 1])
    out = sample(denoise, x, sampler, progress=False)
    return (out[1] - out[0]).numpy()


def moment_scores(samples: torch.Tensor, mean, variance) -> tuple[np.ndarray, np.ndarray]:
    """(mean error, variance error) per dim in standard errors of n Gaussian samples.

    SE of the mean: sqrt(variance / n); SE of the sample variance: variance sqrt(2 / (n - 1)).
    """
    x = samples.double().numpy()
    n = x.shape[0]
    mean_z = (x.mean(axis=0) - mean) / np.sqrt(variance / n)
    var_z = (x.var(axis=0, ddof=1) - variance) / (variance * math.sqrt(2 / (n - 1)))
    return mean_z, var_z

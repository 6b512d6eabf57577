"""Closed-form Gaussian-mixture test bed (exact denoisers of Gaussian mixtures at every noise level), shared by
tests and bench.

Data: an isotropic Gaussian mixture in R^d. Under z = alpha * x0 + s * eps (the model's own state)
E[x0 | z] is exact, so eps*, v* and the flow velocity are the ideal network outputs. ``denoiser``
wraps them the way ComfyUI does: the model sees its own z, predicts eps / v / velocity (optionally
with a CFG analogue between an unconditional and a conditional mixture and rounded to a model
dtype), and the prediction is turned into x0_hat in ComfyUI's coordinates as ComfyUI's
``calculate_denoised`` does. No ComfyUI import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from solvers import Schedule, lambda_uniform_sigmas
from solvers.base import Denoiser

Prediction = Literal["eps", "v", "flow"]
F64 = torch.float64


@dataclass(frozen=True)
class GMM:
    """sum_k weights_k N(means_k, stds_k^2 I); a std of 0 is a point mass."""

    means: Tensor  # (K, d)
    stds: Tensor  # (K,)
    weights: Tensor  # (K,), sums to 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def reweighted(self, weights: list[float]) -> GMM:
        w = torch.tensor(weights, dtype=F64)
        return GMM(self.means, self.stds, w / w.sum())

    def x0_mean(self, z: Tensor, alpha: float, s: float) -> Tensor:
        """E[x0 | z] for z = alpha * x0 + s * eps, z of shape (..., d), in float64."""
        z = z.to(F64)
        var = alpha**2 * self.stds**2 + s**2  # (K,)
        diff = z[..., None, :] - alpha * self.means  # (..., K, d)
        logits = torch.log(self.weights) - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        w = torch.softmax(logits, dim=-1)  # (..., K)
        gain = (alpha * self.stds**2 / var)[:, None]  # (K, 1)
        comp = self.means + gain * diff  # (..., K, d)
        return (w[..., None] * comp).sum(-2)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=F64, generator=generator)
        return self.means[k] + self.stds[k, None] * noise


def make_gmm(dim: int = 4, components: int = 3, seed: int = 0) -> GMM:
    """A random well-separated isotropic mixture (means ~ 1.5 N(0, I), stds in [0.3, 0.7])."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(components, dim, dtype=F64, generator=g)
    stds = 0.3 + 0.4 * torch.rand(components, dtype=F64, generator=g)
    weights = 0.5 + torch.rand(components, dtype=F64, generator=g)
    return GMM(means, stds, weights / weights.sum())


def cfg_pair(gmm: GMM) -> tuple[GMM, GMM]:
    """(unconditional, conditional): the conditional mixture favours component 0 (CFG analogue)."""
    k = gmm.weights.numel()
    return gmm, gmm.reweighted([0.9] + [0.1 / max(k - 1, 1)] * (k - 1))


def point_mass(dim: int = 4, seed: int = 0) -> GMM:
    g = torch.Generator().manual_seed(seed)
    return GMM(torch.randn(1, dim, dtype=F64, generator=g), torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))


def gaussian(dim: int = 4, std: float = 0.5, seed: int = 0) -> GMM:
    g = torch.Generator().manual_seed(seed)
    return GMM(torch.randn(1, dim, dtype=F64, generator=g), torch.tensor([std], dtype=F64), torch.ones(1, dtype=F64))


def schedule_for(prediction: Prediction) -> Schedule:
    return Schedule.for_prediction(prediction)


def model_coefficients(prediction: Prediction, sigma: float) -> tuple[float, float]:
    """(alpha, s) of the model's own state z = alpha * x0 + s * eps at ComfyUI's sigma."""
    if prediction == "flow":
        return 1.0 - sigma, sigma
    a = 1.0 / math.sqrt(1.0 + sigma * sigma)
    return a, sigma * a


def prediction_of(cond: GMM, uncond: GMM | None, w: float, prediction: Prediction, z: Tensor, sigma: float) -> Tensor:
    """The ideal network output (eps, v or flow velocity) at model state z, with CFG scale w."""

    def single(gmm: GMM) -> Tensor:
        alpha, s = model_coefficients(prediction, sigma)
        x0 = gmm.x0_mean(z, alpha, s)
        eps = (z - alpha * x0) / s
        if prediction == "eps":
            return eps
        if prediction == "v":
            return alpha * eps - s * x0
        return eps - x0

    out_c = single(cond)
    if uncond is None or w == 1.0:
        return out_c
    out_u = single(uncond)
    return out_u + w * (out_c - out_u)


def denoiser(
    prediction: Prediction,
    cond: GMM,
    uncond: GMM | None = None,
    w: float = 1.0,
    model_dtype: torch.dtype = F64,
) -> Denoiser:
    """ComfyUI-style ``denoise(x, sigma) -> x0_hat`` for an ideal eps / v / flow model.

    eps / v: x in k-diffusion coordinates, the model gets z = x / sqrt(1 + sigma^2); x0_hat is
    x - sigma * eps (EPS) or x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1) (V_PREDICTION).
    flow: z = x, x0_hat = x - sigma * v (CONST). The prediction is rounded to ``model_dtype``
    and x0_hat is formed in that dtype, like a model running in that precision.
    """

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sg = float(sigma)
        if sg == 0.0:
            return x.to(model_dtype)
        scale = 1.0 if prediction == "flow" else 1.0 / math.sqrt(1.0 + sg * sg)
        pred = prediction_of(cond, uncond, w, prediction, x.to(F64) * scale, sg).to(model_dtype)
        xm = x.to(model_dtype)
        if prediction == "eps":
            return xm - sg * pred
        if prediction == "v":
            return xm / (sg * sg + 1.0) - pred * (sg / math.sqrt(sg * sg + 1.0))
        return xm - sg * pred

    return denoise


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (NFE)."""

    def __init__(self, inner: Denoiser) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x, sigma)


# ---- grids -------------------------------------------------------------------------------------


def lambda_grid(prediction: Prediction, steps: int, lam_lo: float = -4.0, lam_hi: float = 4.0) -> Tensor:
    """ComfyUI sigmas uniform in half log-SNR from lam_lo (noisy) to lam_hi (clean), both finite."""
    sched = schedule_for(prediction)
    hi = float(sched.sigma_from_lambda(lam_lo))
    lo = float(sched.sigma_from_lambda(lam_hi))
    return lambda_uniform_sigmas(sched, hi, lo, steps)


def comfy_grid(prediction: Prediction, steps: int) -> Tensor:
    """A grid like ComfyUI's schedulers output: ending at 0; flow starts at exactly 1.

    vp: Karras (rho = 7) from 14.61 to 0.0292, then 0. flow: shifted linear (shift 3) from 1 to 0.
    """
    if prediction == "flow":
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
        return 3.0 * t / (1.0 + 2.0 * t)
    ramp = torch.linspace(0.0, 1.0, steps, dtype=F64)
    lo, hi, rho = 0.0292, 14.6146, 7.0
    body = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([body, torch.zeros(1, dtype=F64)])


# ---- states and references ---------------------------------------------------------------------


def noised(x0: Tensor, noise: Tensor, prediction: Prediction, sigma: float) -> Tensor:
    """ComfyUI's x at sigma for data x0 and noise: x0 + sigma*eps (vp) or (1-s) x0 + s eps (flow)."""
    if prediction == "flow":
        return (1.0 - sigma) * x0 + sigma * noise
    return x0 + sigma * noise


def rel_error(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.to(F64), b.to(F64)
    return float((a64 - b64).norm() / b64.norm())


def gaussian_exact(gmm: GMM, prediction: Prediction, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
    """Exact PF-ODE transport for a single Gaussian N(mu, std^2 I) (section 12.2)."""
    mu, std = gmm.means[0], float(gmm.stds[0])
    sched = schedule_for(prediction)
    a_r, s_r = model_coefficients(prediction, sigma_from)
    a_t, s_t = model_coefficients(prediction, sigma_to)
    z_r = float(sched.scale(sigma_from)) * x.to(F64)
    ratio = math.sqrt((a_t**2 * std**2 + s_t**2) / (a_r**2 * std**2 + s_r**2))
    z_t = a_t * mu + ratio * (z_r - a_r * mu)
    return z_t / float(sched.scale(sigma_to))


def reference_solution(
    denoise: Denoiser, prediction: Prediction, x: Tensor, sigma_from: float, sigma_to: float, tol: float = 1e-12
) -> Tensor:
    """High-accuracy PF-ODE solution (DOP853 in lambda on z = scale * x) for any float64 denoiser."""
    sched = schedule_for(prediction)
    shape = x.shape

    def rhs(lam: float, zf: np.ndarray) -> np.ndarray:
        sigma = sched.sigma_from_lambda(lam)
        z = torch.from_numpy(zf).reshape(shape)
        den = denoise(z / sched.scale(sigma), sigma).to(F64)
        dz = sched.alpha(sigma) * den + sched.dlogsigma_dlambda(sigma) * z
        return dz.reshape(-1).numpy()

    lam0, lam1 = float(sched.lam(sigma_from)), float(sched.lam(sigma_to))
    z0 = (float(sched.scale(sigma_from)) * x.to(F64)).reshape(-1).numpy()
    sol = solve_ivp(rhs, (lam0, lam1), z0, method="DOP853", rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    z1 = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
    return z1 / float(sched.scale(sigma_to))


def fitted_order(steps: list[float], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(1/steps)."""
    slope, _ = np.polyfit(-np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)
    return float(slope)


# ---- the default instance ------------------------------------------------------------------


class Bed:
    """The default test bed: a 3-component mixture in R^4, its CFG pair, and a batch of samples."""

    def __init__(self, dim: int = 4, batch: int = 8, seed: int = 0) -> None:
        self.mixture = make_gmm(dim=dim, components=3, seed=seed)
        self.uncond, self.cond = cfg_pair(self.mixture)
        gen = torch.Generator().manual_seed(seed + 1)
        self.data = self.cond.sample(batch, gen)
        self.noise = torch.randn(batch, dim, dtype=F64, generator=gen)

    def denoiser(self, prediction: Prediction, w: float = 1.0, model_dtype: torch.dtype = F64):
        return denoiser(prediction, self.cond, self.uncond, w, model_dtype)

    def clean(self, prediction: Prediction, sigmas: torch.Tensor) -> torch.Tensor:
        """The state to invert: the data seen at the grid's lowest level (the data itself at 0)."""
        return noised(self.data, self.noise, prediction, float(sigmas[-1]))

    def noisy(self, prediction: Prediction, sigmas: torch.Tensor) -> torch.Tensor:
        """A start for sampling: the data noised to the grid's top level."""
        return noised(self.data, self.noise, prediction, float(sigmas[0]))


def roundtrip(solver: Any, den: Denoiser, x0: Tensor, grid: Tensor, schedule: Schedule) -> float:
    """Relative error of ``sample(invert(x0))`` for a solver on a denoiser: the unit layer's round trip.

    Checks what every round trip relies on: ``invert`` returns exactly the solver's named latents, and
    ``sample`` returns the state's dtype.
    """
    latents = solver.invert(den, x0, grid, schedule)
    assert set(latents) == set(solver.latent_names), (set(latents), solver.latent_names)
    out = solver.sample(den, latents, grid, schedule)
    assert out.dtype == solver.state_dtype
    return rel_error(out, x0)

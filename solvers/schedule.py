"""Noise schedules in ComfyUI's sigma coordinates.

ComfyUI's samplers see ``x`` and a scalar ``sigma`` and call ``model(x, sigma) -> x0_hat``:

* eps / v-prediction ("vp"): ``x = x0 + sigma * eps`` (k-diffusion coordinates); the model's own
  state is ``z = alpha * x0 + s * eps`` with ``alpha = 1/sqrt(1 + sigma^2)``, ``s = sigma * alpha``.
* flow ("flow", SD3/Flux CONST): ``x = (1 - sigma) * x0 + sigma * eps`` is already the model's
  own state, so ``alpha = 1 - sigma`` and ``s = sigma``.

In both cases a DDIM step is exactly an Euler step in ComfyUI's ``x`` along
``d = (x - x0_hat) / sigma`` (eps for vp, the velocity for flow), so no formula here ever divides
by ``1 - sigma``: flow models can be inverted up to sigma = 1.

``scale(sigma)`` converts ComfyUI's ``x`` into the model's own state ``z = scale * x``; solvers that
are not coordinate-free (BDIA, label changes) work on ``z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScheduleKind = Literal["vp", "flow"]
Prediction = Literal["eps", "v", "flow"]


def _as_tensor(sigma: Tensor | float) -> Tensor:
    if isinstance(sigma, Tensor):
        return sigma.to(torch.float64)
    return torch.tensor(float(sigma), dtype=torch.float64)


@dataclass(frozen=True)
class Schedule:
    """alpha/sigma/lambda of a model's own parameterisation, as functions of ComfyUI's sigma."""

    kind: ScheduleKind

    @staticmethod
    def for_prediction(prediction: Prediction | str) -> Schedule:
        """eps and v-prediction models share the VP schedule; flow models have their own."""
        if prediction in ("eps", "v", "v_prediction", "vp"):
            return Schedule("vp")
        if prediction in ("flow", "const"):
            return Schedule("flow")
        raise ValueError(f"unknown prediction type {prediction!r}: use 'eps', 'v' or 'flow'")

    def alpha(self, sigma: Tensor | float) -> Tensor:
        s = _as_tensor(sigma)
        return torch.rsqrt(1.0 + s * s) if self.kind == "vp" else 1.0 - s

    def sigma(self, sigma: Tensor | float) -> Tensor:
        s = _as_tensor(sigma)
        return s * torch.rsqrt(1.0 + s * s) if self.kind == "vp" else s

    def scale(self, sigma: Tensor | float) -> Tensor:
        """Factor from ComfyUI's x to the model's own state z (alpha for vp, 1 for flow)."""
        s = _as_tensor(sigma)
        return torch.rsqrt(1.0 + s * s) if self.kind == "vp" else torch.ones_like(s)

    def lam(self, sigma: Tensor | float) -> Tensor:
        """Half log-SNR, log(alpha / sigma); +inf at sigma = 0, -inf at flow's sigma = 1."""
        s = _as_tensor(sigma)
        if self.kind == "vp":
            return -torch.log(s)
        return torch.log1p(-s) - torch.log(s)

    def sigma_from_lambda(self, lam: Tensor | float) -> Tensor:
        """Inverse of ``lam``: the ComfyUI sigma at half log-SNR ``lam``."""
        x = _as_tensor(lam)
        return torch.exp(-x) if self.kind == "vp" else torch.sigmoid(-x)

    def dlogsigma_dlambda(self, sigma: Tensor | float) -> Tensor:
        """d log(s)/d lambda of the model's own s; the PF-ODE is dz/dlambda = alpha*x0 + this*z."""
        a = self.alpha(sigma)
        return -(a * a) if self.kind == "vp" else -a


def check_sigmas(sigmas: Tensor, schedule: Schedule, what: str = "sigmas") -> Tensor:
    """Validate a ComfyUI sigma grid (noisy -> clean) and return it as float64 on the CPU."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D SIGMAS tensor, got {type(sigmas).__name__}")
    if sigmas.numel() < 2:
        raise ValueError(
            f"{what}: needs at least 2 values (1 step); got {sigmas.numel()}. "
            "Give the scheduler at least 1 step."
        )
    s = sigmas.detach().to("cpu", torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError(f"{what}: contains NaN or infinity")
    if (s < 0).any():
        raise ValueError(f"{what}: contains negative values")
    if not (s[:-1] > s[1:]).all():
        raise ValueError(
            f"{what}: must be strictly decreasing (noisy -> clean, as schedulers output them). "
            "Do not flip them for inversion: Invert walks the grid backwards itself."
        )
    if schedule.kind == "flow" and s[0] > 1.0 + 1e-12:
        raise ValueError(f"{what}: flow models need sigmas <= 1, got {float(s[0]):.4g}")
    return s


def lambda_uniform_sigmas(schedule: Schedule, sigma_max: float, sigma_min: float, steps: int) -> Tensor:
    """A grid uniform in half log-SNR from ``sigma_max`` down to ``sigma_min`` (both > 0)."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    lo, hi = float(schedule.lam(sigma_max)), float(schedule.lam(sigma_min))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("lambda_uniform_sigmas: endpoints must have finite log-SNR (0 < sigma, flow sigma < 1)")
    lams = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
    return schedule.sigma_from_lambda(lams)

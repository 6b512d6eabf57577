"""DDIM sampling and DDIM inversion (Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, §4.3).

DDIM is an Euler step in ComfyUI's coordinates along d = (x - x0_hat)/sigma, for vp and flow alike.
Inversion is approximate: the implicit relation x_s = x_r - (r - s) d(x_s, s) is replaced by an
explicit step. Two labellings:

* ``current`` (default): d evaluated at the source state with the source level (DDIM ODE reversal).
  Exact on a point-mass data distribution at any step count.
* ``next`` (the "t+1" variant of prompt-to-prompt/NTI, diffusers' DDIMInverseScheduler and AIDI):
  the same state, given to the network with the target (noisier) label.

At a source level of sigma = 0 the current label gives no information (x0_hat = x), so the first
step from a clean latent uses the target label in both variants.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from .base import Denoiser, Solver, derivative, relabel
from .schedule import Schedule

Label = Literal["current", "next"]


def ddim_step(x: Tensor, d: Tensor, sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
    """One DDIM (= Euler) step given the derivative d evaluated for this step."""
    return x + (sigma_to - sigma_from).to(x.dtype) * d


def inversion_derivative(
    denoise: Denoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor, schedule: Schedule, label: Label
) -> tuple[Tensor, Tensor]:
    """d for an inversion step sigma_from -> sigma_to (noisier), per the chosen labelling."""
    if label == "current" and sigma_from > 0:
        return derivative(denoise, x, sigma_from)
    return derivative(denoise, relabel(x, schedule, sigma_from, sigma_to), sigma_to)


def sample_step(denoise: Denoiser, x: Tensor, s_from: Tensor, s_to: Tensor) -> tuple[Tensor, Tensor]:
    """One DDIM sampling step; the step to sigma = 0 returns the estimate itself (exactly where Euler lands)."""
    d, denoised = derivative(denoise, x, s_from)
    return (denoised if s_to == 0 else ddim_step(x, d, s_from, s_to)), denoised


class DDIM(Solver):
    """Deterministic DDIM: 1 model evaluation per step, first order, not exactly invertible."""

    name = "ddim"

    def __init__(self, inversion_label: Label = "current", state_dtype: str = "float64") -> None:
        super().__init__(state_dtype)
        if inversion_label not in ("current", "next"):
            raise ValueError(f"inversion_label must be 'current' or 'next', got {inversion_label!r}")
        self.inversion_label: Label = inversion_label

    def params(self) -> dict[str, Any]:
        return {**super().params(), "inversion_label": self.inversion_label}

    def invert_step(self, denoise, state, s, i, schedule):
        x = state["x"]
        d, denoised = inversion_derivative(denoise, x, s[i], s[i - 1], schedule, self.inversion_label)
        return {"x": ddim_step(x, d, s[i], s[i - 1])}, denoised, None

    def sample_step(self, denoise, state, s, i, schedule):
        x, denoised = sample_step(denoise, state["x"], s[i], s[i + 1])
        return {"x": x}, denoised

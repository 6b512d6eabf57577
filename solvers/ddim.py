"""DDIM sampling and DDIM inversion (algorithms.md section 1).

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

from .base import Denoiser, Solver, StepCallback, StepHook, derivative, relabel
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

    def invert(self, denoise, x0, sigmas, schedule, callback: StepCallback | None = None):
        x, s = self._prepare(x0, sigmas, schedule)
        n = len(s) - 1
        for k, i in enumerate(range(n, 0, -1)):
            d, denoised = inversion_derivative(denoise, x, s[i], s[i - 1], schedule, self.inversion_label)
            x = ddim_step(x, d, s[i], s[i - 1])
            if callback is not None:
                callback(k, n, x, denoised)
        return {"x": x}

    def sample(self, denoise, latents: dict[str, Tensor], sigmas, schedule, callback=None,
               hook: StepHook | None = None) -> Tensor:
        if "x" not in latents:
            raise ValueError("DDIM latents: missing 'x' (the inverted latent)")
        x, s = self._prepare(latents["x"], sigmas, schedule)
        n = len(s) - 1
        for i in range(n):
            d, denoised = derivative(denoise, x, s[i])
            x = denoised if s[i + 1] == 0 else ddim_step(x, d, s[i], s[i + 1])
            if hook is not None:
                x = hook(i, {"x": x}, denoised)["x"]
            if callback is not None:
                callback(i, n, x, denoised)
        return x

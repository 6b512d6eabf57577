"""EDICT: exactly invertible coupled DDIM (Wallace, Gokul, Naik, "EDICT: Exact Diffusion Inversion via Coupled
Transformations", CVPR 2023, §3, eqs. 8-11).

Two sequences x, y start equal. Each grid step updates one with the model evaluated on the other,
then mixes them with weight p; every piece is affine in the sequence being updated, so the step has
an exact algebraic inverse given the same model outputs.

Order within a step (``mixing``): the authors' code (salesforce/EDICT ``coupled_stablediffusion``,
leapfrog) alternates only which sequence is *updated* first; it always mixes x first
(``x = p x + (1 - p) y``, then y with the new x) and un-mixes y first. That is the default,
``"authors"``. Before this pack followed the authors, odd steps also swapped the mixing order
(``"alternating"``): just as exact, but a different integrator (up to 1e-1 apart). It stays only so
that inversions saved then run back exactly: parameters without ``mixing`` mean ``"alternating"``.

Coordinates: every coupled update is a DDIM (= Euler) step in ComfyUI's coordinates,
``first_inter = first + (s_to - s_from) * d(second, s_from)``. In vp coordinates this is exactly the
paper's ``a_t * x + b_t * eps(y)``; for flow it is the Euler transfer of section 10.1 (no division
by ``1 - sigma``). Each step is labelled by its NOISIER level in both directions, so the model is
never evaluated at sigma = 0 and the inverse re-evaluates the model on exactly the same inputs.
The second update evaluates the model on the intermediate state, which lies at the cleaner level:
as in the paper (``eps(x_inter, t)``) the network is given that state's own z with the noisier
label, i.e. the state is relabelled (``base.relabel``) before the call.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .base import Denoiser, Solver, derivative, relabel
from .schedule import Schedule

PRule = Literal["fixed", "scaled"]
Mixing = Literal["authors", "alternating"]
MIXINGS: tuple[str, ...] = ("authors", "alternating")
#: what parameters saved before ``mixing`` existed meant.
LEGACY_MIXING: Mixing = "alternating"

#: step count at which ``p`` is specified under the "scaled" rule (EDICT Supp. C.2).
P_REFERENCE_STEPS = 50
#: p^-2N above which the inversion's dilation of x - y is reported (0.93 at 50 steps gives 1.4e3).
DILATION_WARN = 1e4
#: expected relative round-trip error above which ``warnings`` reports the rounding gain.
ROUNDING_WARN = 1e-5


def rounding_gain(sigmas: Tensor, schedule: Schedule, p: float) -> float:
    """Heuristic bound on how much sampling amplifies rounding in the x - y difference mode.

    In the model's coordinates the coupled step multiplies the difference by about a^2 relative
    to the state at high noise, a = scale(s_to)/scale(s_from) the DDIM coefficient, and the mixing
    by p^2; the product over steps where a^2 p^2 > 1 bounds the growth (about 1e3 for 10 steps
    from vp sigma 55; 1 for flow, whose scale is 1). Over-estimates where the data term dominates.
    """
    s = sigmas.detach().to("cpu", torch.float64)
    a = schedule.scale(s[1:]) / schedule.scale(s[:-1])
    return float(torch.clamp(a * a * p * p, min=1.0).prod())


def _coupled_pair(latents: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(x, y) from ``invert``'s output, or y = x for plain generation from ``{"x": noise}``."""
    if "x" not in latents:
        raise ValueError("EDICT latents: missing 'x'")
    x = latents["x"]
    y = latents.get("y", x)
    if y.shape != x.shape:
        raise ValueError(f"EDICT latents: 'y' has shape {tuple(y.shape)} but 'x' has {tuple(x.shape)}")
    return x, y


class EDICT(Solver):
    """Exact inversion with a coupled pair (x, y); 2 model evaluations per step."""

    name = "edict"
    latent_names = ("x", "y")
    exact = True

    def __init__(self, p: float = 0.93, p_rule: PRule = "fixed", state_dtype: str = "float64",
                 mixing: Mixing = "authors") -> None:
        super().__init__(state_dtype)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {', '.join(MIXINGS)}, got {mixing!r}")
        self.mixing: Mixing = mixing
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p}")
        if p_rule not in ("fixed", "scaled"):
            raise ValueError(f"p_rule must be 'fixed' or 'scaled', got {p_rule!r}")
        self.p = float(p)
        self.p_rule: PRule = p_rule

    def params(self) -> dict[str, Any]:
        return {**super().params(), "p": self.p, "p_rule": self.p_rule, "mixing": self.mixing}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> EDICT:
        """As stored; inversions saved before ``mixing`` was a parameter were made with the alternating order."""
        return cls(**{"mixing": LEGACY_MIXING, **params})

    def nfe_per_step(self) -> int:
        return 2

    def mixing_weight(self, steps: int) -> float:
        """p for a grid of ``steps`` steps: p itself, or p^(50/steps) keeping the aggregate p^50."""
        if self.p_rule == "scaled":
            return self.p ** (P_REFERENCE_STEPS / steps)
        return self.p

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        out = super().warnings(sigmas, schedule)
        steps = len(sigmas) - 1
        p = self.mixing_weight(steps)
        dilation = p ** (-2 * steps)
        if dilation > DILATION_WARN:
            out.append(
                f"EDICT: p = {p:.4g} over {steps} steps dilates the x-y difference by p^-2N = {dilation:.2g} "
                "during inversion, so the inverted pair drifts apart. Raise p or use p_rule='scaled'."
            )
        gain = rounding_gain(sigmas, schedule, p)
        expected = gain * torch.finfo(self.state_dtype).eps
        if expected > ROUNDING_WARN:
            out.append(
                f"EDICT: large steps at high noise amplify rounding in the x-y difference by up to ~{gain:.2g}, "
                f"so a {self.state_dtype_name} round trip may be off by ~{expected:.1g}. Use more steps, "
                "p_rule='scaled' or state_dtype='float64'."
            )
        return out

    def invert_step(self, denoise, state, s, i, schedule):
        # the step between s[i - 1] (noisier) and s[i], undone; sampling took it with index i - 1
        p = self.mixing_weight(len(s) - 1)
        x, y, denoised = self._unstep(denoise, state["x"], state["y"], s[i - 1], s[i], schedule, p,
                                      swap=(i - 1) % 2 == 1, mix_swap=self._mix_swap(i - 1))
        return {"x": x, "y": y}, denoised, None

    def start_inversion(self, x, s, schedule):
        return {"x": x, "y": x}

    def start_sampling(self, x, latents, s, schedule):
        _, y = _coupled_pair(latents)
        if not torch.isfinite(y).all():
            raise ValueError("EDICT latents: 'y' contains NaN or infinity")
        return {"x": x, "y": y.to(self.state_dtype)}

    def sample_step(self, denoise, state, s, i, schedule):
        p = self.mixing_weight(len(s) - 1)
        x, y, denoised = self._step(denoise, state["x"], state["y"], s[i], s[i + 1], schedule, p, swap=i % 2 == 1,
                                    mix_swap=self._mix_swap(i))
        return {"x": x, "y": y}, denoised

    def _mix_swap(self, step: int) -> bool:
        """Whether sampling step ``step`` mixes y first: never for the authors' order, on odd steps for the old one."""
        return self.mixing == "alternating" and step % 2 == 1

    @staticmethod
    def _step(
        denoise: Denoiser,
        x: Tensor,
        y: Tensor,
        s_from: Tensor,
        s_to: Tensor,
        schedule: Schedule,
        p: float,
        swap: bool,
        mix_swap: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One denoising step s_from -> s_to; ``swap`` updates y first (leapfrog), ``mix_swap`` mixes y first."""
        first, second = (y, x) if swap else (x, y)
        h = (s_to - s_from).to(x.dtype)
        d, _ = derivative(denoise, second, s_from)
        first_i = first + h * d
        d, denoised = derivative(denoise, relabel(first_i, schedule, s_to, s_from), s_from)
        second_i = second + h * d
        x_i, y_i = (second_i, first_i) if swap else (first_i, second_i)
        if mix_swap:
            y_new = p * y_i + (1.0 - p) * x_i
            return p * x_i + (1.0 - p) * y_new, y_new, denoised
        x_new = p * x_i + (1.0 - p) * y_i
        return x_new, p * y_i + (1.0 - p) * x_new, denoised

    @staticmethod
    def _unstep(
        denoise: Denoiser,
        x: Tensor,
        y: Tensor,
        s_from: Tensor,
        s_to: Tensor,
        schedule: Schedule,
        p: float,
        swap: bool,
        mix_swap: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Exact inverse of ``_step``: from the state at s_to back to s_from, undoing in reverse order."""
        if mix_swap:
            x_i = (x - (1.0 - p) * y) / p
            y_i = (y - (1.0 - p) * x_i) / p
        else:
            y_i = (y - (1.0 - p) * x) / p
            x_i = (x - (1.0 - p) * y_i) / p
        second_i, first_i = (x_i, y_i) if swap else (y_i, x_i)
        h = (s_to - s_from).to(x.dtype)
        d, denoised = derivative(denoise, relabel(first_i, schedule, s_to, s_from), s_from)
        second_old = second_i - h * d
        d, _ = derivative(denoise, second_old, s_from)
        first_old = first_i - h * d
        return (second_old, first_old, denoised) if swap else (first_old, second_old, denoised)

"""BDIA-DDIM: exactly invertible two-step DDIM (Zhang et al., "Exact Diffusion Inversion via Bi-directional
Integration Approximation", ECCV 2024, §4 and Alg. 1).

With ``e_i`` the model output at state z_i and level t_i, ``Fwd_i`` is the DDIM step t_i -> t_{i-1}
and ``Bwd_i`` the DDIM step t_i -> t_{i+1}, both with the same ``e_i``. Sampling:

    z_{i-1} = gamma * z_{i+1} - gamma * Bwd_i + Fwd_i

and inversion is its exact algebraic inverse ``z_{i+1} = (z_{i-1} - Fwd_i) / gamma + Bwd_i``.

The combination mixes states at different levels, so it depends on the coordinates: it is done on
the model's own state ``z = schedule.scale(sigma) * x`` (the VP coordinates of the reference for
eps/v models; flow's own (1 - s, s) coordinates, where scale = 1). Fwd/Bwd are computed as Euler steps
in ComfyUI's coordinates and then scaled, so nothing divides by alpha (flow sigma = 1 is fine).

The pair (z_N, z_{N-1}) is the inverted state: ``x`` at ``sigmas[0]`` and ``x_next`` at ``sigmas[1]``.
The inversion recursion has a parasitic root -1/gamma: the start-up error grows like gamma^-N
(section 3.7), hence ``bdia_guard``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from .base import Denoiser, Solver, derivative
from .ddim import ddim_step, inversion_derivative
from .schedule import Schedule

#: gamma^-N above which the parasitic inversion mode is reported.
GUARD_WARN_GROWTH = 1e2
#: gamma^-N above which inversion is refused: the inverted pair is then amplified start-up error and rounding.
#: Measured on the embedded model (25 steps, 8 held-out images, edits at cfg 4): gamma = 0.5 (3.4e7) gave an
#: inverted x of rms 1e6 instead of 1, a reconstruction down from 171 to 132 dB and half the edits failing, while
#: gamma = 0.7 (7.5e3, rms 240) and 0.8 (265, rms 6.7) reconstructed at 165-171 dB and every edit read right.
#: A large parasitic mode is not in itself harmful; its amplified rounding is. The authors' editing default,
#: gamma = 0.5 over their "50 timesteps" (49 steps here, 5.6e14, rms > 1e6), is refused; a step-count rule
#: (gamma < 0.9 from 50 steps) let it through.
GUARD_REFUSE_GROWTH = 1e6

GammaRule = Literal["fixed", "scaled"]
#: step count at which ``gamma`` is given under the "scaled" rule: the 25 steps where 0.8 was measured best for
#: edits on the embedded model (bench/edit_quality.py). Scaling keeps the amplification gamma^-N of that setting.
GAMMA_REFERENCE_STEPS = 25


def gamma_at(gamma: float, gamma_rule: GammaRule, steps: int) -> float:
    """The gamma used over ``steps`` steps: gamma itself ("fixed"), or gamma^(25/steps) ("scaled"), which keeps
    the inversion's amplification gamma^-N at its 25-step value whatever the step count."""
    if gamma_rule == "scaled":
        return gamma ** (GAMMA_REFERENCE_STEPS / steps)
    return gamma


def inversion_growth(gamma: float, steps: int) -> float:
    """gamma^-N: how much BDIA inversion amplifies its start-up error (parasitic root -1/gamma, section 3.7)."""
    return gamma ** (-float(steps))


def smallest_invertible_gamma(steps: int) -> float:
    """The smallest gamma whose inversion over ``steps`` steps the guard accepts (growth = GUARD_REFUSE_GROWTH)."""
    return GUARD_REFUSE_GROWTH ** (-1.0 / steps)


def bdia_guard(gamma: float, steps: int, gamma_rule: GammaRule = "fixed") -> list[str]:
    """Check gamma against the step count for inversion; raise for settings that cannot work.

    Decided by the amplification gamma^-N of the gamma used (``gamma_at``), not by a step count: warnings above
    GUARD_WARN_GROWTH (1e2), ValueError above GUARD_REFUSE_GROWTH (1e6), naming the smallest gamma accepted.
    """
    used = gamma_at(gamma, gamma_rule, steps)
    growth = inversion_growth(used, steps)
    named = f"gamma = {gamma}" + (f" (scaled to {used:.3g} for {steps} steps)" if gamma_rule == "scaled" else "")
    if growth > GUARD_REFUSE_GROWTH:
        floor_steps = GAMMA_REFERENCE_STEPS if gamma_rule == "scaled" else steps
        floor = math.ceil(smallest_invertible_gamma(floor_steps) * 100) / 100
        fix = (f"Use gamma >= {floor:.2f} (1.0 is the default)" if gamma_rule == "scaled" else
               f"Use gamma >= {floor:.2f} at {steps} steps (1.0 is the default), gamma_rule 'scaled', or fewer steps")
        raise ValueError(
            f"{named} with {steps} steps cannot invert: BDIA inversion's parasitic mode grows "
            f"like gamma^-N = {growth:.2g} (more than {GUARD_REFUSE_GROWTH:.0e}), so the inverted pair is mostly "
            f"amplified error. {fix}."
        )
    if growth > GUARD_WARN_GROWTH:
        return [
            f"BDIA: {named} over {steps} steps amplifies the inversion's parasitic mode by "
            f"gamma^-N = {growth:.2g}: the inverted pair is far from Gaussian noise and carries the image, "
            "which keeps edits closer to the input. Raise gamma towards 1.0 for noise-like latents."
        ]
    return []


#: Spacing of the lattice the float64 state lives on at gamma = 1. Sums and differences of its multiples are
#: exact in float64 (for magnitudes below 2**9; latents and model states are O(1)), so sampling undoes
#: inversion bit for bit: the network then sees identical inputs in both directions. Plain float64 differs
#: in its last bits, and a float32 network now and then rounds such an input to a neighbouring float, which
#: the recursion amplifies (measured on a tiny float32 UNet: 4e-3 relative at cfg 3, 50 steps, instead of
#: 2e-8). Every float32 number above 2**-21 in magnitude is on this lattice, so a float32 latent enters it
#: unchanged, and what the model computes is unchanged.
LATTICE = 2.0**-44


def _on_lattice(z: Tensor) -> Tensor:
    """z rounded to the nearest multiple of LATTICE (exact: the scalings are powers of two)."""
    return torch.round(z / LATTICE) * LATTICE


def _euler(x: Tensor, d: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule) -> Tensor:
    """DDIM step from (x, s_from) to s_to with derivative d, returned in model coordinates z."""
    return schedule.scale(s_to).to(x.dtype) * ddim_step(x, d, s_from, s_to)


class BDIA(Solver):
    """Exact inversion with a two-step recursion on (x, x_next); 1 model evaluation per step.

    ``gamma_rule`` "scaled" runs gamma^(25/N) on an N-step grid (``gamma_at``), so one gamma edits alike at any
    step count; invert and sample must then see the same grid (they must anyway: the pair lives on it).

    ``invert`` refuses what ``bdia_guard`` refuses; ``sample`` does not (its parasitic root -gamma
    is stable, so plain generation with a small gamma is fine). Sampling from the inverted pair runs
    the recursion directly (N - 1 model calls; the first callback reports ``x_next`` with no
    denoised estimate); from ``{"x": noise}`` alone it takes a DDIM start-up step first.

    The recursion runs on the model state z. At gamma = 1 with a float64 state, z and both DDIM steps
    are kept on ``LATTICE``, which makes the recursion a chain of exact additions: the round trip is
    bit-exact whatever the network's precision (an input off the lattice moves by at most 2**-45).
    """

    name = "bdia"
    latent_names = ("x", "x_next")
    exact = True

    def __init__(self, gamma: float = 1.0, state_dtype: str = "float64", gamma_rule: GammaRule = "fixed") -> None:
        super().__init__(state_dtype)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if gamma_rule not in ("fixed", "scaled"):
            raise ValueError(f"gamma_rule must be 'fixed' or 'scaled', got {gamma_rule!r}")
        self.gamma = float(gamma)
        self.gamma_rule: GammaRule = gamma_rule
        self.lattice = self.gamma == 1.0 and self.state_dtype == torch.float64  # then gamma_at is 1 at every N

    def params(self) -> dict[str, Any]:
        return {**super().params(), "gamma": self.gamma, "gamma_rule": self.gamma_rule}

    def gamma_for(self, s: Tensor) -> float:
        """The gamma used on the grid ``s`` (``gamma_at`` for its step count)."""
        return gamma_at(self.gamma, self.gamma_rule, len(s) - 1)

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        out = super().warnings(sigmas, schedule)
        return out + bdia_guard(self.gamma, len(sigmas) - 1, self.gamma_rule)

    def _snap(self, z: Tensor) -> Tensor:
        return _on_lattice(z) if self.lattice else z

    def _to_z(self, x: Tensor, sigma: Tensor, schedule: Schedule) -> Tensor:
        return self._snap(schedule.scale(sigma).to(x.dtype) * x)

    @staticmethod
    def _to_x(z: Tensor, sigma: Tensor, schedule: Schedule) -> Tensor:
        return z / schedule.scale(sigma).to(z.dtype)

    def start_inversion(self, x, s, schedule):
        bdia_guard(self.gamma, len(s) - 1, self.gamma_rule)
        return {"z": self._to_z(x, s[-1], schedule)}

    def invert_step(self, denoise, state, s, i, schedule):
        z = state["z"]
        if "z_below" not in state:  # start-up: plain DDIM inversion s[n] -> s[n-1] (current label)
            x = self._to_x(z, s[i], schedule)
            d, denoised = inversion_derivative(denoise, x, s[i], s[i - 1], schedule, "current")
            up = self._to_z(ddim_step(x, d, s[i], s[i - 1]), s[i - 1], schedule)
        else:
            up, denoised = self._invert_step(denoise, state["z_below"], z, s[i + 1], s[i], s[i - 1], schedule,
                                             self.gamma_for(s))
        return {"z": up, "z_below": z}, denoised, None

    def inverted(self, state, s, schedule):
        return {"x": self._to_x(state["z"], s[0], schedule), "x_next": self._to_x(state["z_below"], s[1], schedule)}

    def start_sampling(self, x, latents, s, schedule):
        if "x_next" not in latents:
            return {"x": x}  # plain generation: the first step is a DDIM start-up (Alg. 1 line 3)
        x_next = self._check_next(latents["x_next"], x)
        return {"z_above": self._to_z(x, s[0], schedule), "z": self._to_z(x_next, s[1], schedule)}

    def sample_step(self, denoise, state, s, i, schedule):
        if "z_above" not in state:
            x = state["x"]
            d, denoised = derivative(denoise, x, s[0])
            return {"z_above": self._to_z(x, s[0], schedule),
                    "z": self._to_z(ddim_step(x, d, s[0], s[1]), s[1], schedule)}, denoised
        if i == 0:  # the inverted pair already holds the state one step down: no model call
            return state, None
        down, denoised = self._sample_step(denoise, state["z_above"], state["z"], s[i - 1], s[i], s[i + 1], schedule,
                                           self.gamma_for(s))
        return {"z_above": state["z"], "z": down}, denoised

    def shown(self, state, s, i, schedule):
        return self._to_x(state["z"], s[i], schedule)

    def hook_view(self, state, s, i, schedule):
        return {"x": self._to_x(state["z"], s[i], schedule), "x_prev": self._to_x(state["z_above"], s[i - 1], schedule)}

    def from_hook(self, state, given, view, s, i, schedule):
        """Every value the hook leaves as it was keeps its z bit for bit (x -> z is not exact off the lattice: a
        blended batch's reconstruction half must stay the plain run's); changed values enter the lattice."""
        return {"z_above": self._kept(state["z_above"], given["x_prev"], view["x_prev"], s[i - 1], schedule),
                "z": self._kept(state["z"], given["x"], view["x"], s[i], schedule)}

    def _kept(self, z: Tensor, given: Tensor, returned: Tensor, sigma: Tensor, schedule: Schedule) -> Tensor:
        if returned is given:
            return z
        return torch.where(returned == given, z, self._to_z(returned.to(z.dtype), sigma, schedule))

    def _check_next(self, x_next: Tensor, x: Tensor) -> Tensor:
        if x_next.shape != x.shape:
            raise ValueError(f"BDIA latents: 'x_next' has shape {tuple(x_next.shape)} but 'x' has {tuple(x.shape)}")
        if not torch.isfinite(x_next).all():
            raise ValueError("BDIA latents: 'x_next' contains NaN or infinity")
        return x_next.to(self.state_dtype)

    def _steps(self, denoise: Denoiser, z: Tensor, s: Tensor, s_up: Tensor, s_down: Tensor, schedule: Schedule
               ) -> tuple[Tensor, Tensor, Tensor]:
        """(Bwd, Fwd, denoised) at the state z (level s): the DDIM steps up and down, in model coordinates."""
        x = self._to_x(z, s, schedule)
        d, denoised = derivative(denoise, x, s)
        bwd = self._snap(_euler(x, d, s, s_up, schedule))
        fwd = self._snap(_euler(x, d, s, s_down, schedule))
        return bwd, fwd, denoised

    def _sample_step(self, denoise: Denoiser, z_up: Tensor, z: Tensor, s_up: Tensor, s: Tensor, s_down: Tensor,
                     schedule: Schedule, gamma: float) -> tuple[Tensor, Tensor]:
        """z_down from (z_up at s_up, z at s): z_down = gamma*(z_up - Bwd) + Fwd."""
        bwd, fwd, denoised = self._steps(denoise, z, s, s_up, s_down, schedule)
        if self.lattice:
            return z_up - bwd + fwd, denoised
        return gamma * (z_up - bwd) + fwd, denoised

    def _invert_step(self, denoise: Denoiser, z_down: Tensor, z: Tensor, s_down: Tensor, s: Tensor, s_up: Tensor,
                     schedule: Schedule, gamma: float) -> tuple[Tensor, Tensor]:
        """z_up from (z_down at s_down, z at s): z_up = (z_down - Fwd)/gamma + Bwd, the exact inverse."""
        bwd, fwd, denoised = self._steps(denoise, z, s, s_up, s_down, schedule)
        if self.lattice:
            return z_down - fwd + bwd, denoised
        return (z_down - fwd) / gamma + bwd, denoised

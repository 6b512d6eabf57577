"""BDIA-DDIM: exactly invertible two-step DDIM (algorithms.md section 3).

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

from typing import Any

import torch
from torch import Tensor

from .base import Denoiser, Solver, StepCallback, StepHook, derivative
from .ddim import ddim_step, inversion_derivative
from .schedule import Schedule

#: gamma^-N above which the parasitic inversion mode is reported.
GUARD_WARN_GROWTH = 1e2
#: gamma below this is refused for inversion at GUARD_MIN_STEPS steps or more.
GUARD_MIN_GAMMA = 0.9
GUARD_MIN_STEPS = 50


def bdia_guard(gamma: float, steps: int) -> list[str]:
    """Check gamma against the step count for inversion; raise for settings that cannot work.

    BDIA inversion amplifies its O(h^2) start-up error by gamma^-N (the parasitic root -1/gamma of
    the two-step recursion). Returns warnings when gamma^-N > 1e2; raises ValueError when
    gamma < 0.9 with N >= 50 (e.g. gamma = 0.8, N = 100 gives 2e9 growth).
    """
    growth = gamma ** (-float(steps))
    if gamma < GUARD_MIN_GAMMA and steps >= GUARD_MIN_STEPS:
        raise ValueError(
            f"gamma = {gamma} with {steps} steps cannot invert: BDIA inversion's parasitic mode grows "
            f"like gamma^-N = {growth:.2g}. Use gamma >= {GUARD_MIN_GAMMA} (default 1.0) or fewer than "
            f"{GUARD_MIN_STEPS} steps."
        )
    if growth > GUARD_WARN_GROWTH:
        return [
            f"BDIA: gamma = {gamma} over {steps} steps amplifies the inversion's parasitic mode by "
            f"gamma^-N = {growth:.2g}; the inverted pair may drift. Raise gamma towards 1.0."
        ]
    return []


def _euler(x: Tensor, d: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule) -> Tensor:
    """DDIM step from (x, s_from) to s_to with derivative d, returned in model coordinates z."""
    return schedule.scale(s_to).to(x.dtype) * ddim_step(x, d, s_from, s_to)


class BDIA(Solver):
    """Exact inversion with a two-step recursion on (x, x_next); 1 model evaluation per step.

    ``invert`` refuses what ``bdia_guard`` refuses; ``sample`` does not (its parasitic root -gamma
    is stable, so plain generation with a small gamma is fine). Sampling from the inverted pair runs
    the recursion directly (N - 1 model calls; the first callback reports ``x_next`` with no
    denoised estimate); from ``{"x": noise}`` alone it takes a DDIM start-up step first.
    """

    name = "bdia"
    latent_names = ("x", "x_next")
    exact = True

    def __init__(self, gamma: float = 1.0, state_dtype: str = "float64") -> None:
        super().__init__(state_dtype)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = float(gamma)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "gamma": self.gamma}

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        out = super().warnings(sigmas, schedule)
        return out + bdia_guard(self.gamma, len(sigmas) - 1)

    def invert(
        self,
        denoise: Denoiser,
        x0: Tensor,
        sigmas: Tensor,
        schedule: Schedule,
        callback: StepCallback | None = None,
    ) -> dict[str, Tensor]:
        x, s = self._prepare(x0, sigmas, schedule)
        n = len(s) - 1
        bdia_guard(self.gamma, n)
        # start-up: plain DDIM inversion sigmas[n] -> sigmas[n-1] (current label; target at sigma 0)
        d, denoised = inversion_derivative(denoise, x, s[n], s[n - 1], schedule, "current")
        prev, cur = x, ddim_step(x, d, s[n], s[n - 1])
        if callback is not None:
            callback(0, n, cur, denoised)
        for k, i in enumerate(range(n - 1, 0, -1), start=1):
            nxt, denoised = self._invert_step(denoise, prev, cur, s[i + 1], s[i], s[i - 1], schedule)
            prev, cur = cur, nxt
            if callback is not None:
                callback(k, n, cur, denoised)
        return {"x": cur, "x_next": prev}

    def sample(
        self,
        denoise: Denoiser,
        latents: dict[str, Tensor],
        sigmas: Tensor,
        schedule: Schedule,
        callback: StepCallback | None = None,
        hook: StepHook | None = None,
    ) -> Tensor:
        if "x" not in latents:
            raise ValueError("BDIA latents: missing 'x'")
        prev, s = self._prepare(latents["x"], sigmas, schedule)
        n = len(s) - 1
        if "x_next" in latents:
            cur = self._check_next(latents["x_next"], prev)
            denoised = None
        else:  # plain generation: DDIM start-up step (Alg. 1 line 3)
            d, denoised = derivative(denoise, prev, s[0])
            cur = ddim_step(prev, d, s[0], s[1])
        if hook is not None:
            prev, cur = self._hooked(hook, 0, prev, cur, denoised)
        if callback is not None:
            callback(0, n, cur, denoised)
        for i in range(1, n):
            nxt, denoised = self._sample_step(denoise, prev, cur, s[i - 1], s[i], s[i + 1], schedule)
            prev, cur = cur, nxt
            if hook is not None:
                prev, cur = self._hooked(hook, i, prev, cur, denoised)
            if callback is not None:
                callback(i, n, cur, denoised)
        return cur

    @staticmethod
    def _hooked(hook: StepHook, step: int, prev: Tensor, cur: Tensor, denoised: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        state = hook(step, {"x": cur, "x_prev": prev}, denoised)
        return state["x_prev"], state["x"]

    def _check_next(self, x_next: Tensor, x: Tensor) -> Tensor:
        if x_next.shape != x.shape:
            raise ValueError(f"BDIA latents: 'x_next' has shape {tuple(x_next.shape)} but 'x' has {tuple(x.shape)}")
        if not torch.isfinite(x_next).all():
            raise ValueError("BDIA latents: 'x_next' contains NaN or infinity")
        return x_next.to(self.state_dtype)

    def _sample_step(
        self,
        denoise: Denoiser,
        x_up: Tensor,
        x: Tensor,
        s_up: Tensor,
        s: Tensor,
        s_down: Tensor,
        schedule: Schedule,
    ) -> tuple[Tensor, Tensor]:
        """x_down from (x_up at s_up, x at s): z_down = gamma*(z_up - Bwd) + Fwd."""
        d, denoised = derivative(denoise, x, s)
        z_up = schedule.scale(s_up).to(x.dtype) * x_up
        bwd = _euler(x, d, s, s_up, schedule)
        fwd = _euler(x, d, s, s_down, schedule)
        z_down = self.gamma * (z_up - bwd) + fwd
        return z_down / schedule.scale(s_down).to(x.dtype), denoised

    def _invert_step(
        self,
        denoise: Denoiser,
        x_down: Tensor,
        x: Tensor,
        s_down: Tensor,
        s: Tensor,
        s_up: Tensor,
        schedule: Schedule,
    ) -> tuple[Tensor, Tensor]:
        """x_up from (x_down at s_down, x at s): z_up = (z_down - Fwd)/gamma + Bwd."""
        d, denoised = derivative(denoise, x, s)
        z_down = schedule.scale(s_down).to(x.dtype) * x_down
        bwd = _euler(x, d, s, s_up, schedule)
        fwd = _euler(x, d, s, s_down, schedule)
        z_up = (z_down - fwd) / self.gamma + bwd
        return z_up / schedule.scale(s_up).to(x.dtype), denoised

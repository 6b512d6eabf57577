"""RF-Solver and FireFlow: the midpoint solvers Flux users invert with. Not exact: their round trip is measured.

* **RF-Solver** (Wang et al., "Taming Rectified Flow for Inversion and Editing", 2024; wangjiangshan0725/RF-Solver-Edit
  ``denoise``): a second-order Taylor step ``x + h v + h^2/2 (v_mid - v)/(h/2)`` with ``v_mid`` the velocity at the
  half step, which is the explicit midpoint rule ``x + h v_mid``. 2 evaluations per step.
* **FireFlow** (Deng et al., ICML 2025; its ``denoise_fireflow``): the same midpoint step, but the velocity at the
  start of a step is the previous step's midpoint velocity, reused: 1 evaluation per step after the first.

Both invert by running the same step over the reversed grid, as the references do. Written once for every model
type in ComfyUI's coordinates: the velocity is ``base.derivative`` (the flow velocity for flow models, eps for vp
ones), the half step's stage is evaluated at its own level ``(s_from + s_to) / 2``.

One departure, forced by ComfyUI: the references ask a flow model for its velocity at t = 0 when inversion starts
from the clean latent, but ComfyUI's denoiser returns x0_hat = x at sigma = 0, which carries no velocity. That one
evaluation takes the step's target level instead (as DDIM inversion does, ``ddim.inversion_derivative``).
"""

from __future__ import annotations

from torch import Tensor

from .base import Denoiser, Solver, State, derivative
from .ddim import inversion_derivative
from .schedule import Schedule


def midpoint_step(denoise: Denoiser, x: Tensor, v: Tensor, s_from: Tensor, s_to: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(x at s_to, the midpoint velocity, its x0 estimate) given the velocity ``v`` used at the start."""
    h = (s_to - s_from).to(x.dtype)
    s_mid = (s_from + s_to) / 2
    v_mid, denoised = derivative(denoise, x + (h / 2) * v, s_mid)
    return x + h * v_mid, v_mid, denoised


def start_velocity(denoise: Denoiser, x: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule) -> Tensor:
    """The velocity at the start of a step; from sigma = 0 (inversion's first step) at the target level."""
    if s_from > 0:
        return derivative(denoise, x, s_from)[0]
    return inversion_derivative(denoise, x, s_from, s_to, schedule, "current")[0]


class RFSolver(Solver):
    """Explicit midpoint (RF-Solver's second-order Taylor step): 2 evaluations per step, second order."""

    name = "rf_solver"

    def nfe_per_step(self) -> int:
        return 2

    def _step(self, denoise: Denoiser, x: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule
              ) -> tuple[Tensor, Tensor]:
        v = start_velocity(denoise, x, s_from, s_to, schedule)
        x_new, _, denoised = midpoint_step(denoise, x, v, s_from, s_to)
        return x_new, denoised

    def invert_step(self, denoise, state, s, i, schedule):
        x, denoised = self._step(denoise, state["x"], s[i], s[i - 1], schedule)
        return {"x": x}, denoised, None

    def sample_step(self, denoise, state, s, i, schedule):
        x, denoised = self._step(denoise, state["x"], s[i], s[i + 1], schedule)
        return {"x": x}, denoised


class FireFlow(Solver):
    """Midpoint with the midpoint velocity reused as the next step's start: 1 evaluation per step after the first.

    The reused velocity travels in the state as ``"v"``; hooks see only ``"x"`` (an edited state keeps the
    velocity its step computed, as the reference's would).
    """

    name = "fireflow"

    def _step(self, denoise: Denoiser, state: State, s_from: Tensor, s_to: Tensor, schedule: Schedule
              ) -> tuple[State, Tensor]:
        x = state["x"]
        v = state["v"] if "v" in state else start_velocity(denoise, x, s_from, s_to, schedule)
        x_new, v_mid, denoised = midpoint_step(denoise, x, v, s_from, s_to)
        return {"x": x_new, "v": v_mid}, denoised

    def invert_step(self, denoise, state, s, i, schedule):
        new, denoised = self._step(denoise, state, s[i], s[i - 1], schedule)
        return new, denoised, None

    def inverted(self, state, s, schedule):
        return {"x": state["x"]}

    def sample_step(self, denoise, state, s, i, schedule):
        return self._step(denoise, state, s[i], s[i + 1], schedule)

    def hook_view(self, state, s, i, schedule):
        return {"x": state["x"]}

"""O-BELM: the optimal 2-step bidirectional explicit linear multistep sampler (Wang et al., "BELM: Bidirectional
Explicit Linear Multi-step Sampler for Exact Inversion in Diffusion Models", NeurIPS 2024, arXiv 2410.07273;
official code zituitui/BELM ``samplers/BELM.py``).

In the paper's variables xbar = x_vp / alpha and t = sigma_vp / alpha, with h_i = t_i - t_{i-1}:

    xbar_{i-1} = (h_i^2 / h_{i+1}^2) xbar_{i+1} + (1 - h_i^2 / h_{i+1}^2) xbar_i - h_i (h_i + h_{i+1}) / h_{i+1} eps_i

For eps/v models xbar is exactly ComfyUI's x, t is ComfyUI's sigma and eps is ``base.derivative``'s d, so with
r = h_i / h_{i+1} (this step over the one above) the step is a variable-step leapfrog on ComfyUI's x:

    x_down = x + r^2 (x_up - x) + (s_down - s)(1 + r) d(x, s)

It is second order for any step sizes (the r^2 weight cancels the h^2 term of the two Taylor expansions).
Flow models use the same formula in their own ComfyUI coordinates (Euler transfer, algorithms.md §10.1:
d the velocity, h differences of sigma), so nothing divides by alpha and flow grids may start at sigma = 1.

Given the model output at the middle state, the step is affine in x_up, so inversion is its algebraic
inverse ``x_up = x + (x_down - x - (s_down - s)(1 + r) d) / r^2``: one model call per step either way. As in
the reference, the first sampling step from noise alone and the first inversion step from the clean latent
are DDIM; the inverted state is the pair (x at sigmas[0], x_next at sigmas[1]).

Not bit-exact (unlike BDIA at gamma = 1): the step's linear part maps the pair (x_up, x) to (x, x_down) with
determinant -r^2, so it changes the pair's volume and is no bijection of any fixed float lattice. Sampling undoes
inversion up to rounding, amplified by at most ``sampling_gain`` (and CFG stiffness): ~1e-15 relative in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Denoiser, Solver, State, derivative
from .ddim import ddim_step, inversion_derivative
from .ddim import sample_step as ddim_sample_step
from .schedule import Schedule

#: expected relative round-trip error (sampling_gain x the state dtype's eps) above which ``warnings`` reports it.
ROUNDING_WARN = 5e-6


def belm_coefficients(s_up: Tensor | float, s: Tensor | float, s_down: Tensor | float) -> tuple[float, float]:
    """(r^2, c) of the O-BELM step through level s: ``x_down = x + r^2 (x_up - x) + c d(x, s)``.

    r = (s - s_down) / (s_up - s) is the ratio of this step to the one above (h_i / h_{i+1} in the
    paper) and c = (s_down - s)(1 + r) = -h_i (h_i + h_{i+1}) / h_{i+1}. Computed in float64.
    """
    s_up, s, s_down = float(s_up), float(s), float(s_down)
    if not s_up > s > s_down:
        raise ValueError(f"BELM step needs s_up > s > s_down, got {s_up}, {s}, {s_down}")
    r = (s - s_down) / (s_up - s)
    return r * r, (s_down - s) * (1.0 + r)


def sampling_gain(sigmas: Tensor) -> float:
    """How much sampling can amplify a perturbation of the recursion's parasitic mode (for a slowly varying d).

    With d frozen, the step x_down = (1 - r^2) x + r^2 x_up + ... has the roots 1 and -r^2, r = h_i / h_{i+1}.
    A perturbation made at the step of size h_j is multiplied by the r^2 of the later steps, a product that
    telescopes to (h_last / h_j)^2. The gain is the largest of these, (h_last / min h)^2 >= 1. It is 1 on grids
    whose steps shrink towards the clean end (lambda-uniform vp grids); on Karras grids ending at 0 the last
    step (sigma_min -> 0) outgrows the ones before it from ~20 steps on (gain 20 at 50 steps, 380 at 200); flow's
    shift-3 grids have steps 9 times larger at the clean end (gain 49-81). Inversion runs the other way and damps
    what sampling amplifies, so this bounds how rounding grows in a round trip; a stiff d (strong CFG) adds to it.
    """
    s = sigmas.detach().to("cpu", torch.float64)
    h = s[:-1] - s[1:]
    return float((h[-1] / h.min()) ** 2)


class BELM(Solver):
    """O-BELM: exact inversion with a second-order two-step recursion on (x, x_next); 1 model call per step.

    Sampling from the inverted pair runs the recursion directly (N - 1 model calls; the first callback reports
    ``x_next`` with no denoised estimate); from ``{"x": noise}`` alone it takes a DDIM start-up step first.
    A 1-step grid has no BELM step: inversion is one DDIM step and the pair's ``x_next`` is the input itself,
    so sampling from it returns the input whatever the prompt (``warnings`` says so).
    """

    name = "belm"
    latent_names = ("x", "x_next")
    exact = True

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        out = super().warnings(sigmas, schedule)
        steps = len(sigmas) - 1
        if steps == 1:
            out.append("BELM: a 1-step grid has no BELM step: the inverted pair holds the input latent itself, "
                       "so sampling from it returns the input unchanged (an edit has no effect). Use more steps.")
        gain = sampling_gain(sigmas)
        expected = gain * torch.finfo(self.state_dtype).eps
        if expected > ROUNDING_WARN:
            out.append(f"BELM: the grid's last step is {gain ** 0.5:.3g} times its smallest, so sampling amplifies "
                       f"rounding by up to ~{gain:.2g} (more with strong CFG): a {self.state_dtype_name} round trip "
                       f"may be off by ~{expected:.1g}. Use state_dtype='float64'.")
        return out

    # --- inversion: state {"x": at s[i], "x_below": at s[i + 1]} ------------------------------------------

    def invert_step(self, denoise: Denoiser, state: State, s: Tensor, i: int, schedule: Schedule
                    ) -> tuple[State, Tensor, dict[str, Any] | None]:
        x = state["x"]
        if "x_below" not in state:  # start-up: DDIM inversion s[n] -> s[n-1] (target label at sigma = 0)
            d, denoised = inversion_derivative(denoise, x, s[i], s[i - 1], schedule, "current")
            return {"x": ddim_step(x, d, s[i], s[i - 1]), "x_below": x}, denoised, None
        up, denoised = self._up(denoise, state["x_below"], x, s[i - 1], s[i], s[i + 1])
        return {"x": up, "x_below": x}, denoised, None

    def inverted(self, state: State, s: Tensor, schedule: Schedule) -> dict[str, Tensor]:
        return {"x": state["x"], "x_next": state["x_below"]}

    # --- sampling: state {"x": at s[i], "x_prev": at s[i - 1]} -------------------------------------------

    def start_sampling(self, x: Tensor, latents: dict[str, Tensor], s: Tensor, schedule: Schedule) -> State:
        if "x_next" not in latents:
            return {"x": x}  # plain generation: the first step is a DDIM start-up
        x_next = latents["x_next"]
        if x_next.shape != x.shape:
            raise ValueError(f"BELM latents: 'x_next' has shape {tuple(x_next.shape)} but 'x' has {tuple(x.shape)}")
        if not torch.isfinite(x_next).all():
            raise ValueError("BELM latents: 'x_next' contains NaN or infinity")
        return {"x": x_next.to(self.state_dtype), "x_prev": x}

    def sample_step(self, denoise: Denoiser, state: State, s: Tensor, i: int, schedule: Schedule
                    ) -> tuple[State, Tensor | None]:
        x = state["x"]
        if "x_prev" not in state:
            down, denoised = ddim_sample_step(denoise, x, s[i], s[i + 1])
            return {"x": down, "x_prev": x}, denoised
        if i == 0:  # the inverted pair already holds the state one step down: no model call
            return state, None
        down, denoised = self._down(denoise, state["x_prev"], x, s[i - 1], s[i], s[i + 1])
        return {"x": down, "x_prev": x}, denoised

    def hook_view(self, state: State, s: Tensor, i: int, schedule: Schedule) -> dict[str, Tensor]:
        return {"x": state["x"], "x_prev": state["x_prev"]}

    def from_hook(self, state: State, given: dict[str, Tensor], view: dict[str, Tensor], s: Tensor, i: int,
                  schedule: Schedule) -> State:
        return {"x": view["x"].to(self.state_dtype), "x_prev": view["x_prev"].to(self.state_dtype)}

    # --- the step and its inverse --------------------------------------------------------------------

    @staticmethod
    def _down(denoise: Denoiser, x_up: Tensor, x: Tensor, s_up: Tensor, s: Tensor, s_down: Tensor
              ) -> tuple[Tensor, Tensor]:
        """x at s_down from (x_up at s_up, x at s): x + r^2 (x_up - x) + c d(x, s)."""
        r2, c = belm_coefficients(s_up, s, s_down)
        d, denoised = derivative(denoise, x, s)
        return x + r2 * (x_up - x) + c * d, denoised

    @staticmethod
    def _up(denoise: Denoiser, x_down: Tensor, x: Tensor, s_up: Tensor, s: Tensor, s_down: Tensor
            ) -> tuple[Tensor, Tensor]:
        """x at s_up from (x_down at s_down, x at s): the exact inverse of ``_down`` for the same d(x, s)."""
        r2, c = belm_coefficients(s_up, s, s_down)
        d, denoised = derivative(denoise, x, s)
        return x + (x_down - x - c * d) / r2, denoised


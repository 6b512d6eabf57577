"""AIDI: DDIM inversion made (nearly) exact by fixed-point iteration (Pan et al., "Effective Real Image Editing
with Accelerated Iterative Diffusion Inversion", ICCV 2023, §3.1-3.2).

Inversion step from r (cleaner) to s (noisier): the exact DDIM inverse is the state z at s whose
DDIM sampling step lands on x_r, i.e. the fixed point of

    f(z) = x_r - (s_r - s_s) * d(z, s_s)          (ComfyUI coordinates, d = (z - x0_hat)/s_s)

which is section 4.1's ``sqrt(abar_t/abar_{t-1}) z_{t-1} + [...] eps_t(z)`` divided by alpha_t: the
model is evaluated at the unknown z with the target (noisier) label.

Start z^0: the paper's z^0 = z_{t-1} is x_r seen at the target label with the same model input
(``relabel``; then z^1 = f(z^0) is the "t+1" DDIM inversion). With ``warm_start`` (default) every
step after the first starts instead from the current-label DDIM inversion x_r + (s_s - s_r) d(x_r, s_r),
whose d is free: the previous step's last f evaluated it at the returned iterate. It is O(h^2) from
the fixed point instead of O(h) and saves about one evaluation per step (test_warm_start_...).

Accelerations (per sample of the batch, i.e. per index of dim 0):

* ``E``: z^{i+1} = (f(z^{i-1}) + f(z^i)) / 2; converges for Jacobian eigenvalues in (-2, 1).
* ``A``: Anderson mixing over the last ``m`` + 1 residuals, solved in float64 with a ridge.
* ``P``: plain Picard z^{i+1} = f(z^i) (reference; converges for |mu| < 1).

Which iterate is returned (the z^I / z^{I+1} ambiguity of Alg. 1): the measured iterate with the
smallest residual, normally the last one whose f was evaluated, z^I. For any z, DDIM sampling from
z lands on x_r - (f(z) - z), so the returned iterate's residual ||f(z) - z|| IS its one-step
reconstruction error; z^{I+1} would need one more NFE to be checked. Cost: f(z^0), ..., f(z^I), i.e.
at most I + 1 model evaluations per step (the paper's ~140 passes for 20 steps at I = 6). Early exit
once the relative residual ||f(z) - z|| / ||z|| <= tol.

tol = 1e-8: since the residual is the step's reconstruction error, 1e-8 is far below anything
visible (a VAE round trip alone is ~1e-2) yet reachable within I = 6 with an exact float64 model
(test bed, 20 steps, w = 1). A float32/float16 network floors the residual at its own noise
(~1e-6..1e-4); then the cap I decides, as with the paper's fixed I. tol = 0 always runs I iterations.
Batch elements (dim 0) are solved independently: each has its own Anderson weights, residual and
returned iterate, and one that has converged is held while the others go on.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import Solver, derivative, relabel
from .ddim import sample_step
from .fixed_point import Variant, solve_fixed_point


class AIDI(Solver):
    """Fixed-point DDIM inversion (AIDI_E / AIDI_A); sampling is plain DDIM.

    Each inversion step's statistics (iterations, nfe, residuals, converged) come back in ``invert``'s
    ``Latents.stats``.
    """

    name = "aidi"

    def __init__(
        self,
        variant: Variant = "A",
        max_iter: int = 6,
        tol: float = 1e-8,
        window: int = 3,
        warm_start: bool = True,
        state_dtype: str = "float64",
    ) -> None:
        super().__init__(state_dtype)
        if variant not in ("E", "A", "P"):
            raise ValueError(f"variant must be 'E', 'A' or 'P' (plain Picard), got {variant!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        if not tol >= 0.0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        if not isinstance(window, int) or not 1 <= window <= 10:
            raise ValueError(f"window (Anderson m) must be an integer in [1, 10], got {window!r}")
        self.variant: Variant = variant
        self.max_iter = max_iter
        self.tol = float(tol)
        self.window = window
        self.warm_start = bool(warm_start)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "variant": self.variant,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "window": self.window,
            "warm_start": self.warm_start,
        }

    def nfe_per_step(self) -> int:
        """Inversion upper bound (max_iter + 1); sampling costs 1. Actual counts: ``Latents.nfe``."""
        return self.max_iter + 1

    def invert_step(self, denoise, state, s, i, schedule):
        """One step s[i] -> s[i-1]; the state carries d(x, s[i]) for the next warm start."""
        x_r, d_r, s_r, s_s = state["x"], state.get("d"), s[i], s[i - 1]
        h = (s_s - s_r).to(x_r.dtype)
        last: dict[str, Tensor] = {}

        def f(z: Tensor) -> Tensor:
            d, last["denoised"] = derivative(denoise, z, s_s)
            return x_r + h * d

        if self.warm_start and d_r is not None:
            z0 = x_r + h * d_r  # current-label DDIM inversion: O(h^2) from the fixed point, no extra NFE
        else:
            z0 = relabel(x_r, schedule, s_r, s_s)  # the paper's z^0 = z_{t-1} (same model input)
        out = solve_fixed_point(f, z0, self.variant, self.max_iter, self.tol, self.window)
        stats = {
            "sigma_from": float(s_r),
            "sigma_to": float(s_s),
            "iterations": out.iterations,
            "nfe": out.nfe,
            "residual": out.residual,
            "residuals": out.residuals,
            "converged": out.converged,
        }
        new = {"x": out.z, "d": (out.fz - x_r) / h} if self.warm_start else {"x": out.z}
        return new, last["denoised"], stats

    def inverted(self, state, s, schedule):
        return {"x": state["x"]}

    def sample_step(self, denoise, state, s, i, schedule):
        x, denoised = sample_step(denoise, state["x"], s[i], s[i + 1])
        return {"x": x}, denoised

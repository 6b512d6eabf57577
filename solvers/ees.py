"""EES(2,5) and EES(2,7): explicit, effectively symmetric Runge-Kutta (Shmelev et al., "Explicit and
Effectively Symmetric Runge-Kutta Methods", 2025; tableaux as in kauri and diffrax).

Order 2, but a step followed by the same tableau with the negative step is the identity up to
O(h^6) (EES25) / O(h^8) (EES27) locally, so invert-then-sample is O(h^5) / O(h^7). Inversion runs
the same tableau with a negative step over the same grid (section 5.4).

Time variable and state (``time_variable``):

* ``lambda`` (vp default): half log-SNR lambda with the model's own state z = scale * x, the
  "x-state" form of section 5.5: dz/dlambda = alpha * x0_hat + (dlog s/dlambda) * z. For vp this is
  alpha * x0_hat - alpha^2 * z, 20-50x more accurate than the eps/x0 rescaled forms at equal N.
* ``sigma`` (flow default): ComfyUI's sigma with state x, dx/dsigma = d (the velocity for flow).
  Flow grids start at exactly sigma = 1, where lambda = -inf; in sigma the field is regular there,
  so every flow step, the first included, is a full EES step. Rectified flows are trained to be
  near-straight in sigma, which is also the variable their own samplers step in.

Steps the tableau cannot take are DDIM steps: the step to/from sigma = 0 (in both variables: the
model gives no information at sigma = 0, and lambda = +inf there) and, with lambda time, flow's step
from sigma = 1 (lambda = -inf). Sampling takes them as Euler steps. Inversion takes the step from
sigma = 0 implicitly by default (``clean_step='implicit'``): it solves for the state whose Euler
sampling step lands exactly on the clean latent (AIDI's fixed point, Anderson, <= 9 extra model
evaluations once), so that step round-trips to its residual (1e-10) instead of O(h^2);
``'explicit'`` uses ``ddim.inversion_derivative`` (target label from sigma = 0). Other DDIM steps
invert explicitly (current label) and are first order: ``warnings`` reports them.

Stages are evaluated at their own in-between sigma (the denoiser gets that sigma).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .base import Denoiser, Solver, derivative
from .ddim import ddim_step, inversion_derivative
from .fixed_point import solve_fixed_point
from .schedule import Schedule

TimeVariable = Literal["auto", "lambda", "sigma"]
CleanStep = Literal["implicit", "explicit"]

#: Anderson iterations and relative tolerance for the implicit inversion of the step from sigma = 0.
CLEAN_STEP_MAX_ITER = 8
CLEAN_STEP_TOL = 1e-10


@dataclass(frozen=True)
class Tableau:
    """An explicit Butcher tableau (A strictly lower triangular)."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    @property
    def stages(self) -> int:
        return len(self.b)

    def stability_coefficients(self) -> list[float]:
        """Coefficients r_k of R(z) = sum_k r_k z^k, R(z) = 1 + z b^T (I - zA)^-1 1 (A nilpotent)."""
        a = torch.tensor(self.a, dtype=torch.float64)
        b = torch.tensor(self.b, dtype=torch.float64)
        v = torch.ones(self.stages, dtype=torch.float64)
        coeffs = [1.0]
        for _ in range(self.stages):
            coeffs.append(float(b @ v))
            v = a @ v
        return coeffs


def ees25_tableau(x: float = 0.1) -> Tableau:
    """EES(2,5; x), 3 stages (kauri ``EES25``); x = 1/10 minimises the next order conditions."""
    a21 = (1 + 2 * x) / (4 * (1 - x))
    a31 = (4 * x - 1) ** 2 / (4 * (x - 1) * (1 - 4 * x * x))
    a32 = (1 - x) / (1 - 4 * x * x)
    return Tableau(
        name=f"EES(2,5;{x:g})",
        a=((0.0, 0.0, 0.0), (a21, 0.0, 0.0), (a31, a32, 0.0)),
        b=(x, 0.5, 0.5 - x),
        c=(0.0, a21, a31 + a32),
    )


def ees27_tableau() -> Tableau:
    """EES(2,7; (5 - 3 sqrt 2)/14), 4 stages, the "plus" branch (diffrax ``_ees27_tableau``)."""
    s = math.sqrt(2.0)
    a21 = (2 - s) / 3
    a31, a32 = (-4 + s) / 24, (4 + s) / 8
    a41, a42, a43 = (-176 + 145 * s) / 168, 3 * (8 - 5 * s) / 56, 3 * (3 - s) / 7
    return Tableau(
        name="EES(2,7)",
        a=((0.0,) * 4, (a21, 0.0, 0.0, 0.0), (a31, a32, 0.0, 0.0), (a41, a42, a43, 0.0)),
        b=((5 - 3 * s) / 14, (3 + s) / 14, 3 * (-1 + 2 * s) / 14, (9 - 4 * s) / 14),
        c=(0.0, a21, a31 + a32, a41 + a42 + a43),
    )


class _EES(Solver):
    """Shared driver: one tableau, stepped forward (sampling) or with negative steps (inversion)."""

    tableau: ClassVar[Tableau]

    def __init__(
        self, time_variable: TimeVariable = "auto", clean_step: CleanStep = "implicit", state_dtype: str = "float64"
    ) -> None:
        super().__init__(state_dtype)
        if time_variable not in ("auto", "lambda", "sigma"):
            raise ValueError(f"time_variable must be 'auto', 'lambda' or 'sigma', got {time_variable!r}")
        if clean_step not in ("implicit", "explicit"):
            raise ValueError(f"clean_step must be 'implicit' or 'explicit', got {clean_step!r}")
        self.time_variable: TimeVariable = time_variable
        self.clean_step: CleanStep = clean_step

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "tableau": self.tableau.name,
            "time_variable": self.time_variable,
            "clean_step": self.clean_step,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> _EES:
        """``params()`` names the tableau for the record; it is fixed by the class, so check it."""
        rest = dict(params)
        name = rest.pop("tableau", cls.tableau.name)
        if name != cls.tableau.name:
            raise ValueError(f"{cls.name}: stored tableau {name!r} is not {cls.tableau.name!r}")
        return cls(**rest)

    def nfe_per_step(self) -> int:
        return self.tableau.stages

    def resolved_time(self, schedule: Schedule) -> Literal["lambda", "sigma"]:
        """The time variable used for this schedule: lambda for vp, sigma for flow unless set."""
        if self.time_variable != "auto":
            return self.time_variable
        return "lambda" if schedule.kind == "vp" else "sigma"

    def _singular(self, sigma: Tensor, schedule: Schedule, time: str) -> bool:
        """True where the time variable is infinite: sigma = 0, or flow sigma = 1 in lambda."""
        return bool(sigma == 0) or (time == "lambda" and schedule.kind == "flow" and bool(sigma >= 1))

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        out = super().warnings(sigmas, schedule)
        s = sigmas.detach().to("cpu", torch.float64)
        time = self.resolved_time(schedule)
        name = self.tableau.name
        if self._singular(s[0], schedule, time):
            out.append(
                f"{name}: the first step starts at sigma = 1 where lambda = -inf; it is a DDIM step (first order, "
                "not near-reversible). Use time_variable='sigma' (the flow default)."
            )
        if self._singular(s[-1], schedule, time) and self.clean_step == "explicit":
            out.append(
                f"{name}: the last step ends at sigma = 0, where the model gives no information; it is a DDIM step "
                "and clean_step='explicit' inverts it to first order only. Use clean_step='implicit' (default) or "
                "end the grid at a sigma > 0."
            )
        return out

    def invert_step(self, denoise, state, s, i, schedule):
        """A step with a negative step size; the implicit step from sigma = 0 reports its fixed-point stats."""
        x, denoised, stats = self._step(denoise, state["x"], s[i], s[i - 1], schedule, inverse=True)
        return {"x": x}, denoised, stats

    def sample_step(self, denoise, state, s, i, schedule):
        x, denoised, _ = self._step(denoise, state["x"], s[i], s[i + 1], schedule, inverse=False)
        return {"x": x}, denoised

    def _step(
        self, denoise: Denoiser, x: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule, inverse: bool
    ) -> tuple[Tensor, Tensor, dict[str, Any] | None]:
        time = self.resolved_time(schedule)
        if self._singular(s_from, schedule, time) or self._singular(s_to, schedule, time):
            return self._ddim_step(denoise, x, s_from, s_to, schedule, inverse)
        if time == "sigma":
            stage_sigmas = [s_from + c * (s_to - s_from) for c in self.tableau.c]
            return (*self._rk(lambda z, sg: derivative(denoise, z, sg), x, s_to - s_from, stage_sigmas), None)
        return (*self._lambda_step(denoise, x, s_from, s_to, schedule), None)

    def _ddim_step(
        self, denoise: Denoiser, x: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule, inverse: bool
    ) -> tuple[Tensor, Tensor, dict[str, Any] | None]:
        """A DDIM step where the time variable is infinite (see the module docstring).

        Inverting the step from sigma = 0 with ``clean_step='implicit'`` solves for the state whose
        DDIM sampling step lands exactly on x (AIDI's fixed point, Anderson-accelerated, at most
        CLEAN_STEP_MAX_ITER + 1 model evaluations), so that step round-trips to its residual.
        """
        if not inverse:
            d, denoised = derivative(denoise, x, s_from)
            return ddim_step(x, d, s_from, s_to), denoised, None
        d, denoised = inversion_derivative(denoise, x, s_from, s_to, schedule, "current")
        z0 = ddim_step(x, d, s_from, s_to)
        if not (self.clean_step == "implicit" and s_from == 0):
            return z0, denoised, None
        h = (s_to - s_from).to(x.dtype)
        last: dict[str, Tensor] = {}

        def f(z: Tensor) -> Tensor:
            dz, last["denoised"] = derivative(denoise, z, s_to)
            return x + h * dz

        out = solve_fixed_point(f, z0, "A", CLEAN_STEP_MAX_ITER, CLEAN_STEP_TOL, 3)
        stats = {"clean_step": True, "iterations": out.iterations, "nfe": out.nfe, "residual": out.residual,
                 "converged": out.converged}
        return out.z, last["denoised"], stats

    def _lambda_step(
        self, denoise: Denoiser, x: Tensor, s_from: Tensor, s_to: Tensor, schedule: Schedule
    ) -> tuple[Tensor, Tensor]:
        """One step in lambda on z = scale * x: dz/dlambda = alpha * x0_hat + dlogsigma_dlambda * z."""

        def field(z: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
            denoised = denoise(z / schedule.scale(sigma).to(z.dtype), sigma).to(z.dtype)
            rate = schedule.dlogsigma_dlambda(sigma).to(z.dtype)
            return schedule.alpha(sigma).to(z.dtype) * denoised + rate * z, denoised

        lam_from = schedule.lam(s_from)
        h = schedule.lam(s_to) - lam_from
        # stage 1 sits on the grid level itself: pass that sigma exactly, not a round trip through lambda
        stage_sigmas = [s_from] + [schedule.sigma_from_lambda(lam_from + c * h) for c in self.tableau.c[1:]]
        z = schedule.scale(s_from).to(x.dtype) * x
        z, denoised = self._rk(field, z, h, stage_sigmas)
        return z / schedule.scale(s_to).to(x.dtype), denoised

    def _rk(
        self,
        field: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
        y: Tensor,
        h: Tensor,
        stage_sigmas: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """One explicit RK step of size h; ``field(y, sigma) -> (dy/dt, x0_hat)``, stage j at stage_sigmas[j].

        Returns the new state and the first stage's x0_hat (the estimate at the step's start level).
        """
        tab = self.tableau
        ks: list[Tensor] = []
        denoised: Tensor | None = None
        for j in range(tab.stages):
            yj = y
            for m, a in enumerate(tab.a[j][:j]):
                if a != 0.0:
                    yj = yj + (h * a).to(y.dtype) * ks[m]
            kj, den = field(yj, stage_sigmas[j])
            ks.append(kj)
            denoised = den if denoised is None else denoised
        out = y
        for bj, kj in zip(tab.b, ks, strict=True):
            out = out + (h * bj).to(y.dtype) * kj
        assert denoised is not None
        return out, denoised


class EES25(_EES):
    """EES(2,5; 1/10): 3 model evaluations per step, round trip O(h^5)."""

    name = "ees25"
    tableau = ees25_tableau()


class EES27(_EES):
    """EES(2,7; (5 - 3 sqrt 2)/14): 4 model evaluations per step, round trip O(h^7)."""

    name = "ees27"
    tableau = ees27_tableau()

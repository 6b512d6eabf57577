"""AIDI: DDIM inversion made (nearly) exact by fixed-point iteration (algorithms.md section 4).

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

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .base import Denoiser, Solver, StepCallback, StepHook, derivative, relabel
from .ddim import DDIM
from .schedule import Schedule

Variant = Literal["E", "A", "P"]

#: Anderson ridge, relative to the diagonal of the residual Gram matrix.
ANDERSON_RIDGE = 1e-10
#: stop iterating once the absolute residual exceeds this multiple of the initial one (divergence).
DIVERGENCE_FACTOR = 1e6


@dataclass
class FixedPointResult:
    """Outcome of ``solve_fixed_point``: the chosen iterate and how it was reached.

    Batch elements (dim 0) are independent problems: each keeps its own best iterate.
    """

    z: Tensor
    fz: Tensor  # f(z) at the returned iterate
    iterations: int  # largest k over the batch of the returned iterates z^k
    nfe: int  # evaluations of f (each on the whole batch)
    residual: float  # max over the batch of ||f(z) - z|| / ||z|| at the returned iterate
    residuals: list[float] = field(default_factory=list)  # the same for the iterates z^0, z^1, ...
    abs_residuals: list[float] = field(default_factory=list)  # ||f(z^k) - z^k|| over the whole tensor
    converged: bool = False


def _per_sample(t: Tensor) -> Tensor:
    """(batch, n) view: dim 0 is the batch for ndim >= 2, else a single sample."""
    return t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(1, -1)


def _batch_shape(like: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a (batch,) vector against ``like``."""
    return (-1,) + (1,) * (like.ndim - 1) if like.ndim >= 2 else ()


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per batch element: a where mask else b."""
    return torch.where(mask.to(a.device).reshape(_batch_shape(a)), a, b)


def relative_residuals(fz: Tensor, z: Tensor) -> Tensor:
    """Per batch element ||f(z) - z|| / ||z||, float64 on the CPU."""
    g = _per_sample(fz - z).norm(dim=1).cpu().to(torch.float64)
    zz = _per_sample(z).norm(dim=1).cpu().to(torch.float64)
    return g / zz.clamp_min(1e-300)


def anderson_weights(residuals: list[Tensor], ridge: float = ANDERSON_RIDGE) -> Tensor:
    """Per-sample gamma (batch, k), float64 on the CPU, minimising ||sum_j gamma_j g_j|| with sum gamma = 1.

    gamma = R^-1 1 / (1^T R^-1 1) with R = G^T G + ridge * diag(G^T G): the ridge is relative to each
    residual's own squared norm, so it regularises near-collinear residuals without stalling once
    the newest residual is orders of magnitude below the oldest (a ridge relative to the mean
    diagonal caps the reduction per window at about sqrt(ridge)). Solved Jacobi-scaled (unit
    diagonal). The Gram matrix is formed in the residuals' dtype on their device; only the k x k
    solve moves to float64 on the CPU. A sample with an exactly zero residual takes that iterate.
    """
    g = torch.stack([_per_sample(r) for r in residuals], dim=2)  # (batch, n, k)
    gram = (g.transpose(1, 2) @ g).cpu().to(torch.float64)
    batch, k = gram.shape[0], gram.shape[1]
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    exact = diag.min(dim=1)
    inv_d = 1.0 / diag.clamp_min(1e-300).sqrt()  # D^-1
    scaled = gram * inv_d[:, :, None] * inv_d[:, None, :] + ridge * torch.eye(k, dtype=torch.float64)
    w = inv_d * torch.linalg.solve(scaled, inv_d[:, :, None]).squeeze(-1)  # D^-1 (Rn + ridge I)^-1 D^-1 1
    w = w / w.sum(dim=1, keepdim=True)
    fallback = torch.nn.functional.one_hot(exact.indices, k).to(torch.float64)
    bad = (exact.values <= 0) | ~torch.isfinite(w).all(dim=1)
    return torch.where(bad[:, None], fallback, w).reshape(batch, k)


def _combine(values: list[Tensor], weights: Tensor) -> Tensor:
    """sum_j weights[b, j] * values[j][b] per batch element b, in the dtype of the values."""
    like = values[0]
    w = weights.to(like.dtype).to(like.device)
    return sum((w[:, j].reshape(_batch_shape(like)) * v for j, v in enumerate(values)), torch.zeros_like(like))


def _diverged(abs_hist: list[float]) -> bool:
    """The absolute residual is non-finite or has grown by DIVERGENCE_FACTOR since z^0."""
    return not math.isfinite(abs_hist[-1]) or abs_hist[-1] > DIVERGENCE_FACTOR * abs_hist[0]


def solve_fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    variant: Variant = "A",
    max_iter: int = 6,
    tol: float = 1e-8,
    window: int = 3,
) -> FixedPointResult:
    """Iterate z = f(z) from z0 with f cached: exactly one new f evaluation per iteration.

    Stops once every batch element's best relative residual is <= tol, after ``max_iter``
    iterations (max_iter + 1 evaluations of f), or when the residual diverges. A batch element
    that has reached tol is held at its best iterate while the others go on.
    """
    zs: deque[Tensor] = deque(maxlen=window + 1)
    fs: deque[Tensor] = deque(maxlen=window + 1)
    zs.append(z0)
    fs.append(f(z0))
    r = relative_residuals(fs[-1], z0)
    hist, abs_hist = [float(r.max())], [float((fs[-1] - z0).norm())]
    best_r, best_k = r.clone(), torch.zeros_like(r, dtype=torch.long)
    best_z, best_f = z0, fs[-1]
    for i in range(max_iter):
        if float(best_r.max()) <= tol or _diverged(abs_hist):
            break
        if variant == "P" or i == 0:
            z_next = fs[-1]
        elif variant == "E":
            z_next = 0.5 * fs[-2] + 0.5 * fs[-1]
        else:
            z_next = _combine(list(fs), anderson_weights([fz - z for z, fz in zip(zs, fs, strict=True)]))
        z_next = _where(best_r <= tol, best_z, z_next)
        zs.append(z_next)
        fs.append(f(z_next))
        r = relative_residuals(fs[-1], z_next)
        hist.append(float(r.max()))
        abs_hist.append(float((fs[-1] - z_next).norm()))
        better = r < best_r
        best_r = torch.where(better, r, best_r)
        best_k = torch.where(better, torch.full_like(best_k, i + 1), best_k)
        best_z, best_f = _where(better, z_next, best_z), _where(better, fs[-1], best_f)
    residual = float(best_r.max())
    return FixedPointResult(best_z, best_f, int(best_k.max()), len(hist), residual, hist, abs_hist, residual <= tol)


class AIDI(Solver):
    """Fixed-point DDIM inversion (AIDI_E / AIDI_A); sampling is plain DDIM."""

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
        #: per inversion step (in walking order): iterations, nfe, residual, residuals, converged, sigmas.
        self.last_stats: list[dict[str, Any]] = []

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
        """Inversion upper bound (max_iter + 1); sampling costs 1. Actual counts: ``last_stats``."""
        return self.max_iter + 1

    @property
    def last_nfe(self) -> int:
        """Model evaluations spent by the last ``invert``."""
        return sum(st["nfe"] for st in self.last_stats)

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
        self.last_stats = []
        d_prev: Tensor | None = None  # d(x, s[i]) from the previous step's last f, when warm starting
        for k, i in enumerate(range(n, 0, -1)):
            x, d_prev, stats, denoised = self._invert_step(denoise, x, d_prev, s[i], s[i - 1], schedule)
            self.last_stats.append({"step": k, **stats})
            if callback is not None:
                callback(k, n, x, denoised)
        return {"x": x}

    def _invert_step(
        self, denoise: Denoiser, x_r: Tensor, d_r: Tensor | None, s_r: Tensor, s_s: Tensor, schedule: Schedule
    ) -> tuple[Tensor, Tensor | None, dict[str, Any], Tensor]:
        """One step s_r -> s_s; returns (z, d(z, s_s) for the next warm start, stats, last x0_hat)."""
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
        d_next = (out.fz - x_r) / h if self.warm_start else None
        return out.z, d_next, stats, last["denoised"]

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
            raise ValueError("AIDI latents: missing 'x'")
        return DDIM(state_dtype=self.state_dtype_name).sample(denoise, latents, sigmas, schedule, callback, hook)

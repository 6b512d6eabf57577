"""A generic fixed-point solver for z = f(z) on batched tensors: plain Picard, AIDI's averaging, Anderson.

AIDI's inversion steps (aidi.py) and EES's implicit step from sigma = 0 (ees.py) solve such problems; the
iteration knows nothing about diffusion. Batch elements (dim 0) are independent problems: each has its
own Anderson weights, residual and returned iterate, and one that has converged is held while the others
go on. The returned iterate is the measured one with the smallest residual.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

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

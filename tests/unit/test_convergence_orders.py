"""Convergence orders (fitted log-log slopes) and the EES tableaux' reversibility.

Setting of the closed-form test bed (testbed/gmm.py): lambda-uniform grids on lambda in [-4, 4] (both ends finite),
N = 10 ... 160, float64, w = 1, a high-accuracy DOP853 reference. Slopes are least-squares fits of
log(error) on log(1/N).

Tolerances: sampling orders +-0.35. Observed: DDIM 0.97, BDIA(1) 1.92-1.95, EES 1.96-2.03 and
BDIA(0.5) 0.77-0.86: its error ratio per halving climbs 1.4, 1.7, 1.9, 1.9 towards 2 (at coarse
steps the (gamma - 1) c h^2 local term is partly cancelled), so the 10..160 fit sits below 1. A
wrong order would be off by about 1. The round-trip defects converge like h^5 / h^7
only once the lambda step is small: from N = 10 (step 0.8) to 20 the error ratio is 8-19 for
EES(2,5) (32 asymptotically) and 25-48 for EES(2,7) (128). Both are fitted on N = 20..160, where
the observed slopes are 4.9 and 7.1 (full 10..160 fits: 4.5-4.7 and 6.6-6.8), with +-0.4: far from
the neighbouring odd orders and from the 2 of a merely second-order scheme.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from solvers import BDIA, DDIM, EES25, EES27, Schedule
from solvers.ees import ees25_tableau, ees27_tableau
from testbed import gmm as G

NS = [10, 20, 40, 80, 160]


@functools.cache
def _problem(prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T at the top of the lambda grid, reference x at its bottom)."""
    bed = G.Bed()
    grid = G.lambda_grid(prediction, 10)
    xT = bed.noisy(prediction, grid)
    ref = G.reference_solution(bed.denoiser(prediction), prediction, xT, float(grid[0]), float(grid[-1]))
    return xT, ref


def sampling_errors(bed, make, prediction: str) -> list[float]:
    xT, ref = _problem(prediction)
    den, sched = bed.denoiser(prediction), Schedule.for_prediction(prediction)
    return [G.rel_error(make().sample(den, {"x": xT}, G.lambda_grid(prediction, n), sched), ref) for n in NS]


def roundtrip_errors(bed, make, prediction: str, ns: list[int]) -> list[float]:
    _, x0 = _problem(prediction)
    den, sched = bed.denoiser(prediction), Schedule.for_prediction(prediction)
    out = []
    for n in ns:
        grid, solver = G.lambda_grid(prediction, n), make()
        out.append(G.rel_error(solver.sample(den, solver.invert(den, x0, grid, sched), grid, sched), x0))
    return out


CASES = {
    "ddim": (DDIM, 1.0),
    "bdia_gamma1": (lambda: BDIA(1.0), 2.0),
    "bdia_gamma05": (lambda: BDIA(0.5), 1.0),
    "ees25": (EES25, 2.0),
    "ees27": (EES27, 2.0),
}


@pytest.mark.parametrize("prediction", ["eps", "flow"])
@pytest.mark.parametrize("case", list(CASES))
def test_sampling_order(bed, case: str, prediction: str) -> None:
    make, order = CASES[case]
    errs = sampling_errors(bed, make, prediction)
    slope = G.fitted_order(NS, errs)
    assert abs(slope - order) <= 0.35, (case, prediction, slope, errs)


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_ees25_roundtrip_defect_is_fifth_order(bed, prediction: str) -> None:
    """Observed (eps): 8.3e-5 1.1e-5 4.6e-7 1.5e-8 4.6e-10 for N = 10..160."""
    ns = NS[1:]
    errs = roundtrip_errors(bed, EES25, prediction, ns)
    assert abs(G.fitted_order(ns, errs) - 5.0) <= 0.4, errs


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_ees27_roundtrip_defect_is_seventh_order(bed, prediction: str) -> None:
    """Observed (eps): 2.6e-5 5.4e-7 3.3e-9 2.7e-11 2.1e-13 for N = 10..160."""
    ns = NS[1:]
    errs = roundtrip_errors(bed, EES27, prediction, ns)
    assert abs(G.fitted_order(ns, errs) - 7.0) <= 0.4, errs


@pytest.mark.parametrize("cls, order, hs", [(EES25, 6.0, [0.4, 0.2, 0.1, 0.05]), (EES27, 8.0, [0.4, 0.2, 0.1])])
def test_ees_local_defect(bed, cls, order: float, hs: list[float]) -> None:
    """One step forth and back: x -> x + O(h^6) (EES25) / O(h^8) (EES27); h in lambda, above rounding."""
    sched = Schedule("vp")
    den = bed.denoiser("eps")
    lam0 = -0.5
    errs = []
    for h in hs:
        grid = sched.sigma_from_lambda(torch.tensor([lam0, lam0 + h], dtype=torch.float64))
        x = G.noised(bed.data, bed.noise, "eps", float(grid[0]))
        solver = cls()
        back = solver.invert(den, solver.sample(den, {"x": x}, grid, sched), grid, sched)["x"]
        errs.append(G.rel_error(back, x))
    assert abs(G.fitted_order([1 / h for h in hs], errs) - order) <= 0.5, errs


def _poly_mul(p: list[complex], q: list[complex]) -> list[complex]:
    out = [0j] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _eval(coeffs: list[float], z: complex) -> complex:
    return sum(c * z**k for k, c in enumerate(coeffs))


@pytest.mark.parametrize(
    "tableau, identity",
    [
        (ees25_tableau(), lambda z: 1 - z**6 / 64),
        (ees27_tableau(), lambda z: 1 + (17 - 12 * math.sqrt(2)) * z**8 / 64),
    ],
)
def test_stability_identity(tableau, identity) -> None:
    """R(z) R(-z) from the tableau (R = 1 + z b^T (I - zA)^-1 1) matches the closed form to 1e-14."""
    coeffs = tableau.stability_coefficients()
    gen = torch.Generator().manual_seed(0)
    re_im = torch.randn(2, 200, generator=gen, dtype=torch.float64)
    zs = torch.complex(re_im[0], re_im[1])
    for z in zs.tolist():
        lhs = _eval(coeffs, z) * _eval(coeffs, -z)
        assert abs(lhs - identity(z)) <= 1e-14 * max(1.0, abs(identity(z)), abs(z) ** (len(coeffs) * 2 - 2))
    # and as polynomials: R(z)R(-z) - 1 has a single term
    prod = _poly_mul(coeffs, [c * (-1) ** k for k, c in enumerate(coeffs)])
    nonzero = [k for k, c in enumerate(prod) if abs(c) > 1e-15]
    assert nonzero == [0, 6] if tableau.stages == 3 else nonzero == [0, 8]


@pytest.mark.parametrize("tableau", [ees25_tableau(), ees27_tableau()])
def test_tableau_consistency(tableau) -> None:
    """Row sums give c; order-2 conditions hold; values of section 5.3."""
    for row, c in zip(tableau.a, tableau.c, strict=True):
        assert sum(row) == pytest.approx(c, abs=1e-15)
    assert sum(tableau.b) == pytest.approx(1.0, abs=1e-15)
    assert sum(b * c for b, c in zip(tableau.b, tableau.c, strict=True)) == pytest.approx(0.5, abs=1e-15)


def test_tableau_values() -> None:
    t25 = ees25_tableau()
    assert t25.c == pytest.approx((0.0, 1 / 3, 5 / 6), abs=1e-15)
    assert t25.a[2][:2] == pytest.approx((-5 / 48, 15 / 16), abs=1e-15)
    assert t25.b == pytest.approx((0.1, 0.5, 0.4), abs=1e-15)
    t27 = ees27_tableau()
    assert t27.a[1][0] == pytest.approx(0.195262145875635, abs=1e-14)
    assert t27.a[3][:3] == pytest.approx((0.172981943714874, 0.049764224364350, 0.679622758982959), abs=1e-14)
    b27 = (0.054097093777194, 0.315300968740935, 0.391805812445612, 0.238796125036259)
    assert t27.b == pytest.approx(b27, abs=1e-14)

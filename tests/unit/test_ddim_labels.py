"""Timestep-label unit tests on a point mass (DDIM, Song et al. ICLR 2021, §4.3; its "t+1" inversion label as in
Mokady et al., CVPR 2023).

For a point-mass data distribution the exact eps is constant along every trajectory, so DDIM
sampling and current-label DDIM inversion are exact at any step count. Any label off by one grid
index (the "t+1" variant, or evaluating at the wrong grid index) breaks that.
"""

from __future__ import annotations

import pytest
import torch

from solvers import AIDI, BDIA, DDIM, EDICT, EES25, EES27, Schedule
from solvers.base import derivative
from solvers.ddim import ddim_step
from testbed import gmm as G

PREDICTIONS = ["eps", "v", "flow"]


class OffByOneDDIM(DDIM):
    """A deliberately wrong DDIM inversion: the model is evaluated at the next grid index's sigma."""

    name = "ddim_off_by_one"

    def invert(self, denoise, x0, sigmas, schedule, callback=None):
        x, s = self._prepare(x0, sigmas, schedule)
        for i in range(len(s) - 1, 0, -1):
            d, _ = derivative(denoise, x, s[i - 1])  # bug under test: should be s[i]
            x = ddim_step(x, d, s[i], s[i - 1])
        return {"x": x}


def point_mass_case(prediction):
    pm = G.point_mass(dim=4, seed=5)
    grid = G.lambda_grid(prediction, 20)  # lowest sigma e^-4 > 0
    noise = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x0 = G.noised(pm.means.expand(6, 4), noise, prediction, float(grid[-1]))
    return G.denoiser(prediction, pm), grid, x0, Schedule.for_prediction(prediction)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_current_label_is_exact_on_point_mass(prediction) -> None:
    den, grid, x0, sched = point_mass_case(prediction)
    assert G.roundtrip(DDIM("current"), den, x0, grid, sched) <= 1e-12


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_next_label_is_not(prediction) -> None:
    den, grid, x0, sched = point_mass_case(prediction)
    assert G.roundtrip(DDIM("next"), den, x0, grid, sched) > 1e-3


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_off_by_one_ddim_is_caught(prediction) -> None:
    den, grid, x0, sched = point_mass_case(prediction)
    assert G.roundtrip(OffByOneDDIM(), den, x0, grid, sched) > 1e-3


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_sampling_exact_on_point_mass(prediction) -> None:
    """From x_T = mu + noise at the top, DDIM lands exactly on the same noise at the bottom."""
    pm = G.point_mass(dim=4, seed=5)
    grid = G.lambda_grid(prediction, 13)
    noise = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mu = pm.means.expand(6, 4)
    xT = G.noised(mu, noise, prediction, float(grid[0]))
    out = DDIM().sample(G.denoiser(prediction, pm), {"x": xT}, grid, Schedule.for_prediction(prediction))
    assert G.rel_error(out, G.noised(mu, noise, prediction, float(grid[-1]))) <= 1e-12


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("solver", [EDICT(), BDIA(), BDIA(0.94)], ids=["edict", "bdia", "bdia094"])
def test_exact_solvers_on_point_mass(prediction, solver) -> None:
    den, grid, x0, sched = point_mass_case(prediction)
    assert G.roundtrip(solver, den, x0, grid, sched) <= 1e-12


ON_GRID = {"ddim": DDIM, "ddim_next": lambda: DDIM("next"), "edict": EDICT, "bdia": BDIA, "aidi": AIDI}


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", [*ON_GRID, "ees25", "ees27"])
def test_model_never_called_at_sigma_zero(bed, prediction, name: str) -> None:
    """On a grid ending at 0 (flow: starting at 1) the model only sees 0 < sigma <= sigmas[0]; grid
    methods only see grid levels, EES also its in-between stage levels."""
    grid = G.comfy_grid(prediction, 9)
    seen: list[float] = []
    inner = bed.denoiser(prediction, 3.0)

    def spy(x, sigma):
        assert sigma.dtype == torch.float64 and sigma.ndim == 0
        seen.append(float(sigma))
        return inner(x, sigma)

    solver = ON_GRID[name]() if name in ON_GRID else {"ees25": EES25, "ees27": EES27}[name]()
    sched = Schedule.for_prediction(prediction)
    solver.sample(spy, solver.invert(spy, bed.clean(prediction, grid), grid, sched), grid, sched)
    assert seen and min(seen) > 0 and max(seen) <= float(grid[0])
    if name in ON_GRID:
        assert set(seen) <= set(grid.tolist())


def test_gaussian_closed_form_sampling(bed) -> None:
    """Single Gaussian (section 12.2): DDIM first order, EES(2,5) far more accurate at equal N."""
    gauss = G.gaussian(dim=4, std=0.5, seed=1)
    den, sched = G.denoiser("eps", gauss), Schedule("vp")
    errs = {"ddim": [], "ees25": []}
    for n in (10, 20, 40, 80):
        grid = G.lambda_grid("eps", n)
        xT = G.noised(gauss.sample(6, torch.Generator().manual_seed(2)), bed.noise[:6], "eps", float(grid[0]))
        exact = G.gaussian_exact(gauss, "eps", xT, float(grid[0]), float(grid[-1]))
        errs["ddim"].append(G.rel_error(DDIM().sample(den, {"x": xT}, grid, sched), exact))
        errs["ees25"].append(G.rel_error(EES25().sample(den, {"x": xT}, grid, sched), exact))
    assert abs(G.fitted_order([10, 20, 40, 80], errs["ddim"]) - 1) < 0.3
    assert abs(G.fitted_order([10, 20, 40, 80], errs["ees25"]) - 2) < 0.3
    assert all(e < 0.1 * d for e, d in zip(errs["ees25"], errs["ddim"], strict=True))

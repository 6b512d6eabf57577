"""EES(2,5)/EES(2,7) specifics: time variables, stage levels, the step touching sigma = 0, NFE."""

from __future__ import annotations

import pytest
import torch

from solvers import EES25, EES27, Schedule
from testbed import gmm as G


@pytest.mark.parametrize("cls, stages", [(EES25, 3), (EES27, 4)])
@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_nfe_and_stage_levels(bed, cls, stages: int, prediction) -> None:
    """stages model calls per step in both directions; stages sit strictly inside each step."""
    grid = G.lambda_grid(prediction, 6)
    seen: list[float] = []
    inner = bed.denoiser(prediction)

    def spy(x, sigma):
        seen.append(float(sigma))
        return inner(x, sigma)

    solver, sched = cls(), Schedule.for_prediction(prediction)
    assert solver.nfe_per_step() == stages
    lat = solver.invert(spy, bed.clean(prediction, grid), grid, sched)
    assert len(seen) == 6 * stages
    inv_seen, seen[:] = list(seen), []
    solver.sample(spy, lat, grid, sched)
    assert len(seen) == 6 * stages
    levels = grid.tolist()
    for k in range(6):  # sampling step k: first stage on the grid level, the rest strictly inside
        stage = seen[k * stages : (k + 1) * stages]
        assert stage[0] == levels[k]
        assert all(levels[k + 1] < s < levels[k] for s in stage[1:])
    assert inv_seen[0] == levels[-1]  # inversion starts at the clean end, stepping up


@pytest.mark.parametrize("cls", [EES25, EES27])
@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_clean_step_implicit_vs_explicit(bed, cls, prediction) -> None:
    """On a grid ending at 0 the step from the clean latent is solved implicitly by default, so the
    round trip keeps EES accuracy; the explicit DDIM start is O(h^2) on that step."""
    grid = G.comfy_grid(prediction, 50)
    sched, den, x0 = Schedule.for_prediction(prediction), bed.denoiser(prediction), bed.clean(prediction, grid)
    implicit, explicit = cls(), cls(clean_step="explicit")
    e_imp = G.roundtrip(implicit, den, x0, grid, sched)
    e_exp = G.roundtrip(explicit, den, x0, grid, sched)
    implicit_stats = implicit.invert(den, x0, grid, sched).stats
    assert [st["step"] for st in implicit_stats] == [0] and implicit_stats[0]["converged"]  # the step from 0
    assert explicit.invert(den, x0, grid, sched).stats == []
    assert e_imp < 1e-7 and e_imp < 0.05 * e_exp, (e_imp, e_exp)
    assert implicit.warnings(grid, sched) == []
    assert any("sigma = 0" in w for w in explicit.warnings(grid, sched))


def test_flow_time_variables(bed) -> None:
    """Flow grids start at sigma = 1 (lambda = -inf): sigma time (default) takes a full EES step there;
    lambda time falls back to DDIM for that step, warns, and loses the near-reversibility."""
    grid = G.comfy_grid("flow", 30)
    sched, den, x0 = Schedule("flow"), bed.denoiser("flow"), bed.clean("flow", grid)
    sig, lam = EES25(), EES25(time_variable="lambda")
    assert sig.resolved_time(sched) == "sigma" and lam.resolved_time(sched) == "lambda"
    assert not any("sigma = 1" in w for w in sig.warnings(grid, sched))
    assert any("sigma = 1" in w for w in lam.warnings(grid, sched))
    e_sig, e_lam = G.roundtrip(sig, den, x0, grid, sched), G.roundtrip(lam, den, x0, grid, sched)
    assert e_sig < 1e-6 and e_lam > 10 * e_sig
    # on a grid inside (0, 1) both variables are near-reversible
    inner = G.lambda_grid("flow", 30)
    x0 = bed.clean("flow", inner)
    assert G.roundtrip(lam, den, x0, inner, sched) < 1e-6


def test_vp_sigma_time_also_works(bed) -> None:
    grid = G.lambda_grid("eps", 40)
    sched, den, x0 = Schedule("vp"), bed.denoiser("eps"), bed.clean("eps", grid)
    assert G.roundtrip(EES25(time_variable="sigma"), den, x0, grid, sched) < 1e-5


@pytest.mark.parametrize("cls", [EES25, EES27])
def test_float32_state(bed, cls) -> None:
    grid = G.lambda_grid("eps", 40)
    sched, den = Schedule("vp"), bed.denoiser("eps", model_dtype=torch.float32)
    x0 = bed.clean("eps", grid).float()
    solver = cls(state_dtype="float32")
    lat = solver.invert(den, x0, grid, sched)
    assert lat["x"].dtype == torch.float32
    assert G.roundtrip(solver, den, x0, grid, sched) < 1e-5


def test_callbacks(bed) -> None:
    grid = G.comfy_grid("eps", 5)
    sched, den = Schedule("vp"), bed.denoiser("eps")
    calls: list[int] = []
    lat = EES27().invert(den, bed.clean("eps", grid), grid, sched, callback=lambda i, n, x, d: calls.append(i))
    EES27().sample(den, lat, grid, sched, callback=lambda i, n, x, d: calls.append(i))
    assert calls == [0, 1, 2, 3, 4] * 2

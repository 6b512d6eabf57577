"""AIDI: fixed-point DDIM inversion (Pan et al., ICCV 2023, §3.1-3.2)."""

from __future__ import annotations

import pytest
import torch

from solvers import AIDI, DDIM, Schedule
from solvers.fixed_point import anderson_weights, solve_fixed_point
from testbed import gmm as G


def linear_map(mu: float):
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return lambda z: mu * z + c


@pytest.mark.parametrize(
    "mu, converges", [(-1.8, True), (-1.2, True), (0.5, True), (0.9, True), (-2.2, False), (1.1, False)]
)
def test_aidi_e_region_on_linear_map(mu: float, converges: bool) -> None:
    """AIDI_E's error recursion r^2 - (mu/2) r - mu/2 = 0 is stable iff -2 < mu < 1 (section 4.4)."""
    z0 = torch.full((3,), 0.1, dtype=torch.float64)
    out = solve_fixed_point(linear_map(mu), z0, "E", max_iter=1000, tol=1e-12)
    if converges:
        assert out.converged and out.abs_residuals[-1] < 1e-9 * out.abs_residuals[0]
    else:
        assert not out.converged and out.abs_residuals[-1] > 1e3 * out.abs_residuals[0]


@pytest.mark.parametrize("mu, converges", [(-1.8, False), (-1.2, False), (0.5, True), (0.9, True), (1.1, False)])
def test_plain_picard_region_on_linear_map(mu: float, converges: bool) -> None:
    """Plain iteration converges iff |mu| < 1: AIDI_E rescues the oscillatory range (-2, -1]."""
    z0 = torch.full((3,), 0.1, dtype=torch.float64)
    out = solve_fixed_point(linear_map(mu), z0, "P", max_iter=400, tol=1e-12)
    assert out.converged == converges
    if not converges:
        assert out.abs_residuals[-1] > 1e3 * out.abs_residuals[0]


@pytest.mark.parametrize("mu", [-2.2, -1.8, 0.9, 1.1])
def test_anderson_solves_a_scalar_linear_map_at_once(mu: float) -> None:
    out = solve_fixed_point(linear_map(mu), torch.zeros(3, dtype=torch.float64) + 0.1, "A", max_iter=6, tol=1e-12)
    assert out.converged and out.nfe <= 4


def test_aidi_e_at_solver_level_with_linear_model() -> None:
    """A model with d = c x makes f linear with mu = (s_s - s_r) c; mu = -1.8: E converges, P does not."""
    s_hi, s_lo, mu = 2.0, 1.0, -1.8
    c = mu / (s_hi - s_lo)
    den = lambda x, sigma: (1.0 - float(sigma) * c) * x  # noqa: E731  (x0_hat = x - sigma * c * x)
    grid = torch.tensor([s_hi, s_lo], dtype=torch.float64)
    x = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = Schedule("vp")
    e, p = AIDI("E", max_iter=1000, tol=1e-12), AIDI("P", max_iter=1000, tol=1e-12)
    inverted = e.invert(den, x, grid, sched)
    assert inverted.stats[0]["converged"]
    assert torch.allclose(inverted["x"], x / (1 - mu), rtol=1e-10)  # the fixed point of z = x + mu z
    assert not p.invert(den, x, grid, sched).stats[0]["converged"]


@pytest.mark.parametrize("prediction", ["eps", "flow"])
@pytest.mark.parametrize("grid_kind", ["lambda", "comfy"])
def test_aidi_a_reaches_1e8_within_6_iterations(bed, prediction, grid_kind: str) -> None:
    """N = 20, w = 1, defaults (Anderson m = 3, I = 6): every step's residual <= 1e-8."""
    grid = G.lambda_grid(prediction, 20) if grid_kind == "lambda" else G.comfy_grid(prediction, 20)
    solver = AIDI("A")
    stats = solver.invert(bed.denoiser(prediction), bed.clean(prediction, grid), grid,
                          Schedule.for_prediction(prediction)).stats
    assert len(stats) == 20
    for st in stats:
        assert st["residual"] <= 1e-8 and st["iterations"] <= 6 and st["converged"], st


@pytest.mark.parametrize("variant", ["A", "E", "P"])
def test_nfe_is_counted_honestly(bed, variant: str) -> None:
    """Each iteration costs exactly one model call; the returned stats add up to the calls made."""
    grid = G.lambda_grid("eps", 10)
    den = G.CountingDenoiser(bed.denoiser("eps"))
    solver = AIDI(variant)
    inverted = solver.invert(den, bed.clean("eps", grid), grid, Schedule("vp"))
    assert den.calls == inverted.nfe == sum(len(st["residuals"]) for st in inverted.stats)
    assert all(st["nfe"] <= solver.max_iter + 1 for st in inverted.stats)


def test_one_step_roundtrip_error_is_the_residual(bed) -> None:
    """DDIM sampling from z lands on x_r - (f(z) - z): the residual IS the reconstruction error."""
    s_hi, s_lo = torch.tensor(1.2, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    grid = torch.stack([s_hi, s_lo])
    x0 = bed.clean("eps", grid)
    den, sched = bed.denoiser("eps", 3.0), Schedule("vp")
    for max_iter in (1, 2, 4):
        solver = AIDI("E", max_iter=max_iter, tol=0.0)
        inverted = solver.invert(den, x0, grid, sched)
        z = inverted["x"]
        back = solver.sample(den, {"x": z}, grid, sched)
        g = x0 + (s_hi - s_lo) * (z - den(z, s_hi)) / s_hi - z  # f(z) - z
        assert torch.allclose(back - x0, -g, atol=1e-13)
        rel = (g.norm(dim=1) / z.norm(dim=1)).max()
        assert inverted.stats[0]["residual"] == pytest.approx(float(rel), rel=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_roundtrip_tracks_residual(bed, prediction) -> None:
    """Round-trip error <= 2 * sum of the per-step relative residuals, and it falls with tol."""
    grid = G.comfy_grid(prediction, 20)
    x0, den, sched = bed.clean(prediction, grid), bed.denoiser(prediction), Schedule.for_prediction(prediction)
    errors = []
    for tol in (1e-4, 1e-7, 1e-10):
        solver = AIDI("A", max_iter=30, tol=tol)
        lat = solver.invert(den, x0, grid, sched)
        err = G.rel_error(solver.sample(den, lat, grid, sched), x0)
        total = sum(st["residual"] for st in lat.stats)
        assert max(st["residual"] for st in lat.stats) <= tol
        assert err <= 2 * total, (tol, err, total)
        errors.append(err)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-9


def test_aidi_beats_ddim_inversion(bed) -> None:
    grid = G.comfy_grid("eps", 20)
    x0, den, sched = bed.clean("eps", grid), bed.denoiser("eps"), Schedule("vp")
    ddim = DDIM()
    err_ddim = G.rel_error(ddim.sample(den, ddim.invert(den, x0, grid, sched), grid, sched), x0)
    for variant in ("A", "E"):
        aidi = AIDI(variant)
        err = G.rel_error(aidi.sample(den, aidi.invert(den, x0, grid, sched), grid, sched), x0)
        assert err < 0.05 * err_ddim


def test_warm_start_saves_evaluations(bed) -> None:
    """Starting each step from the current-label DDIM inversion (free: the previous step's last f)
    needs fewer model calls than the paper's z^0 = z_{t-1}; both converge."""
    grid = G.comfy_grid("eps", 20)
    x0, den, sched = bed.clean("eps", grid), bed.denoiser("eps"), Schedule("vp")
    warm, cold = AIDI("A", max_iter=12), AIDI("A", max_iter=12, warm_start=False)
    warm_run, cold_run = warm.invert(den, x0, grid, sched), cold.invert(den, x0, grid, sched)
    assert all(st["converged"] for st in warm_run.stats + cold_run.stats)
    assert warm_run.nfe < cold_run.nfe


def test_sampling_is_ddim(bed) -> None:
    grid = G.comfy_grid("flow", 12)
    xT, den, sched = bed.noisy("flow", grid), bed.denoiser("flow", 3.0), Schedule("flow")
    assert torch.equal(AIDI().sample(den, {"x": xT}, grid, sched), DDIM().sample(den, {"x": xT}, grid, sched))


def test_float32_state(bed) -> None:
    grid = G.comfy_grid("eps", 20)
    x0 = bed.clean("eps", grid).float()
    den, sched = bed.denoiser("eps", model_dtype=torch.float32), Schedule("vp")
    solver = AIDI("A", state_dtype="float32")
    lat = solver.invert(den, x0, grid, sched)
    assert lat["x"].dtype == torch.float32
    assert G.rel_error(solver.sample(den, lat, grid, sched), x0) < 1e-5


def test_anderson_weights_sum_to_one_and_handle_exact_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    rs = [torch.randn(3, 2, 5, dtype=torch.float64, generator=gen) for _ in range(3)]
    rs[2][1] = 0.0  # sample 1 is solved exactly by the newest iterate
    w = anderson_weights(rs)
    assert torch.allclose(w.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(w[1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.isfinite(w).all()

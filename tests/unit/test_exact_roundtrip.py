"""EDICT and BDIA: sample(invert(x)) == x to rounding, for eps / v / flow, float64 / float32.

Grids: ComfyUI-like grids (ending at sigma = 0; flow starting at exactly sigma = 1) and
lambda-uniform grids (lambda in [-4, 4], lowest sigma > 0).

float32 note: both methods carry a non-principal mode (EDICT's x - y difference, BDIA's
parasitic root) that sampling amplifies, so rounding is amplified by the grid and the CFG
stiffness. The float64 errors show the same gain (up to ~1e3 ulps at w = 7.5). On this test bed
every ComfyUI-grid case stays <= 1e-5 in float32 (worst ~6e-6, BDIA at 50 steps, w = 7.5); stiffer
mixtures at w = 7.5 reach ~1e-4, and EDICT with a fixed p = 0.93 on the lambda grid (10 steps from
vp sigma 55) ~3e-5, which EDICT.warnings reports (see test_edict_float32_lambda_grid).
"""

from __future__ import annotations

import json

import pytest
import torch

from solvers import BDIA, EDICT, SOLVERS, Schedule
from testbed import gmm as G

PREDICTIONS = ["eps", "v", "flow"]
STEPS = [10, 20, 50]
CFGS = [1.0, 3.0, 7.5]
EXACT = {
    "edict": lambda dt: EDICT(state_dtype=dt),
    "bdia": lambda dt: BDIA(1.0, state_dtype=dt),
    "bdia094": lambda dt: BDIA(0.94, state_dtype=dt),
}


@pytest.mark.parametrize("method", list(EXACT))
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_roundtrip_float64(bed, method: str, prediction, steps: int) -> None:
    for grid in (G.comfy_grid(prediction, steps), G.lambda_grid(prediction, steps)):
        x0 = bed.clean(prediction, grid)
        for w in CFGS:
            err = G.roundtrip(EXACT[method]("float64"), bed.denoiser(prediction, w), x0, grid,
                             Schedule.for_prediction(prediction))
            assert err <= 1e-12, (method, prediction, steps, w, float(grid[-1]), err)


@pytest.mark.parametrize("method", list(EXACT))
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_roundtrip_float32(bed, method: str, prediction, steps: int) -> None:
    """float32 state and a float32 model (its prediction rounded, x0_hat formed in float32)."""
    grid = G.comfy_grid(prediction, steps)
    x0 = bed.clean(prediction, grid).float()
    for w in CFGS:
        den = bed.denoiser(prediction, w, model_dtype=torch.float32)
        err = G.roundtrip(EXACT[method]("float32"), den, x0, grid, Schedule.for_prediction(prediction))
        assert err <= 1e-5, (method, prediction, steps, w, err)


@pytest.mark.parametrize("method", list(EXACT))
def test_exact_with_float32_model_in_float64_state(bed, method: str) -> None:
    """Exactness needs only a deterministic model: a float32 model in a float64 state stays exact."""
    grid = G.comfy_grid("eps", 20)
    x0 = bed.clean("eps", grid)
    den = bed.denoiser("eps", 3.0, model_dtype=torch.float32)
    assert G.roundtrip(EXACT[method]("float64"), den, x0, grid, Schedule.for_prediction("eps")) <= 1e-12


def test_edict_float32_lambda_grid(bed) -> None:
    """10 vp steps from sigma 55: fixed p amplifies float32 rounding and warns; p_rule='scaled' is fine."""
    grid = G.lambda_grid("eps", 10)
    sched = Schedule("vp")
    x0 = bed.clean("eps", grid).float()
    den = bed.denoiser("eps", 1.0, model_dtype=torch.float32)
    fixed, scaled = EDICT(state_dtype="float32"), EDICT(p_rule="scaled", state_dtype="float32")
    assert any("amplify rounding" in w for w in fixed.warnings(grid, sched))
    assert scaled.warnings(grid, sched) == []
    assert G.roundtrip(scaled, den, x0, grid, Schedule.for_prediction("eps")) <= 1e-5
    assert G.roundtrip(fixed, den, x0, grid, Schedule.for_prediction("eps")) <= 1e-3  # the warned-about gain


@pytest.mark.parametrize("method", list(EXACT))
def test_one_step_grid(bed, method: str) -> None:
    grid = torch.tensor([3.0, 0.0], dtype=torch.float64)
    x0 = bed.clean("eps", grid)
    assert G.roundtrip(EXACT[method]("float64"), bed.denoiser("eps", 3.0), x0, grid, Schedule("vp")) <= 1e-13


def test_edict_scaled_p() -> None:
    e = EDICT(p=0.93, p_rule="scaled")
    assert e.mixing_weight(50) == pytest.approx(0.93)
    assert e.mixing_weight(10) == pytest.approx(0.93**5)
    assert EDICT(p=0.9).mixing_weight(10) == 0.9


def test_edict_pair_drifts_apart_only_slightly(bed) -> None:
    """x_T and y_T 'tend to diverge by a small amount' (paper): their difference is O(h) of the state."""
    grid = G.comfy_grid("eps", 50)
    lat = EDICT().invert(bed.denoiser("eps"), bed.clean("eps", grid), grid, Schedule("vp"))
    rel = G.rel_error(lat["y"], lat["x"])
    assert 0 < rel < 0.05


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("method", list(EXACT))
def test_plain_generation_from_x_only(bed, method: str, prediction) -> None:
    """sample({'x': noise}) starts the coupled state itself (EDICT y = x, BDIA DDIM start-up)."""
    grid = G.lambda_grid(prediction, 50)
    den = bed.denoiser(prediction)
    xT = bed.noisy(prediction, grid)
    out = EXACT[method]("float64").sample(den, {"x": xT}, grid, Schedule.for_prediction(prediction))
    ref = G.reference_solution(den, prediction, xT, float(grid[0]), float(grid[-1]), tol=1e-9)
    assert G.rel_error(out, ref) < 5e-2


@pytest.mark.parametrize("method", list(EXACT))
def test_callbacks_once_per_step(bed, method: str) -> None:
    grid = G.comfy_grid("eps", 7)
    sched, den = Schedule("vp"), bed.denoiser("eps")
    solver = EXACT[method]("float64")
    seen: list[tuple[int, int]] = []
    lat = solver.invert(den, bed.clean("eps", grid), grid, sched, callback=lambda i, n, x, d: seen.append((i, n)))
    assert seen == [(i, 7) for i in range(7)]
    seen.clear()
    solver.sample(den, lat, grid, sched, callback=lambda i, n, x, d: seen.append((i, n)))
    assert seen == [(i, 7) for i in range(7)]


def test_registry_and_params() -> None:
    assert {"ddim", "edict", "bdia", "aidi", "ees25", "ees27"} <= set(SOLVERS)
    for name, cls in SOLVERS.items():
        solver = cls(state_dtype="float32")
        params = solver.params()
        assert params["state_dtype"] == "float32"
        json.dumps(params)
        assert solver.name == name
    assert EDICT.exact and BDIA.exact
    assert EDICT().nfe_per_step() == 2 and BDIA().nfe_per_step() == 1


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_bdia_gamma_one_is_bit_exact_with_a_float32_network(bed, prediction) -> None:
    """The network sees x rounded to float32 (as ComfyUI casts it for a float32 model). Plain float64 states
    differ between the directions in their last bits; now and then one of them rounds to a neighbouring
    float32, and the recursion amplifies that (4e-3 seen on a tiny UNet). On the lattice both directions hold
    the same bits, so every network input is the same and the input comes back bit for bit."""
    from solvers.bdia import _on_lattice

    grid = G.comfy_grid(prediction, 50)
    base = bed.denoiser(prediction, 7.5)

    def float32_network(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return base(x.float().double(), sigma)

    sched = Schedule.for_prediction(prediction)
    for seed in range(12):
        x0 = bed.clean(prediction, grid) + 0.01 * torch.randn(bed.clean(prediction, grid).shape, dtype=torch.float64,
                                                              generator=torch.Generator().manual_seed(seed))
        solver = BDIA(1.0)
        out = solver.sample(float32_network, solver.invert(float32_network, x0, grid, sched), grid, sched)
        assert torch.equal(out, _on_lattice(x0)), (seed, G.rel_error(out, x0))
        assert G.rel_error(out, x0) <= 1e-14


def test_edict_parameters_saved_before_the_mixing_order_existed_run_back_the_old_way(bed) -> None:
    """Inversions saved before EDICT followed the authors' mixing order stored no ``mixing``; they must be run
    back with the order that made them, or the round trip would be off by about 1e-2."""
    old_params = {"p": 0.93, "p_rule": "fixed", "state_dtype": "float64"}
    assert EDICT.from_params(old_params).mixing == "alternating"
    assert EDICT().mixing == "authors"
    assert EDICT.from_params(EDICT().params()).mixing == "authors"
    grid = G.comfy_grid("eps", 10)
    den, sched = bed.denoiser("eps", 3.0), Schedule.for_prediction("eps")
    x0 = bed.clean("eps", grid)
    saved = EDICT(mixing="alternating").invert(den, x0, grid, sched)
    assert G.rel_error(EDICT.from_params(old_params).sample(den, saved, grid, sched), x0) <= 1e-12
    assert G.rel_error(EDICT().sample(den, saved, grid, sched), x0) > 1e-4
    with pytest.raises(ValueError, match="mixing must be one of authors, alternating"):
        EDICT(mixing="symmetric")


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_bdia_scaled_gamma_rule_is_exact_and_uses_gamma_to_the_25_over_n(bed, prediction) -> None:
    """gamma_rule 'scaled' runs gamma^(25/N): at 25 steps it is the fixed rule, at 10 and 60 steps it is the fixed
    rule at 0.8^2.5 and 0.8^(25/60) bit for bit, and the round trip stays exact (float64) at every step count,
    including 70 steps where the fixed 0.8 is refused (0.8^-70 = 6e6)."""
    from solvers.bdia import GAMMA_REFERENCE_STEPS, gamma_at

    den, sched = bed.denoiser(prediction, 3.0), Schedule.for_prediction(prediction)
    scaled = BDIA(0.8, gamma_rule="scaled")
    for steps in (10, 25, 60):
        grid = G.comfy_grid(prediction, steps)
        x0 = bed.clean(prediction, grid)
        used = 0.8 ** (GAMMA_REFERENCE_STEPS / steps)
        assert gamma_at(0.8, "scaled", steps) == used and scaled.gamma_for(grid) == used
        latents = scaled.invert(den, x0, grid, sched)
        fixed = BDIA(used).invert(den, x0, grid, sched)
        assert all(torch.equal(latents[k], fixed[k]) for k in ("x", "x_next")), steps
        assert G.rel_error(scaled.sample(den, latents, grid, sched), x0) <= 1e-12, steps
    grid = G.comfy_grid(prediction, 70)
    with pytest.raises(ValueError, match="gamma_rule 'scaled'"):
        BDIA(0.8).invert(den, bed.clean(prediction, grid), grid, sched)
    assert G.roundtrip(scaled, den, bed.clean(prediction, grid), grid, sched) <= 1e-12


def test_bdia_parameters_saved_before_the_gamma_rule_existed_mean_the_fixed_rule() -> None:
    assert BDIA.from_params({"gamma": 0.8, "state_dtype": "float64"}).gamma_rule == "fixed"
    restored = BDIA.from_params(BDIA(0.8, gamma_rule="scaled").params())
    assert (restored.gamma, restored.gamma_rule) == (0.8, "scaled")
    with pytest.raises(ValueError, match="gamma_rule must be 'fixed' or 'scaled'"):
        BDIA(0.8, gamma_rule="auto")

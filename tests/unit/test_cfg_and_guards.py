"""CFG sensitivity (section 12.3 #10) and BDIA's parasitic-mode guard (section 3.7)."""

from __future__ import annotations

import math

import pytest
import torch

from solvers import BDIA, DDIM, EDICT, EES25, Schedule, bdia_guard
from solvers.bdia import GUARD_REFUSE_GROWTH, inversion_growth, smallest_invertible_gamma
from testbed import gmm as G

CFGS = [1.0, 3.0, 7.5]


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_ddim_error_grows_with_cfg_exact_methods_do_not(bed, prediction) -> None:
    grid = G.comfy_grid(prediction, 50)
    sched = Schedule.for_prediction(prediction)
    x0 = bed.clean(prediction, grid)
    ddim = [G.roundtrip(DDIM(), bed.denoiser(prediction, w), x0, grid, sched) for w in CFGS]
    assert ddim[0] < ddim[1] < ddim[2], ddim
    assert ddim[0] > 1e-3
    for solver in (EDICT(), BDIA(1.0), BDIA(0.94)):
        for w in CFGS:
            assert G.roundtrip(solver, bed.denoiser(prediction, w), x0, grid, sched) <= 1e-12


def test_ees_defect_grows_with_cfg(bed) -> None:
    """The near-reversibility of EES degrades with the CFG stiffness (section 12.3 #10)."""
    grid = G.lambda_grid("eps", 50)
    sched, x0 = Schedule("vp"), bed.clean("eps", G.lambda_grid("eps", 50))
    errs = [G.roundtrip(EES25(), bed.denoiser("eps", w), x0, grid, sched) for w in CFGS]
    assert errs[0] < errs[1] < errs[2] and errs[0] < 1e-6


def test_guard_fires_for_gamma_08_at_100_steps() -> None:
    with pytest.raises(ValueError, match=r"gamma.*gamma\^-N"):
        bdia_guard(0.8, 100)
    sigmas = G.comfy_grid("eps", 100)
    with pytest.raises(ValueError, match="gamma"):
        BDIA(0.8).warnings(sigmas, Schedule("vp"))
    with pytest.raises(ValueError, match="gamma"):
        BDIA(0.8).invert(lambda x, s: x, torch.zeros(2, 3), sigmas, Schedule("vp"))


def test_guard_quiet_and_warnings() -> None:
    assert bdia_guard(1.0, 50) == []
    assert bdia_guard(1.0, 1000) == []
    assert bdia_guard(0.94, 50) == []  # 0.94^-50 = 22
    assert len(bdia_guard(0.94, 100)) == 1  # 485 > 1e2: warn, allowed
    assert len(bdia_guard(0.89, 50)) == 1  # 339: warn, allowed (a step-count rule refused it)
    assert bdia_guard(0.5, 6) == [] and len(bdia_guard(0.5, 7)) == 1  # 64 quiet, 128 warns
    assert len(bdia_guard(0.7, 25)) == 1  # 7.5e3: warns, allowed (the embedded model edits best near it)


def test_guard_decides_by_amplification_not_step_count() -> None:
    """The authors' editing default (gamma = 0.5 over their "50 timesteps", 49 steps here: 6e14) is refused, and so
    is gamma = 0.5 at 25 steps (3.4e7) and 0.8 at 100 (4.9e9), while 0.5 at 10 steps (1e3) passes; the refusal
    names the smallest gamma accepted at that step count, and that gamma passes."""
    assert len(bdia_guard(0.5, 10)) == 1
    for gamma, steps in [(0.5, 49), (0.5, 25), (0.8, 100), (0.75, 49)]:
        with pytest.raises(ValueError, match=rf"gamma\^-N = .* Use gamma >= 0\.\d\d at {steps} steps"):
            bdia_guard(gamma, steps)
    for steps in (10, 25, 49, 100):
        floor = math.ceil(smallest_invertible_gamma(steps) * 100) / 100
        assert len(bdia_guard(floor, steps)) == 1  # accepted, with a warning
        assert inversion_growth(floor, steps) <= GUARD_REFUSE_GROWTH < inversion_growth(floor - 0.01, steps)
    assert BDIA(1.0).warnings(G.comfy_grid("eps", 50), Schedule("vp")) == []


def test_guard_does_not_block_sampling(bed) -> None:
    """The parasitic root of sampling is -gamma (stable): plain generation with gamma = 0.5 works."""
    grid = G.lambda_grid("eps", 60)
    den = bed.denoiser("eps")
    xT = bed.noisy("eps", grid)
    out = BDIA(0.5).sample(den, {"x": xT}, grid, Schedule("vp"))
    ref = G.reference_solution(den, "eps", xT, float(grid[0]), float(grid[-1]), tol=1e-9)
    assert G.rel_error(out, ref) < 1e-2


def test_parasitic_mode_grows_like_gamma_power(bed) -> None:
    """|z_N - z_{N-1}| of the inverted pair (lambda grids): with gamma = 0.8 it stays within 1.5x of gamma = 1's
    up to 0.8^-30 = 808, then the parasitic root -1/gamma takes over: observed 0.065, 0.26, 1.28 at N = 30, 40, 49
    against gamma = 1's 0.058, 0.042, 0.036 (all allowed: 0.8^-49 = 5.6e4 is below the guard's 1e6)."""
    den, sched = bed.denoiser("eps"), Schedule("vp")

    def gap(gamma: float, n: int) -> float:
        grid = G.lambda_grid("eps", n)
        lat = BDIA(gamma).invert(den, bed.clean("eps", grid), grid, sched)
        scale = sched.scale(grid[:2])
        return float((scale[0] * lat["x"] - scale[1] * lat["x_next"]).norm())

    for n in (20, 25, 30):
        assert gap(0.8, n) <= 1.5 * gap(1.0, n), n
    past = [gap(0.8, n) for n in (30, 40, 49)]
    assert past[0] < past[1] < past[2] and past[2] > 10 * gap(1.0, 49)


def test_guard_under_the_scaled_rule_judges_the_gamma_it_uses() -> None:
    """Scaled, gamma^-N is gamma's amplification at 25 steps whatever N: 0.8 (265) warns at every step count and is
    never refused; 0.5 (3.4e7) is refused at every step count, and the message names the rule's own floor."""
    for steps in (10, 25, 70, 200):
        assert len(bdia_guard(0.8, steps, "scaled")) == 1, steps
        assert "scaled to" in bdia_guard(0.8, steps, "scaled")[0]
        with pytest.raises(ValueError, match=r"gamma = 0.5 \(scaled to .*Use gamma >= 0\.58 \(1\.0"):
            bdia_guard(0.5, steps, "scaled")
    assert bdia_guard(1.0, 200, "scaled") == []

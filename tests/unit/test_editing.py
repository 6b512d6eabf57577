"""The editing maths (editing/), pure torch, on closed forms and the Gaussian-mixture bed: seconds, no ComfyUI."""

from __future__ import annotations

import math

import pytest
import torch

from editing import blend
from editing import nulltext as N
from solvers import DDIM, Schedule
from testbed import gmm as G

# --- blended guidance --------------------------------------------------------------------------------------


def test_soft_mask_follows_aidi_normalisation() -> None:
    anchor = torch.tensor([[[[0.0, 0.2, 0.6, 1.0]]]])
    m = blend.soft_mask(anchor, threshold=0.6, sharpness=10.0, edit_region=True)
    assert torch.allclose(m[..., 2], torch.tensor(0.5))  # at delta: half on
    assert float(m[..., 0]) < 1e-4 and float(m[..., 3]) > 1 - 1e-4  # -M and +M at the ends
    keep = blend.soft_mask(anchor, threshold=0.6, sharpness=10.0, edit_region=False)
    assert torch.allclose(keep, 1 - m, atol=1e-6)
    both = blend.blend_region(anchor, 0.6, True) + blend.blend_region(anchor, 0.6, False)
    assert torch.equal(both, torch.ones_like(anchor))  # the keep region is the edit region's complement


def test_ddim_noise_variance_is_ddims() -> None:
    s_from, s_to = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    abar, abar_prev = 1 / (1 + 4.0), 1 / (1 + 1.0)
    expected = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    assert abs(float(blend.ddim_noise_variance(Schedule("vp"), s_from, s_to)) - expected) < 1e-12


def test_blend_branches_keeps_the_reconstruction_outside_the_region() -> None:
    value = torch.cat([torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)])
    region = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    out = blend.blend_branches(value, 2, region)
    assert torch.equal(out[:2], value[:2]) and torch.equal(out[2:], region.expand(2, 1, 2, 2))


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_renoise_is_ddim_eta_noise_inside_the_mask(kind) -> None:
    """x = a·x0 + s·eps (model coordinates): the eps part shrinks to sqrt(s² - var) and xi enters with sqrt(var),
    var = eta·sigma_t²·mask; eta 0, or a zero mask, leaves x as it is."""
    schedule = Schedule(kind)
    s_from, s_to = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0, eps, xi = (torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g) for _ in range(3))
    a, s, scale = schedule.alpha(s_to), schedule.sigma(s_to), schedule.scale(s_to)
    x = (a * x0 + s * eps) / scale
    mask = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=g)
    assert torch.equal(blend.renoise(x, x0, xi, mask, 0.0, schedule, s_from, s_to), x)
    assert torch.allclose(blend.renoise(x, x0, xi, torch.zeros_like(mask), 0.7, schedule, s_from, s_to), x)
    var = 0.7 * blend.ddim_noise_variance(schedule, s_from, s_to) * mask
    expected = (a * x0 + (s * s - var).sqrt() * eps + var.sqrt() * xi) / scale
    assert torch.allclose(blend.renoise(x, x0, xi, mask, 0.7, schedule, s_from, s_to), expected, atol=1e-12)


# --- null-text optimisation --------------------------------------------------------------------------------


def test_settings_refuse_nan_and_out_of_range_values_naming_the_input() -> None:
    for name in ("learning_rate", "early_stop", "start_scale"):
        with pytest.raises(ValueError, match=rf"^input '{name}' is nan; give a finite number"):
            N.NullTextSettings(**{name: math.nan}).validate()
    with pytest.raises(ValueError, match="^input 'method'"):
        N.NullTextSettings(method="dreambooth").validate()
    assert N.NullTextSettings().validate().inner_steps == 10


def test_schedules_are_the_papers_at_50_steps() -> None:
    s = N.NullTextSettings()
    assert s.learning_rate_at(0, 50) == 1e-2 and math.isclose(s.learning_rate_at(49, 50), 1e-2 * (1 - 49 / 100))
    assert math.isclose(s.threshold_at(10, 50), 1e-5 + 10 * 2e-5)  # eps + i*2e-5


def test_nti_on_the_bed_makes_the_high_cfg_reconstruction_follow_the_pivot(bed) -> None:
    """A learnable unconditional (here an offset of the uncond branch's x0 estimate) fitted step by step makes
    DDIM at cfg 7.5 retrace the cfg-1 pivot: far closer to the input than plain DDIM at cfg 7.5."""
    grid, schedule, w = G.comfy_grid("eps", 10), Schedule("vp"), 7.5
    x0 = bed.clean("eps", grid)
    cond, uncond = bed.denoiser("eps", 1.0), G.denoiser("eps", bed.uncond)
    solver = DDIM()
    _, pivot = N.trajectory(solver, cond, x0, grid, schedule)
    assert len(pivot) == len(grid) and torch.equal(pivot[-1], x0)

    def one_step(z: torch.Tensor, null: torch.Tensor, i: int) -> torch.Tensor:
        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            u = uncond(x, sigma) + null
            return u + w * (cond(x, sigma) - u)
        return solver.sample(guided, {"x": z}, grid[i:i + 2], schedule)

    settings = N.NullTextSettings(inner_steps=30, learning_rate=0.05, early_stop=0.0)
    log, passes = N.StepLog(), N.Passes()
    null = torch.zeros_like(x0)
    z, plain = pivot[0].clone(), pivot[0].clone()
    with torch.no_grad():
        for i in range(len(grid) - 1):
            plain = one_step(plain, torch.zeros_like(x0), i)
    for i in range(len(grid) - 1):
        with torch.enable_grad():
            N.fit_step(settings, one_step, [null.requires_grad_(True)], z, null, None, pivot[i + 1], grid, schedule,
                       i, False, log, passes)
        null = null.detach()
        with torch.no_grad():
            z = one_step(z, null, i)
    assert len(log.iterations) == len(grid) - 1 and all(last <= first for first, last in
                                                         zip(log.first_losses, log.losses, strict=True))
    assert G.rel_error(z, x0) < 0.1 * G.rel_error(plain, x0), (G.rel_error(z, x0), G.rel_error(plain, x0))


def test_best_start_keeps_zero_unless_a_candidate_is_better(bed) -> None:
    grid, schedule = G.comfy_grid("eps", 4), Schedule("vp")
    x = bed.noisy("eps", grid)

    def one_step(z: torch.Tensor, null: torch.Tensor, i: int) -> torch.Tensor:
        return z * 0.5

    target = x * 0.5  # zero bias is exact: every candidate is worse
    assert torch.equal(N.best_start(N.NullTextSettings(starts=5), one_step, x, x, target, grid, schedule),
                       torch.zeros_like(x))
    target = (x + 1.0) * 0.5  # a bias of +1 (candidates are about 0.05·std(x) ≈ 0.7): some beat zero
    assert not torch.equal(N.best_start(N.NullTextSettings(starts=50, start_scale=0.05), one_step, x, x, target,
                                        grid, schedule), torch.zeros_like(x))

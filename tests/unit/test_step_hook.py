"""The sampling step hook: called once per step with the documented state, and able to steer the state.

Blended guidance runs the reconstruction and the target branch as one batch and uses the hook for
local blend (copy the reconstruction outside the mask) and stochastic editing. These tests pin what it
relies on: an identity hook changes nothing, a batch of two branches evolves each branch as if alone,
and a hook that copies one branch into the other makes them identical for every solver.
"""

from __future__ import annotations

import pytest
import torch

from solvers import SOLVERS, Schedule
from testbed import gmm as G

STEPS = 8
SCHEDULE = Schedule.for_prediction("eps")
KEYS = {"ddim": {"x"}, "aidi": {"x"}, "ees25": {"x"}, "ees27": {"x"}, "edict": {"x", "y"}, "bdia": {"x", "x_prev"},
        "belm": {"x", "x_prev"}, "rf_solver": {"x"}, "fireflow": {"x"}, "rex": {"x", "y"}}


def _solver(name: str):
    return SOLVERS[name]() if name != "bdia" else SOLVERS[name](gamma=0.5)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("prediction", ["eps", "flow"])
@pytest.mark.parametrize("copies", [False, True], ids=["same", "copies"])
def test_identity_hook_changes_nothing_and_sees_every_step(bed, name: str, prediction, copies: bool) -> None:
    """A hook that hands the state back, or equal copies of it (as a batch blend does for the branch it keeps),
    leaves the run bit-identical."""
    grid = G.comfy_grid(prediction, STEPS)
    den, sched = bed.denoiser(prediction, 3.0), Schedule.for_prediction(prediction)
    solver = _solver(name)
    latents = solver.invert(den, bed.clean(prediction, grid), grid, sched)
    calls: list[tuple[int, set[str], bool]] = []

    def hook(step, state, denoised):
        calls.append((step, set(state), denoised is not None))
        return {k: v.clone() for k, v in state.items()} if copies else state

    plain = solver.sample(den, latents, grid, sched)
    hooked = solver.sample(den, latents, grid, sched, hook=hook)
    assert torch.equal(plain, hooked)
    assert [c[0] for c in calls] == list(range(STEPS))
    assert all(keys == KEYS[name] for _, keys, _ in calls)
    first_has_estimate = name not in ("bdia", "belm")  # their inverted pairs start one step down: no model call
    assert calls[0][2] == first_has_estimate and all(c[2] for c in calls[1:])


def _two_branches(bed, name: str):
    """(solver, inverted latents, batch, a denoiser running branch a (cfg 1) and b (cfg 4) in one call, grid)."""
    grid = G.comfy_grid("eps", STEPS)
    solver = _solver(name)
    den_a, den_b = bed.denoiser("eps", 1.0), bed.denoiser("eps", 4.0)
    latents = solver.invert(den_a, bed.clean("eps", grid), grid, SCHEDULE)
    b = next(iter(latents.values())).shape[0]

    def both(x, sigma):
        return torch.cat([den_a(x[:b], sigma), den_b(x[b:], sigma)])

    return solver, latents, b, (den_a, den_b, both), grid


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_two_branches_in_one_batch_evolve_as_if_alone(bed, name: str) -> None:
    solver, latents, b, (den_a, den_b, both), grid = _two_branches(bed, name)
    paired = solver.sample(both, {k: torch.cat([v, v]) for k, v in latents.items()}, grid, SCHEDULE)
    assert torch.equal(paired[:b], solver.sample(den_a, latents, grid, SCHEDULE))
    assert torch.equal(paired[b:], solver.sample(den_b, latents, grid, SCHEDULE))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_hook_copying_the_first_branch_makes_the_second_follow_it(bed, name: str) -> None:
    """Local blend with an everywhere-off mask: the edit branch ends exactly on the reconstruction."""
    solver, latents, b, (_, _, both), grid = _two_branches(bed, name)

    def follow(step, state, denoised):
        return {k: torch.cat([v[:b], v[:b]]) for k, v in state.items()}

    paired = solver.sample(both, {k: torch.cat([v, v]) for k, v in latents.items()}, grid, SCHEDULE, hook=follow)
    free = solver.sample(both, {k: torch.cat([v, v]) for k, v in latents.items()}, grid, SCHEDULE)
    assert torch.equal(paired[b:], paired[:b])
    assert (free[b:] - free[:b]).abs().max() > 1e-3  # without the hook the branches differ

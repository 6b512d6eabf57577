"""Bad inputs give ValueError with a message naming the input."""

from __future__ import annotations

import math

import pytest
import torch

from solvers import AIDI, BDIA, DDIM, EDICT, EES25, EES27, SOLVERS, Schedule
from testbed import gmm as G

ALL = [DDIM, EDICT, BDIA, AIDI, EES25, EES27]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: EDICT(p=1.5), "p must be in"),
        (lambda: EDICT(p=0.0), "p must be in"),
        (lambda: EDICT(p=math.nan), "p must be in"),
        (lambda: EDICT(p_rule="linear"), "p_rule"),
        (lambda: BDIA(gamma=0.0), "gamma must be in"),
        (lambda: BDIA(gamma=1.01), "gamma must be in"),
        (lambda: AIDI(variant="B"), "variant"),
        (lambda: AIDI(max_iter=0), "max_iter"),
        (lambda: AIDI(max_iter=2.5), "max_iter"),
        (lambda: AIDI(tol=-1e-3), "tol"),
        (lambda: AIDI(tol=math.nan), "tol"),
        (lambda: AIDI(window=0), "window"),
        (lambda: EES25(time_variable="t"), "time_variable"),
        (lambda: EES27(clean_step="maybe"), "clean_step"),
        (lambda: DDIM(inversion_label="t+1"), "inversion_label"),
    ],
)
def test_parameter_out_of_range(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", ALL)
def test_state_dtype_checked(cls) -> None:
    with pytest.raises(ValueError, match="state_dtype"):
        cls(state_dtype="float16")


BAD_SIGMAS = {
    "empty": torch.tensor([], dtype=torch.float64),
    "one value": torch.tensor([1.0], dtype=torch.float64),
    "flat": torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64),
    "increasing": torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64),
    "nan": torch.tensor([2.0, math.nan, 0.0], dtype=torch.float64),
    "2-D": torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64),
}


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("case", list(BAD_SIGMAS))
def test_bad_sigmas(cls, case: str) -> None:
    solver, sched, den = cls(), Schedule("vp"), lambda x, s: x
    x = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigmas"):
        solver.invert(den, x, BAD_SIGMAS[case], sched)
    with pytest.raises(ValueError, match="sigmas"):
        solver.sample(den, {"x": x}, BAD_SIGMAS[case], sched)
    with pytest.raises(ValueError, match="sigmas"):
        solver.warnings(BAD_SIGMAS[case], sched)


@pytest.mark.parametrize("cls", ALL)
def test_flow_sigma_above_one(cls) -> None:
    with pytest.raises(ValueError, match="sigmas"):
        cls().invert(lambda x, s: x, torch.zeros(2, 4), torch.tensor([1.5, 0.5, 0.0]), Schedule("flow"))


@pytest.mark.parametrize("cls", ALL)
def test_nan_latent(bed, cls) -> None:
    grid, sched, den = G.comfy_grid("eps", 4), Schedule("vp"), bed.denoiser("eps")
    x = bed.clean("eps", grid).clone()
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="latent"):
        cls().invert(den, x, grid, sched)
    with pytest.raises(ValueError, match="latent"):
        cls().sample(den, {"x": x}, grid, sched)


@pytest.mark.parametrize("cls, key", [(EDICT, "y"), (BDIA, "x_next")])
def test_bad_coupled_latent(bed, cls, key: str) -> None:
    grid, sched, den = G.comfy_grid("eps", 4), Schedule("vp"), bed.denoiser("eps")
    lat = cls().invert(den, bed.clean("eps", grid), grid, sched)
    bad = dict(lat)
    bad[key] = lat[key].clone()
    bad[key][0, 0] = math.inf
    with pytest.raises(ValueError, match=key):
        cls().sample(den, bad, grid, sched)
    bad[key] = lat[key][:1]
    with pytest.raises(ValueError, match=key):
        cls().sample(den, bad, grid, sched)


@pytest.mark.parametrize("name", [n for n in SOLVERS if n != "ddim"])
def test_missing_x(bed, name: str) -> None:
    grid = G.comfy_grid("eps", 4)
    with pytest.raises(ValueError, match="'x'"):
        SOLVERS[name]().sample(bed.denoiser("eps"), {"y": bed.data}, grid, Schedule("vp"))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_params_rebuild_the_same_solver(name):
    """Edit and Load Inversion rebuild the solver from its stored params: that must round trip."""
    cls = SOLVERS[name]
    solver = cls(state_dtype="float32")
    rebuilt = cls.from_params(solver.params())
    assert type(rebuilt) is cls and rebuilt.params() == solver.params()


def test_ddim_sample_without_x_is_a_value_error():
    from solvers import DDIM, Schedule

    with pytest.raises(ValueError, match="missing 'x'"):
        DDIM().sample(lambda x, s: x, {}, torch.tensor([1.0, 0.0]), Schedule("vp"))

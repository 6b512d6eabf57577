"""Our DDIM, EDICT and BDIA against the authors' (and diffusers') steps, transcribed in our own words.

Each ``reference_*`` function below restates what the reference code computes, in ITS coordinates: the
variance-preserving state z = sqrt(abar) * x0 + sqrt(1 - abar) * eps, an eps prediction labelled by abar,
and Stable Diffusion's discrete schedule (scaled-linear betas 0.00085..0.012, 1000 steps, "leading"
timesteps 981, 961, ..., 1 at 50 steps, ending at abar[0] as with ``set_alpha_to_one=False``). Our
solvers run in ComfyUI's coordinates (x = z / sqrt(abar), sigma = sqrt((1 - abar) / abar)) on the same
eps function, grid and start; the results must agree to 1e-12 relative in float64 on the Gaussian-mixture
bed, at cfg 1 and 3.

References read:
* salesforce/EDICT ``edict_functions.py``: ``coupled_stablediffusion`` with ``leapfrog_steps=True``,
  ``forward_step``, ``reverse_step``. Its order: step k updates x first (from y) when k is even, y first
  when odd; the mixing layer always mixes x first (x = p x + (1 - p) y, then y with the new x); inversion
  un-mixes y first, then x, then undoes the updates in reverse. algorithms.md §2.1/§2.2 did not say the
  mixing order is fixed; the authors' code decides (diffusers' community ``edict_pipeline.py`` agrees).
* diffusers ``DDIMScheduler.step`` (eta = 0) and ``DDIMInverseScheduler.step``: the inverse step from level
  t - ratio to t uses the eps the pipeline computed at the current latent with label t (our "next" label).
* guoqiang-zhang-x/BDIA ``bdia_edict_functions.py`` (``BDIA_stablediffusion``) and the paper's Alg. 1/2:
  z_{i-1} = gamma (z_{i+1} - Bwd_i) + Fwd_i with one eps at z_i; inversion its inverse after one DDIM
  inversion step with the current label.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from solvers import BDIA, DDIM, EDICT, Schedule
from testbed import gmm as G

F64 = torch.float64
EpsFn = Callable[[Tensor, Tensor], Tensor]  # (z, abar) -> eps


def sd_alphas_cumprod() -> Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def sd_levels(steps: int) -> Tensor:
    """abar along a 'leading' DDIM grid, noisy -> clean, then abar[0] (the reference's final level)."""
    abar = sd_alphas_cumprod()
    ratio = 1000 // steps
    timesteps = torch.arange(steps - 1, -1, -1) * ratio + 1
    return torch.cat([abar[timesteps], abar[:1]])


def sigmas_of(abars: Tensor) -> Tensor:
    return ((1.0 - abars) / abars).sqrt()


def vp_eps(den: G.Denoiser) -> EpsFn:
    """The bed's denoiser seen as the references see a UNet: eps from the vp state z at level abar."""

    def eps(z: Tensor, abar: Tensor) -> Tensor:
        sigma = sigmas_of(abar)
        x = z / abar.sqrt()
        return (x - den(x, sigma)) / sigma

    return eps


# --- the references, in their coordinates ------------------------------------------------------------


def ddim_from_to(z: Tensor, eps: Tensor, abar_from: Tensor, abar_to: Tensor) -> Tensor:
    """DDIM with eta = 0: predict x0 from eps, then re-noise to the other level with the same eps."""
    x0 = (z - (1.0 - abar_from).sqrt() * eps) / abar_from.sqrt()
    return abar_to.sqrt() * x0 + (1.0 - abar_to).sqrt() * eps


def reference_ddim_sample(eps_fn: EpsFn, z: Tensor, abars: Tensor) -> Tensor:
    for k in range(len(abars) - 1):
        z = ddim_from_to(z, eps_fn(z, abars[k]), abars[k], abars[k + 1])
    return z


def reference_ddim_invert_next_label(eps_fn: EpsFn, z: Tensor, abars: Tensor) -> Tensor:
    """DDIMInverseScheduler: from level k+1 up to k, eps at the current latent labelled with the target k."""
    for k in range(len(abars) - 2, -1, -1):
        z = ddim_from_to(z, eps_fn(z, abars[k]), abars[k + 1], abars[k])
    return z


def reference_edict_sample(eps_fn: EpsFn, pair: list[Tensor], abars: Tensor, p: float) -> list[Tensor]:
    pair = list(pair)
    for k in range(len(abars) - 1):
        for j in range(2):
            i = (j + k % 2) % 2  # leapfrog: x first on even steps, y first on odd ones
            pair[i] = ddim_from_to(pair[i], eps_fn(pair[1 - i], abars[k]), abars[k], abars[k + 1])
        pair[0] = p * pair[0] + (1.0 - p) * pair[1]  # always x first
        pair[1] = (1.0 - p) * pair[0] + p * pair[1]
    return pair


def reference_edict_invert(eps_fn: EpsFn, pair: list[Tensor], abars: Tensor, p: float) -> list[Tensor]:
    pair = list(pair)
    for k in range(len(abars) - 2, -1, -1):
        pair[1] = (pair[1] - (1.0 - p) * pair[0]) / p  # always y first
        pair[0] = (pair[0] - (1.0 - p) * pair[1]) / p
        for j in range(2):
            i = (j + (k + 1) % 2) % 2  # the sequence updated second is undone first
            pair[i] = ddim_from_to(pair[i], eps_fn(pair[1 - i], abars[k]), abars[k + 1], abars[k])
    return pair


def reference_bdia_sample(eps_fn: EpsFn, z_top: Tensor, z_next: Tensor, abars: Tensor, gamma: float) -> Tensor:
    """From the inverted pair (z_N, z_{N-1}): no start-up step."""
    z_up, z = z_top, z_next
    for k in range(1, len(abars) - 1):
        e = eps_fn(z, abars[k])
        bwd = ddim_from_to(z, e, abars[k], abars[k - 1])
        fwd = ddim_from_to(z, e, abars[k], abars[k + 1])
        z_up, z = z, gamma * (z_up - bwd) + fwd
    return z


def reference_bdia_invert(eps_fn: EpsFn, z0: Tensor, abars: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    n = len(abars) - 1
    z_down, z = z0, ddim_from_to(z0, eps_fn(z0, abars[n]), abars[n], abars[n - 1])
    for k in range(n - 1, 0, -1):
        e = eps_fn(z, abars[k])
        bwd = ddim_from_to(z, e, abars[k], abars[k - 1])
        fwd = ddim_from_to(z, e, abars[k], abars[k + 1])
        z_down, z = z, (z_down - fwd) / gamma + bwd
    return z, z_down


# --- the comparisons -----------------------------------------------------------------------------------

STEPS = 10
SCHEDULE = Schedule.for_prediction("eps")


def _setup(bed, w: float) -> tuple[G.Denoiser, EpsFn, Tensor, Tensor, Tensor]:
    abars = sd_levels(STEPS)
    sigmas = sigmas_of(abars)
    den = bed.denoiser("eps", w)
    x0 = bed.clean("eps", sigmas)
    return den, vp_eps(den), abars, sigmas, x0


def _z(x: Tensor, abar: Tensor) -> Tensor:
    return x * abar.sqrt()


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_ddim_matches_diffusers_schedulers(bed, w: float) -> None:
    den, eps_fn, abars, sigmas, x0 = _setup(bed, w)
    inverted = DDIM(inversion_label="next").invert(den, x0, sigmas, SCHEDULE)["x"]
    ref_inverted = reference_ddim_invert_next_label(eps_fn, _z(x0, abars[-1]), abars)
    assert G.rel_error(_z(inverted, abars[0]), ref_inverted) <= 1e-12
    xT = bed.noisy("eps", sigmas)
    sampled = DDIM().sample(den, {"x": xT}, sigmas, SCHEDULE)
    assert G.rel_error(_z(sampled, abars[-1]), reference_ddim_sample(eps_fn, _z(xT, abars[0]), abars)) <= 1e-12


@pytest.mark.parametrize("w", [1.0, 3.0])
@pytest.mark.parametrize("p", [0.93, 0.8])
def test_edict_matches_the_authors_code(bed, w: float, p: float) -> None:
    den, eps_fn, abars, sigmas, x0 = _setup(bed, w)
    ours = EDICT(p=p).invert(den, x0, sigmas, SCHEDULE)
    z0 = _z(x0, abars[-1])
    ref = reference_edict_invert(eps_fn, [z0, z0], abars, p)
    assert G.rel_error(_z(ours["x"], abars[0]), ref[0]) <= 1e-12
    assert G.rel_error(_z(ours["y"], abars[0]), ref[1]) <= 1e-12
    # sampling from a pair that differs (x != y), so the order of every operation shows
    xT, yT = bed.noisy("eps", sigmas), ours["y"]
    ref_x, _ = reference_edict_sample(eps_fn, [_z(xT, abars[0]), _z(yT, abars[0])], abars, p)
    sampled = EDICT(p=p).sample(den, {"x": xT, "y": yT}, sigmas, SCHEDULE)
    assert G.rel_error(_z(sampled, abars[-1]), ref_x) <= 1e-12


def test_the_old_alternating_mixing_is_a_different_integrator(bed) -> None:
    """What this pack did before following the authors: exact too, but far from their numbers."""
    den, eps_fn, abars, sigmas, x0 = _setup(bed, 3.0)
    z0 = _z(x0, abars[-1])
    ref = reference_edict_invert(eps_fn, [z0, z0], abars, 0.93)
    old = EDICT(mixing="alternating")
    inverted = old.invert(den, x0, sigmas, SCHEDULE)
    assert G.rel_error(_z(inverted["x"], abars[0]), ref[0]) > 1e-3
    assert G.roundtrip(old, den, x0, sigmas, SCHEDULE) <= 1e-12


@pytest.mark.parametrize("w", [1.0, 3.0])
@pytest.mark.parametrize("gamma", [1.0, 0.94])
def test_bdia_matches_the_authors_recursion(bed, w: float, gamma: float) -> None:
    den, eps_fn, abars, sigmas, x0 = _setup(bed, w)
    ours = BDIA(gamma).invert(den, x0, sigmas, SCHEDULE)
    ref_top, ref_next = reference_bdia_invert(eps_fn, _z(x0, abars[-1]), abars, gamma)
    assert G.rel_error(_z(ours["x"], abars[0]), ref_top) <= 1e-12
    assert G.rel_error(_z(ours["x_next"], abars[1]), ref_next) <= 1e-12
    xT = bed.noisy("eps", sigmas)
    x_next = xT * 0.9 + ours["x_next"] * 0.1  # any pair: the recursion, not the round trip, is compared
    sampled = BDIA(gamma).sample(den, {"x": xT, "x_next": x_next}, sigmas, SCHEDULE)
    ref = reference_bdia_sample(eps_fn, _z(xT, abars[0]), _z(x_next, abars[1]), abars, gamma)
    assert G.rel_error(_z(sampled, abars[-1]), ref) <= 1e-12

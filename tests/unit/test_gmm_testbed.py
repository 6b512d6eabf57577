"""The closed-form test bed itself: predictors, ComfyUI-style denoisers and reference solutions."""

from __future__ import annotations

import math

import pytest
import torch

from solvers import Schedule
from testbed import gmm as G


def test_x0_mean_matches_monte_carlo() -> None:
    """E[x0 | z] from the closed form agrees with importance weighting of samples from the prior."""
    mix = G.make_gmm(dim=3, components=3, seed=3)
    gen = torch.Generator().manual_seed(0)
    alpha, s = 0.8, 0.6
    z = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    x0 = mix.sample(400_000, gen)
    logw = -0.5 * ((z - alpha * x0) ** 2).sum(-1) / s**2
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0).sum(0)
    assert torch.allclose(mix.x0_mean(z, alpha, s)[0], mc, atol=2e-2)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0, 20.0])
def test_eps_and_v_denoisers_agree(bed, sigma: float) -> None:
    """eps and v models of the same VP process give the same x0_hat (ComfyUI's two conversions)."""
    x = bed.data + sigma * bed.noise
    sg = torch.tensor(sigma, dtype=torch.float64)
    for w in (1.0, 3.0):
        a = bed.denoiser("eps", w)(x, sg)
        b = bed.denoiser("v", w)(x, sg)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.02, 0.5, 0.98])
def test_flow_denoiser_matches_vp_posterior(bed, sigma: float) -> None:
    """Flow's x0_hat equals the VP posterior mean at the same log-SNR (same Gaussian path, rescaled)."""
    x = (1 - sigma) * bed.data + sigma * bed.noise
    flow = bed.denoiser("flow")(x, torch.tensor(sigma, dtype=torch.float64))
    kd_sigma = sigma / (1 - sigma)  # same lambda; the vp x is x_flow / (1 - sigma)
    vp = bed.denoiser("eps")(x / (1 - sigma), torch.tensor(kd_sigma, dtype=torch.float64))
    assert torch.allclose(flow, vp, rtol=1e-10, atol=1e-12)


def test_point_mass_denoiser_returns_the_point() -> None:
    pm = G.point_mass(dim=4, seed=2)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for pred in ("eps", "v", "flow"):
        sg = torch.tensor(0.4, dtype=torch.float64)
        out = G.denoiser(pred, pm)(x, sg)
        assert torch.allclose(out, pm.means.expand(5, 4), atol=1e-12)


def test_model_dtype_rounds_the_prediction(bed) -> None:
    x = bed.data + 2.0 * bed.noise
    sg = torch.tensor(2.0, dtype=torch.float64)
    out = bed.denoiser("eps", model_dtype=torch.float32)(x, sg)
    assert out.dtype == torch.float32
    assert G.rel_error(out, bed.denoiser("eps")(x, sg)) < 1e-6


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_reference_solution_matches_gaussian_closed_form(prediction: G.Prediction) -> None:
    """The DOP853 reference reproduces the exact single-Gaussian PF-ODE transport (section 12.2)."""
    gauss = G.gaussian(dim=4, std=0.5, seed=1)
    sigmas = G.lambda_grid(prediction, 4)
    hi, lo = float(sigmas[0]), float(sigmas[-1])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    x = G.noised(gauss.sample(6, gen), noise, prediction, hi)
    ref = G.reference_solution(G.denoiser(prediction, gauss), prediction, x, hi, lo)
    exact = G.gaussian_exact(gauss, prediction, x, hi, lo)
    assert G.rel_error(ref, exact) < 1e-10


def test_grids() -> None:
    for pred in ("eps", "flow"):
        lam = G.lambda_grid(pred, 8)
        sched = Schedule.for_prediction(pred)
        lams = sched.lam(lam)
        assert torch.allclose(lams[1:] - lams[:-1], torch.full((8,), 1.0, dtype=torch.float64), atol=1e-12)
        comfy = G.comfy_grid(pred, 8)
        assert comfy[-1] == 0 and len(comfy) == 9 and bool((comfy[:-1] > comfy[1:]).all())
    assert G.comfy_grid("flow", 8)[0] == 1.0
    assert math.isclose(float(G.comfy_grid("eps", 8)[0]), 14.6146)

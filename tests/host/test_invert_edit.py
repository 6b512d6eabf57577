"""Invert -> Edit through the real sampling path on a tiny UNet, for eps, v and flow models."""

from __future__ import annotations

import math

import pytest
import torch

from testbed.helpers import check, ddim_sampler, edit, guider, invert, random_latent, sigmas, variant
from testbed.tiny import make_cond, make_model


@pytest.fixture(scope="module")
def base_model(host):
    return make_model(0)


def roundtrip(node_classes, model, cfg, steps, label="current", dtype="float64", latent=None):
    pos, neg = make_cond(1), make_cond(2)
    latent = latent or random_latent()
    g = guider(node_classes, model, pos, neg, cfg)
    sig = sigmas(node_classes, model, steps)
    inv, z_top = invert(node_classes, g, ddim_sampler(node_classes, label, dtype), sig, latent)
    rec = edit(node_classes, g, inv)
    return check(node_classes, latent, rec).result, inv, z_top


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_ddim_roundtrip_finite_and_grows_with_cfg(node_classes, base_model, kind):
    model = variant(node_classes, base_model, kind)
    errors = {cfg: roundtrip(node_classes, model, cfg, 20)[0][1] for cfg in (1.0, 3.0, 7.5)}
    print(kind, errors)
    assert all(math.isfinite(e) for e in errors.values())
    assert errors[1.0] < errors[3.0] < errors[7.5]


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_ddim_roundtrip_shrinks_with_steps(node_classes, base_model, kind):
    model = variant(node_classes, base_model, kind)
    coarse = roundtrip(node_classes, model, 1.0, 20)[0][1]
    fine = roundtrip(node_classes, model, 1.0, 100)[0][1]
    assert fine < 0.6 * coarse


def test_flow_inverts_up_to_sigma_one(node_classes, base_model):
    model = variant(node_classes, base_model, "flow")
    (max_abs, rel, _, report), inv, z_top = roundtrip(node_classes, model, 1.0, 20)
    assert float(inv.sigmas[0]) == 1.0 and inv.schedule == "flow"
    assert torch.isfinite(inv.latents["x"]).all() and torch.isfinite(z_top["samples"]).all()
    # at sigma = 1 the state is pure noise: unit scale, not divided by (1 - sigma)
    assert 0.3 < float(inv.latents["x"].std()) < 3.0


def test_float32_state_option(node_classes, base_model):
    (_, rel64, _, _), inv64, _ = roundtrip(node_classes, base_model, 1.0, 20, dtype="float64")
    (_, rel32, _, _), inv32, _ = roundtrip(node_classes, base_model, 1.0, 20, dtype="float32")
    assert inv64.latents["x"].dtype == torch.float64 and inv32.latents["x"].dtype == torch.float32
    assert math.isclose(rel64, rel32, rel_tol=1e-3)


def test_next_label_variant_differs(node_classes, base_model):
    (_, cur, _, _), _, _ = roundtrip(node_classes, base_model, 1.0, 20, label="current")
    (_, nxt, _, _), _, _ = roundtrip(node_classes, base_model, 1.0, 20, label="next")
    assert math.isfinite(nxt) and nxt != cur


def test_batch_of_three(node_classes, base_model):
    latent = random_latent((3, 4, 8, 8), seed=5)
    pos, neg = make_cond(1, batch=1), make_cond(2, batch=1)
    g = guider(node_classes, base_model, pos, neg, 1.0)
    inv, _ = invert(node_classes, g, ddim_sampler(node_classes), sigmas(node_classes, base_model, 10), latent)
    rec = edit(node_classes, g, inv)
    assert rec["samples"].shape == (3, 4, 8, 8)
    # each item goes through as it does alone (up to float32 batching noise that DDIM amplifies;
    # items leaking into each other would differ at order 1)
    alone, _ = invert(node_classes, g, ddim_sampler(node_classes), sigmas(node_classes, base_model, 10),
                      {"samples": latent["samples"][1:2]})
    single = edit(node_classes, g, alone)["samples"]
    assert float((single - rec["samples"][1:2]).norm() / single.norm()) < 1e-2


def test_check_node_reports_in_ui(node_classes):
    a = random_latent()
    out = check(node_classes, a, {"samples": a["samples"] + 0.01})
    max_abs, rel, psnr, report = out.result
    assert math.isclose(max_abs, 0.01, rel_tol=1e-4)
    assert "relative" in report and out.ui["text"] == [report]
    assert [img["type"] for img in out.ui["images"]] == ["temp"]  # the figure
    assert math.isfinite(psnr) and psnr > 0


def test_solver_generates_in_sampler_custom_advanced_like_euler(node_classes, base_model):
    """Our DDIM SAMPLER in the stock SamplerCustomAdvanced equals ComfyUI's own euler (DDIM = Euler).

    Compared like with like: a float32 state, as euler's. (A float64 state is the more accurate one and
    differs from euler by float32 rounding amplified over the steps: 4.7e-4 at most of 257 here.)"""
    import comfy.samplers

    pos, neg = make_cond(1), make_cond(2)
    g = guider(node_classes, base_model, pos, neg, 4.0)
    sig = sigmas(node_classes, base_model, 12)
    noise = node_classes["RandomNoise"].execute(noise_seed=3).result[0]
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    ours = node_classes["SamplerCustomAdvanced"].execute(noise=noise, guider=g,
                                                         sampler=ddim_sampler(node_classes, dtype="float32"),
                                                         sigmas=sig, latent_image=empty).result[0]
    stock = node_classes["SamplerCustomAdvanced"].execute(noise=noise, guider=g,
                                                          sampler=comfy.samplers.sampler_object("euler"),
                                                          sigmas=sig, latent_image=empty).result[0]
    torch.testing.assert_close(ours["samples"], stock["samples"], rtol=1e-6, atol=1e-6)


def test_check_node_compares_images_with_peak_one(node_classes):
    a = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    b = (a + 0.1).clamp(0, 1)
    out = node_classes["ExactInversion_RoundTripCheck"].execute(original_image=a, result_image=b)
    max_abs, rel, psnr, report = out.result
    mse = float((b - a).double().pow(2).mean())
    assert math.isclose(psnr, 10 * math.log10(1.0 / mse), rel_tol=1e-9)
    assert report.startswith("image round trip") and max_abs <= 0.1 + 1e-6

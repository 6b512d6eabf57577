"""Bad inputs raise a ValueError naming the node and the input, never a deep traceback."""

from __future__ import annotations

import pytest
import torch

from testbed.helpers import check, ddim_sampler, edit, guider, invert, random_latent, sigmas, variant
from testbed.tiny import make_cond, make_model


@pytest.fixture(scope="module")
def setup(host, node_classes):
    model = make_model(0)
    g = guider(node_classes, model, make_cond(1), make_cond(2), 1.0)
    sig = sigmas(node_classes, model, 6)
    inv, _ = invert(node_classes, g, ddim_sampler(node_classes), sig, random_latent())
    return model, g, sig, inv


def expect(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_latent_with_wrong_channels(node_classes, setup):
    _, g, sig, _ = setup
    expect(r"Invert: input 'latent' has 3 channels", invert, node_classes, g, ddim_sampler(node_classes), sig,
           random_latent((1, 3, 8, 8)))


def test_nan_latent(node_classes, setup):
    _, g, sig, _ = setup
    bad = random_latent()
    bad["samples"][0, 0, 0, 0] = float("nan")
    expect(r"Invert: input 'latent' contains NaN", invert, node_classes, g, ddim_sampler(node_classes), sig, bad)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([]), "at least 2 values"),
    (torch.tensor([14.6]), "at least 2 values"),
    (torch.tensor([1.0, 2.0, 0.0]), "strictly decreasing"),
    (torch.tensor([3.0, 3.0, 0.0]), "strictly decreasing"),
    (torch.tensor([3.0, float("nan"), 0.0]), "NaN"),
])
def test_bad_sigmas(node_classes, setup, bad, match):
    _, g, _, _ = setup
    expect(rf"Invert: input 'sigmas'.*{match}", invert, node_classes, g, ddim_sampler(node_classes), bad,
           random_latent())


def test_flow_sigmas_above_one(node_classes, setup):
    model = variant(node_classes, setup[0], "flow")
    g = guider(node_classes, model, make_cond(1), make_cond(2), 1.0)
    expect(r"Invert: input 'sigmas'.*flow models need sigmas <= 1", invert, node_classes, g,
           ddim_sampler(node_classes), torch.tensor([1.5, 0.5, 0.0]), random_latent())


def test_stock_sampler_refused(node_classes, setup):
    import comfy.samplers

    _, g, sig, _ = setup
    expect(r"Invert: input 'sampler' must come from an Exact Inversion solver node", invert, node_classes, g,
           comfy.samplers.sampler_object("euler"), sig, random_latent())


def test_edit_sigmas_not_matching_inversion(node_classes, setup):
    model, g, _, inv = setup
    expect(r"Edit from Inversion: input 'sigmas' \(10 steps.*does not match the inversion's grid \(6 steps",
           edit, node_classes, g, inv, sigmas(node_classes, model, 10))


def test_edit_matching_sigmas_accepted(node_classes, setup):
    _, g, sig, inv = setup
    assert torch.isfinite(edit(node_classes, g, inv, sig)["samples"]).all()


def test_edit_with_other_model_family(node_classes, setup):
    model, _, _, inv = setup
    flow = variant(node_classes, model, "flow")
    g = guider(node_classes, flow, make_cond(1), make_cond(2), 1.0)
    expect(r"Edit from Inversion: input 'inversion' was made with a vp model but the guider's model is flow",
           edit, node_classes, g, inv)


def test_edit_with_non_inversion(node_classes, setup):
    _, g, _, _ = setup
    expect(r"Edit from Inversion: input 'inversion' must come from Invert", edit, node_classes, g,
           random_latent())


def test_check_shape_mismatch(node_classes):
    expect(r"Round-trip Check: the original and the result differ in shape", check, node_classes,
           random_latent((1, 4, 8, 8)), random_latent((1, 4, 16, 16)))


def test_check_needs_a_pair(node_classes):
    expect(r"Round-trip Check: connect one pair: inversion and result_latent",
           node_classes["ExactInversion_RoundTripCheck"].execute, original_latent=random_latent())


def test_bad_solver_option(node_classes):
    expect(r"DDIM Solver: input 'inversion_label'", node_classes["ExactInversion_DDIMSolver"].execute,
           inversion_label="sideways", state_dtype="float64")


@pytest.mark.parametrize("node, kwargs, match", [
    ("ExactInversion_BDIASolver", {"gamma": 1.5, "state_dtype": "float64"}, r"BDIA Solver: input 'gamma' must be"),
    ("ExactInversion_BDIASolver", {"gamma": -0.1, "state_dtype": "float64"}, r"BDIA Solver: input 'gamma' must be"),
    ("ExactInversion_EDICTSolver", {"p": 0.0, "p_rule": "fixed", "state_dtype": "float64"},
     r"EDICT Solver: input 'p' must be"),
    ("ExactInversion_EDICTSolver", {"p": 0.93, "p_rule": "sometimes", "state_dtype": "float64"},
     r"EDICT Solver: input 'p_rule' must be"),
    ("ExactInversion_AIDISolver", {"variant": "A", "max_iter": 6, "tol": -1.0, "window": 3, "state_dtype": "float64"},
     r"AIDI Solver: input 'tol' must be"),
    ("ExactInversion_AIDISolver", {"variant": "A", "max_iter": 6, "tol": 1e-8, "window": 0, "state_dtype": "float64"},
     r"AIDI Solver: input 'window' .*must be"),
    ("ExactInversion_AIDISolver", {"variant": "Q", "max_iter": 6, "tol": 1e-8, "window": 3, "state_dtype": "float64"},
     r"AIDI Solver: input 'variant' must be"),
    ("ExactInversion_EESSolver", {"scheme": "EES(9,9)", "state_dtype": "float64"}, r"EES Solver: input 'scheme'"),
    ("ExactInversion_EDICTSolver", {"p": 0.93, "p_rule": "fixed", "state_dtype": "float16"},
     r"EDICT Solver: input 'state_dtype' must be one of"),
])
def test_solver_parameter_out_of_range(node_classes, node, kwargs, match):
    expect(match, node_classes[node].execute, **kwargs)

"""Sampling types: the ones the solvers model exactly pass, every other one is refused by name.

A model whose x0 prediction is not eps, v (sigma_data 1) or plain flow (noise_scale 1) would be inverted
in the wrong coordinates: the round trip would run, and the image would silently come back wrong.
"""

from __future__ import annotations

import comfy.model_sampling as ms
import pytest
import torch

from testbed.helpers import guider, invert, random_latent, sigmas
from testbed.tiny import make_cond, make_model

NODE = "ExactInversion_Invert"
#: every prediction type of ComfyUI 0.28.2 the pack refuses; the older host lacks some of them
REFUSED = ["X0", "IMG_TO_IMG", "IMG_TO_IMG_FLOW", "V_PREDICTION_DDPM", "EDM", "COSMOS_RFLOW"]


def with_sampling(model, base: type, prediction: type, **attrs):
    """A clone of ``model`` whose model_sampling is ``base`` + ``prediction`` (as ComfyUI composes them)."""

    class Sampling(base, prediction):
        pass

    sampling = Sampling(model.model.model_config)
    for name, value in attrs.items():
        setattr(sampling, name, value)
    patched = model.clone()
    patched.add_object_patch("model_sampling", sampling)
    return patched


def invert_with(node_classes, model):
    g = guider(node_classes, model, make_cond(1), make_cond(2), 1.0)
    sampler = node_classes["ExactInversion_EDICTSolver"].execute(p=0.93, p_rule="fixed",
                                                                state_dtype="float64").result[0]
    with torch.inference_mode():
        return invert(node_classes, g, sampler, sigmas(node_classes, model, 4), random_latent())


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.mark.parametrize("name", REFUSED)
def test_a_prediction_type_the_solvers_do_not_model_is_refused_by_name(node_classes, model, name):
    prediction = getattr(ms, name, None)
    if prediction is None:
        pytest.skip(f"ComfyUI {_version()} has no {name}")
    with pytest.raises(ValueError) as err:
        invert_with(node_classes, with_sampling(model, ms.ModelSamplingDiscrete, prediction))
    message = str(err.value)
    assert message.startswith("Invert: the model (TinySD) uses the sampling type " + name), message
    assert "supported are eps- and v-prediction models" in message and "flow models" in message


def test_the_stock_x0_and_lcm_patches_are_refused(node_classes, model):
    for option in ("x0", "lcm"):
        patched = node_classes["ModelSamplingDiscrete"]().patch(model, option, False)[0]
        with pytest.raises(ValueError, match="uses the sampling type (X0|LCM)"):
            invert_with(node_classes, patched)


def test_v_prediction_with_another_sigma_data_is_refused(node_classes, model):
    patched = with_sampling(model, ms.ModelSamplingDiscrete, ms.V_PREDICTION, sigma_data=0.5)
    with pytest.raises(ValueError, match="sampling type V_PREDICTION with sigma_data 0.5"):
        invert_with(node_classes, patched)


def test_flow_with_a_noise_scale_is_refused_and_unit_noise_scale_inverts(node_classes, model):
    """0.28's CONST draws the noise at ``noise_scale`` (8 for HiDream-O1): x = (1 - s)x0 + s*scale*eps."""
    scaled = with_sampling(model, ms.ModelSamplingDiscreteFlow, ms.CONST, noise_scale=8.0)
    with pytest.raises(ValueError, match="sampling type CONST with noise_scale 8"):
        invert_with(node_classes, scaled)
    inv, _ = invert_with(node_classes, with_sampling(model, ms.ModelSamplingDiscreteFlow, ms.CONST, noise_scale=1.0))
    assert inv.schedule == "flow"


@pytest.mark.parametrize("option, schedule", [("eps", "vp"), ("v_prediction", "vp")])
def test_eps_and_v_prediction_are_accepted(node_classes, model, option, schedule):
    patched = node_classes["ModelSamplingDiscrete"]().patch(model, option, False)[0]
    inv, _ = invert_with(node_classes, patched)
    assert inv.schedule == schedule


def test_the_refusal_happens_before_any_model_evaluation(node_classes, model):
    """Refused at the input check: a wrong model costs the user no time and changes nothing."""
    calls = []
    patched = with_sampling(model, ms.ModelSamplingDiscrete, ms.X0)
    patched.set_model_unet_function_wrapper(lambda apply, args: calls.append(1) or apply(args["input"],
                                                                                         args["timestep"],
                                                                                         **args["c"]))
    with pytest.raises(ValueError):
        invert_with(node_classes, patched)
    assert calls == []


def _version() -> str:
    import comfyui_version

    return comfyui_version.__version__

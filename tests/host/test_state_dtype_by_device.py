"""The solver state's dtype follows the model's device, through real ComfyUI nodes.

A device without float64 (Apple MPS) is faked by the capability lookup the pack uses
(``solvers.precision.device_has_float64``): the tensors stay on the CPU, so what is tested is the choice and
everything that follows from it (state dtype, report, refusal, saved parameters), not the device itself.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from testbed import comfyhost
from testbed.helpers import edit, guider, invert, random_latent, sigmas
from testbed.tiny import make_cond, make_model


@pytest.fixture(scope="module")
def base_model(host):
    return make_model(0)


@pytest.fixture
def no_float64(monkeypatch):
    """The model's device reports no float64."""
    monkeypatch.setattr(comfyhost.pack_module("solvers.precision"), "device_has_float64", lambda device: False)


def edict(node_classes, state_dtype):
    return node_classes["ExactInversion_EDICTSolver"].execute(p=0.93, p_rule="fixed",
                                                               state_dtype=state_dtype).result[0]


def test_solver_nodes_default_to_auto(node_classes):
    for name in ("DDIMSolver", "EDICTSolver", "BDIASolver", "AIDISolver", "EESSolver"):
        schema = node_classes[f"ExactInversion_{name}"].define_schema()
        (dtype,) = [i for i in schema.inputs if i.id == "state_dtype"]
        assert dtype.default == "auto" and dtype.options == ["auto", "float64", "float32"]


def test_auto_inverts_in_float64_where_the_device_has_it(node_classes, base_model):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 3.0)
    out = node_classes["ExactInversion_Invert"].execute(guider=g, sampler=edict(node_classes, "auto"),
                                                         sigmas=sigmas(node_classes, base_model, 10),
                                                         latent=random_latent())
    inv = out.result[0]
    assert inv.latents["x"].dtype == torch.float64 and inv.params["state_dtype"] == "float64"
    assert out.ui["warnings"] == []


def roundtrip(node_classes, g, sampler, steps, latent):
    out = node_classes["ExactInversion_Invert"].execute(guider=g, sampler=sampler,
                                                         sigmas=sigmas(node_classes, g.model_patcher, steps),
                                                         latent=latent)
    return out, edit(node_classes, g, out.result[0])["samples"]


def test_auto_without_float64_inverts_in_float32_and_reports_it(node_classes, base_model, monkeypatch):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 3.0)
    latent = random_latent()
    _, explicit32 = roundtrip(node_classes, g, edict(node_classes, "float32"), 10, latent)
    monkeypatch.setattr(comfyhost.pack_module("solvers.precision"), "device_has_float64", lambda device: False)
    out, auto = roundtrip(node_classes, g, edict(node_classes, "auto"), 10, latent)
    inv = out.result[0]
    assert inv.latents["x"].dtype == torch.float32 and inv.params["state_dtype"] == "float32"
    assert torch.equal(auto, explicit32)  # auto is float32 there, nothing else changes
    (note,) = [w for w in out.ui["warnings"] if "no float64" in w]
    assert "float32 rounding" in note and note in out.ui["text"] and note in inv.meta["warnings"]


def test_explicit_float64_without_float64_is_refused_naming_node_and_fix(node_classes, base_model, no_float64):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 3.0)
    with pytest.raises(ValueError, match=r"EDICT Solver: input 'state_dtype' is float64, but the model's device "
                                         r"\(cpu\) has no float64; choose auto"):
        invert(node_classes, g, edict(node_classes, "float64"), sigmas(node_classes, base_model, 10), random_latent())


def test_a_float64_inversion_edits_in_float32_on_a_device_without_it(node_classes, base_model, monkeypatch):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 3.0)
    inv, _ = invert(node_classes, g, edict(node_classes, "float64"), sigmas(node_classes, base_model, 10),
                    random_latent())
    assert inv.params["state_dtype"] == "float64"
    made_in_float32 = dataclasses.replace(inv, params={**inv.params, "state_dtype": "float32"},
                                          latents={k: v.float() for k, v in inv.latents.items()})
    in_float32 = edit(node_classes, g, made_in_float32)
    monkeypatch.setattr(comfyhost.pack_module("solvers.precision"), "device_has_float64", lambda device: False)
    out = node_classes["ExactInversion_Edit"].execute(guider=g, inversion=inv)
    (warning,) = [w for w in out.ui["warnings"] if "no float64" in w]
    assert warning.startswith("input 'inversion' holds a float64 state")
    assert torch.equal(out.result[0]["samples"], in_float32["samples"])


def test_sampler_custom_advanced_follows_the_device(node_classes, base_model, no_float64):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 4.0)
    noise = node_classes["RandomNoise"].execute(noise_seed=3).result[0]

    def generate(state_dtype):
        with torch.inference_mode():
            return node_classes["SamplerCustomAdvanced"].execute(
                noise=noise, guider=g, sampler=edict(node_classes, state_dtype),
                sigmas=sigmas(node_classes, base_model, 6),
                latent_image={"samples": torch.zeros(1, 4, 8, 8)}).result[0]["samples"]

    assert torch.equal(generate("auto"), generate("float32"))
    with pytest.raises(ValueError, match=r"EDICT Solver: input 'state_dtype' is float64"):
        generate("float64")

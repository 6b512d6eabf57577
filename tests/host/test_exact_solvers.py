"""Every solver node inside real ComfyUI: exact round trips for EDICT and BDIA through the real
sampling path (tiny float32 UNet, float64 state), with and without a ControlNet on the guiders,
convergence behaviour for AIDI and EES."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from testbed.covering import combinations_met, covering_array
from testbed.helpers import guider, invert, random_latent, sigmas, variant
from testbed.images import example_image
from testbed.solver_nodes import SOLVER_NODES, host_roundtrip, solver_sampler
from testbed.tiny import image_tensor, make_cond, make_controlnet, make_model

make_sampler = solver_sampler


@pytest.fixture(scope="module")
def base_model(host):
    return make_model(0)


@pytest.fixture(scope="module")
def control(host):
    """A tiny ControlNet (every weight seeded, zero convs included) and its hint: the example photo as an IMAGE."""
    return make_controlnet(0), image_tensor(example_image())


def controlled_guider(node_classes, model, cfg, control=None, on=("positive", "negative")):
    """CFGGuider on the fixed test prompts; with ``control`` = (ControlNet, hint) the stock
    ControlNetApplyAdvanced puts the ControlNet on the conditionings named in ``on``."""
    pos, neg = make_cond(1), make_cond(2)
    if control is not None:
        cnet, hint = control
        c_pos, c_neg = node_classes["ControlNetApplyAdvanced"]().apply_controlnet(pos, neg, cnet, hint, 1.0, 0.0, 1.0)
        pos, neg = (c_pos if "positive" in on else pos), (c_neg if "negative" in on else neg)
    return guider(node_classes, model, pos, neg, cfg)


def roundtrip_error(node_classes, model, sampler, steps, cfg, batch=1, control=None):
    """Invert then edit back with guiders of the same settings, built twice as a workflow does (each
    with its own ControlNet copy and hint cache when ``control`` is given)."""
    g_invert = controlled_guider(node_classes, model, cfg, control)
    g_edit = controlled_guider(node_classes, model, cfg, control)
    latent = random_latent((batch, 4, 8, 8), seed=7)
    rel, inv, _ = host_roundtrip(node_classes, g_invert, sampler, sigmas(node_classes, model, steps), latent, g_edit)
    return rel, inv


#: the exactness matrix: ControlNet on both guiders or none, batch, cfg, steps, solver, model kind. Its 96-case
#: product costs ~11 min per host; these rows meet every combination of any three settings (testbed.covering).
ROUNDTRIP_LEVELS = (["none", "both_guiders"], [1, 3], [1.0, 3.0], [20, 50], ["edict", "bdia"], ["eps", "v", "flow"])
ROUNDTRIP_CASES = covering_array(ROUNDTRIP_LEVELS, strength=3)


def test_the_exactness_matrix_meets_every_three_settings_together():
    every = combinations_met(list(itertools.product(*ROUNDTRIP_LEVELS)), 3)
    assert combinations_met(ROUNDTRIP_CASES, 3) == every
    assert len(ROUNDTRIP_CASES) < len(list(itertools.product(*ROUNDTRIP_LEVELS))) / 4


@pytest.mark.parametrize("controlnet,batch,cfg,steps,solver,kind", ROUNDTRIP_CASES)
def test_exact_roundtrip_through_comfyui(node_classes, base_model, control, kind, solver, steps, cfg, batch,
                                         controlnet):
    model = variant(node_classes, base_model, kind)
    with torch.inference_mode():
        rel, inv = roundtrip_error(node_classes, model, make_sampler(node_classes, solver), steps, cfg, batch,
                                   control if controlnet == "both_guiders" else None)
    assert rel <= 1e-5, rel
    assert set(inv.latents) == ({"x", "y"} if solver == "edict" else {"x", "x_next"})
    assert all(t.dtype == torch.float64 for t in inv.latents.values())


#: the exact solvers added after EDICT and BDIA: a smaller matrix (20 steps, batch 2, every three settings together),
#: the same bound
NEWER_EXACT = ["belm", "rex"]


@pytest.mark.parametrize("controlnet,cfg,solver,kind",
                         covering_array((["none", "both_guiders"], [1.0, 3.0], NEWER_EXACT, ["eps", "v", "flow"])))
def test_newer_exact_solvers_round_trip_through_comfyui(node_classes, base_model, control, kind, solver, cfg,
                                                        controlnet):
    model = variant(node_classes, base_model, kind)
    with torch.inference_mode():
        rel, inv = roundtrip_error(node_classes, model, make_sampler(node_classes, solver), 20, cfg, 2,
                                   control if controlnet == "both_guiders" else None)
    assert rel <= 1e-5, rel
    assert all(t.dtype == torch.float64 for t in inv.latents.values())


def inverted_top(node_classes, model, cfg, control=None, on=("positive", "negative")) -> torch.Tensor:
    """z_T of an EDICT inversion of a batch of 3 latents, 20 steps."""
    g = controlled_guider(node_classes, model, cfg, control, on)
    _, top = invert(node_classes, g, make_sampler(node_classes, "edict"), sigmas(node_classes, model, 20),
                    random_latent((3, 4, 8, 8), seed=7))
    return top["samples"]


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_controlnet_changes_what_the_model_predicts(node_classes, base_model, control, kind):
    """Without this the ControlNet rows of the exactness matrix would prove nothing: the control must reach
    the model in our Invert path, for every sample of a batch and on the negative (uncond) branch too."""
    model = variant(node_classes, base_model, kind)
    with torch.inference_mode():
        plain = inverted_top(node_classes, model, 3.0)
        both = inverted_top(node_classes, model, 3.0, control)
        positive_only = inverted_top(node_classes, model, 3.0, control, on=("positive",))

    def per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)

    assert (per_sample(both, plain) > 0.1).all(), per_sample(both, plain)
    assert (per_sample(both, positive_only) > 0.1).all(), per_sample(both, positive_only)


def test_bdia_gamma_094_exact(node_classes, base_model):
    with torch.inference_mode():
        rel, _ = roundtrip_error(node_classes, base_model, make_sampler(node_classes, "bdia", gamma=0.94), 20, 3.0)
    assert rel <= 1e-5


def test_exact_solvers_beat_ddim_by_orders_of_magnitude(node_classes, base_model):
    ddim = node_classes["ExactInversion_DDIMSolver"].execute(inversion_label="current",
                                                             state_dtype="float64").result[0]
    with torch.inference_mode():
        approx, _ = roundtrip_error(node_classes, base_model, ddim, 20, 3.0)
        exact, _ = roundtrip_error(node_classes, base_model, make_sampler(node_classes, "edict"), 20, 3.0)
    assert exact * 1e4 < approx


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_aidi_error_decreases_with_iterations(node_classes, base_model, kind):
    model = variant(node_classes, base_model, kind)
    errs = []
    with torch.inference_mode():
        for iters in (1, 3, 8):
            sampler = make_sampler(node_classes, "aidi", max_iter=iters, tol=0.0)
            errs.append(roundtrip_error(node_classes, model, sampler, 20, 1.0)[0])
    assert all(math.isfinite(e) for e in errs)
    assert errs[0] > errs[1] > errs[2], errs


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
@pytest.mark.parametrize("scheme", ["ees25", "ees27", "rf_solver", "fireflow"])
def test_near_exact_error_decreases_with_steps(node_classes, base_model, kind, scheme):
    model = variant(node_classes, base_model, kind)
    with torch.inference_mode():
        coarse, _ = roundtrip_error(node_classes, model, make_sampler(node_classes, scheme), 10, 1.0)
        fine, _ = roundtrip_error(node_classes, model, make_sampler(node_classes, scheme), 40, 1.0)
    assert math.isfinite(coarse) and fine < coarse, (coarse, fine)


def test_ees_stages_reach_the_model_at_fractional_timesteps(node_classes, base_model):
    """ComfyUI rounds discrete timesteps; EES stages between grid levels must get their own.

    Spied on the UNet's ``_forward``, which its DIFFUSION_MODEL wrappers (ours among them) run into."""
    seen = []
    dm = base_model.model.diffusion_model
    original = dm._forward

    def spy(x, timesteps=None, *args, **kwargs):
        seen.extend(timesteps.flatten().tolist())
        return original(x, timesteps, *args, **kwargs)

    dm._forward = spy  # test-only spy on an object this test built (make_model), removed below
    try:
        with torch.inference_mode():
            roundtrip_error(node_classes, base_model, make_sampler(node_classes, "ees25"), 6, 1.0)
    finally:
        del dm._forward
    fractional = [t for t in seen if abs(t - round(t)) > 1e-3]
    assert fractional, "every stage was rounded to an integer timestep"
    # grid levels themselves stay on ComfyUI's integer timesteps
    assert any(abs(t - round(t)) < 1e-9 and t > 0 for t in seen)
    # and nothing is patched on the model: the wrapper lived in the run's own model_options
    assert "timestep" not in vars(base_model.get_model_object("model_sampling"))
    assert not base_model.model_options.get("transformer_options", {}).get("wrappers")


@pytest.mark.parametrize("name", sorted(SOLVER_NODES))
def test_every_solver_generates_in_sampler_custom_advanced(node_classes, base_model, name):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 4.0)
    noise = node_classes["RandomNoise"].execute(noise_seed=3).result[0]
    shared = make_sampler(node_classes, name)  # ComfyUI caches it and shares it between runs: no run state on it
    kept = {k: id(v) for k, v in vars(shared).items()}
    with torch.inference_mode():
        out = node_classes["SamplerCustomAdvanced"].execute(
            noise=noise, guider=g, sampler=shared, sigmas=sigmas(node_classes, base_model, 8),
            latent_image={"samples": torch.zeros(1, 4, 8, 8)}).result[0]
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert {k: id(v) for k, v in vars(shared).items()} == kept


def test_bdia_guard_refuses_unstable_inversion(node_classes, base_model):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 1.0)
    with pytest.raises(ValueError, match=r"Invert: input 'sampler' cannot invert on this grid.*gamma"):
        invert(node_classes, g, make_sampler(node_classes, "bdia", gamma=0.7), sigmas(node_classes, base_model, 60),
               random_latent())


def test_bdia_guard_warning_shown_in_node(node_classes, base_model):
    g = guider(node_classes, base_model, make_cond(1), make_cond(2), 1.0)
    out = node_classes["ExactInversion_Invert"].execute(
        guider=g, sampler=make_sampler(node_classes, "bdia", gamma=0.8), sigmas=sigmas(node_classes, base_model, 25),
        latent=random_latent())
    assert any("gamma" in t for t in out.ui["text"][1:]), out.ui
    # the front end's report panel highlights exactly these lines (js/report_panel.js)
    assert out.ui["warnings"] == out.ui["text"][1:] and "parasitic mode" in out.ui["warnings"][0]


@pytest.mark.parametrize("node, bad, match", [
    ("ExactInversion_EDICTSolver", {"p": 1.5}, r"EDICT Solver: input 'p' must be"),
    ("ExactInversion_BDIASolver", {"gamma": 0.0}, r"BDIA Solver: input 'gamma' must be"),
    ("ExactInversion_AIDISolver", {"max_iter": 0}, r"AIDI Solver: input 'max_iter' must be"),
])
def test_out_of_range_parameters(node_classes, node, bad, match):
    kwargs = next(v for k, v in SOLVER_NODES.values() if k == node)
    with pytest.raises(ValueError, match=match):
        node_classes[node].execute(**{**kwargs, **bad})

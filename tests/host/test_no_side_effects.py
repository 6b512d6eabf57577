"""The pack changes no ComfyUI object it did not create for the run: not the model, its sampling object or its
modules' parameters, not the guider, not the guider's conds, not the patcher's options.

Checked while the runs happen (a wrapper of this test's own model takes a snapshot at every model call) and after
them, for every node that runs the model: Invert and Edit with each solver, Attention Mask, Blended Guidance (its
guider is the pack's own; the model under it is checked), Null-text Inversion (every method).
"""

from __future__ import annotations

import copy
from typing import Any

import comfy.patcher_extension
import pytest
import torch

from testbed.helpers import guider as make_guider
from testbed.helpers import random_latent, sigmas
from testbed.solver_nodes import solver_sampler
from testbed.tiny import make_cond, make_model

#: what ComfyUI's own CFGGuider sets on itself while it samples (outer_sample): not the pack's doing
COMFY_SAMPLING_ATTRIBUTES = {"inner_model", "conds", "loaded_models", "model_options"}


def ids(mapping: dict[str, Any]) -> dict[str, int]:
    return {k: id(v) for k, v in mapping.items()}


class Watch:
    """Snapshots of the objects a run must leave alone, taken before, during (every model call) and after."""

    def __init__(self, model: Any, guider: Any) -> None:
        self.model, self.guider = model, guider
        self.during: list[dict[str, Any]] = []
        self.options = copy.deepcopy(model.model_options)
        self.before = self.snapshot()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_watch", self.wrapper)

    def snapshot(self) -> dict[str, Any]:
        base = self.model.model
        guider_attrs = {k: v for k, v in vars(self.guider).items() if k not in COMFY_SAMPLING_ATTRIBUTES}
        return {
            "sampling": ids(vars(base.model_sampling)),
            "sampling type": type(base.model_sampling),
            "parameters": {n: (id(p), p.requires_grad) for n, p in base.diffusion_model.named_parameters()},
            "buffers": {n: id(b) for n, b in base.diffusion_model.named_buffers()},
            "guider": ids(guider_attrs),
            "original conds": {k: [id(c) for c in v] for k, v in self.guider.original_conds.items()},
        }

    def wrapper(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        snap = self.snapshot()
        conds = getattr(self.guider, "conds", None)
        # the run's dict and its entries, held (not their ids) so that a later run cannot reuse a freed id
        snap["conds"] = (conds, dict(conds)) if isinstance(conds, dict) else None
        self.during.append(snap)
        return executor(*args, **kwargs)

    def check(self) -> None:
        assert self.during, "the model never ran"
        for snap in self.during:
            assert {k: v for k, v in snap.items() if k != "conds"} == self.before
        per_run: dict[int, list[dict[str, Any]]] = {}
        for snap in self.during:
            if snap["conds"] is not None:
                run_conds, entries = snap["conds"]
                per_run.setdefault(id(run_conds), []).append(entries)
        for seen in per_run.values():
            first = seen[0]
            for entries in seen[1:]:
                assert entries.keys() == first.keys() and all(entries[k] is first[k] for k in first), \
                    "a run's conds changed while it ran"
        assert self.snapshot() == self.before
        self.model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_watch")
        assert self.model.model_options.keys() == self.options.keys()
        assert repr(self.model.model_options) == repr(self.options)


def sampler(nodes: dict, name: str) -> Any:
    return solver_sampler(nodes, name, **({"max_iter": 2} if name == "aidi" else {}))


@pytest.fixture(params=["inference", "normal"])
def setup(node_classes, request):
    """A tiny model built in inference mode, as ComfyUI's executor loads models, or outside it (its parameters
    require grad)."""
    with torch.inference_mode(request.param == "inference"):
        model = make_model(5)
    guider = make_guider(node_classes, model, make_cond(1), make_cond(2), 3.0)
    return model, guider, sigmas(node_classes, model, 4)


@pytest.mark.parametrize("solver", ["aidi", "bdia", "ddim", "edict", "ees25"])
def test_invert_and_edit_change_nothing_they_did_not_create(node_classes, setup, solver):
    model, guider, sig = setup
    watch = Watch(model, guider)
    shared = sampler(node_classes, solver)  # ComfyUI caches a solver node's SAMPLER and shares it between runs
    kept = (ids(vars(shared)), ids(vars(shared.solver)))
    with torch.inference_mode():
        inv = node_classes["ExactInversion_Invert"].execute(guider=guider, sampler=shared, sigmas=sig,
                                                            latent=random_latent()).result[0]
        node_classes["ExactInversion_Edit"].execute(guider=guider, inversion=inv)
    watch.check()
    assert (ids(vars(shared)), ids(vars(shared.solver))) == kept, "a run left its state on the shared SAMPLER"


@pytest.mark.parametrize("method", ["npi", "nti", "bias_correction"])
def test_null_text_and_its_edit_change_nothing(node_classes, setup, method):
    """nti and bias_correction backpropagate through the model's inference-mode weights without replacing
    or copying them (editing/gradients.py): the snapshots during the optimisation see the model's own."""
    model, guider, sig = setup
    watch = Watch(model, guider)
    with torch.inference_mode():
        inv = node_classes["ExactInversion_NullTextInversion"].execute(
            guider=guider, sampler=sampler(node_classes, "edict"), sigmas=sig, latent=random_latent(),
            method=method, inner_steps=2, starts=2).result[0]
        node_classes["ExactInversion_Edit"].execute(guider=guider, inversion=inv)  # the per-step negatives
    watch.check()


@pytest.fixture()
def toy(node_classes):
    model, clip, _ = node_classes["ExactInversion_ToyModelLoader"].execute(model_file="toy_model.safetensors").result
    prompt = "a red circle on a green background"
    pos = node_classes["CLIPTextEncode"]().encode(clip, prompt)[0]
    neg = node_classes["CLIPTextEncode"]().encode(clip, "")[0]
    return model, clip, prompt, pos, neg


def toy_inversion(node_classes, toy):
    model, _, _, pos, neg = toy
    guider = make_guider(node_classes, model, pos, neg, 1.0)
    latent = {"samples": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1}
    with torch.inference_mode():
        inv = node_classes["ExactInversion_Invert"].execute(guider=guider, sampler=sampler(node_classes, "edict"),
                                                            sigmas=sigmas(node_classes, model, 3),
                                                            latent=latent).result[0]
    return guider, inv


def test_attention_mask_changes_nothing(node_classes, toy):
    """It records through patches in its run's own options, on the guider it is given."""
    guider, inv = toy_inversion(node_classes, toy)
    model, clip, prompt, _, _ = toy
    watch = Watch(model, guider)
    with torch.inference_mode():
        node_classes["ExactInversion_AttentionMask"].execute(guider=guider, inversion=inv, clip=clip, prompt=prompt,
                                                            words="red")
    watch.check()


def test_blended_guidance_leaves_the_model_it_was_given_alone(node_classes, toy):
    guider, inv = toy_inversion(node_classes, toy)
    model, clip, prompt, pos, neg = toy
    watch = Watch(model, guider)
    target = node_classes["CLIPTextEncode"]().encode(clip, "a yellow circle on a green background")[0]
    blended = node_classes["ExactInversion_BlendedGuidance"].execute(
        model=model, source_positive=pos, target_positive=target, negative=neg, clip=clip, source_prompt=prompt,
        target_prompt="a yellow circle on a green background", anchor="red", local_blend=True, eta=0.3).result[0]
    with torch.inference_mode():
        node_classes["ExactInversion_Edit"].execute(guider=blended, inversion=inv)
    watch.during.append(watch.snapshot() | {"conds": None})  # the blended guider samples a clone: compare after
    watch.check()

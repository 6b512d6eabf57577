"""Every image family of this ComfyUI with eps, v or flow sampling, as a tiny random model in its own classes.

Per family (testbed/tiny_families.py): EDICT and BDIA invert -> edit round trips are exact (float32
model, float64 state); Attention Mask and the Blended Guidance Guider find the anchor word's map in the
model's text attention, or refuse naming the node, the family and what is supported; Null-text Inversion
works (NPI with EDICT exact, NTI optimises) or refuses saying why. A family this ComfyUI lacks is skipped
with its version; ComfyUI 0.28.2 has every one.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

import comfy.samplers
import pytest
import torch

from testbed import comfyhost
from testbed import tiny_families as tf
from testbed.helpers import edit, guider, sigmas
from testbed.solver_nodes import solver_sampler

SOURCE, TARGET, ANCHOR = "a photo of a dog on grass", "a photo of a cat on grass", "dog"
MASK, BLEND, NULL_TEXT = "ExactInversion_AttentionMask", "ExactInversion_BlendedGuidance", \
    "ExactInversion_NullTextInversion"

#: families whose text attention the pack cannot read, and the reason its refusal gives
ATTENTION_REFUSED = {
    "Stable Cascade C": "extra keys of the image attention",
    "PixArt Sigma": "take no transformer options",
    "HunyuanDiT": "take no transformer options",
    "ERNIE-Image": "take no transformer options",
    "Lens": "97-token prompt template",
    "HunyuanImage 2.1 Refiner": "prompt template by a rule",
}
#: families Null-text Inversion refuses whatever the method, and why
NULL_TEXT_REFUSED = {
    "Flux dev": "is guidance-distilled: its config has a guidance embedding",
    "Flux Fill": "is guidance-distilled: its config has a guidance embedding",
    "Flux.2": "is guidance-distilled: its config has a guidance embedding",
    "Stable Cascade C": "takes its prompt as .*not as the cross-attention context",
    "SD X4 Upscaler": "takes an integer class input 'y'",
}
#: families whose negative's length is a model input: NPI, which swaps in the source prompt, refuses
NPI_REFUSED = {"OmniGen2": "also takes the negative's length", "Boogu": "also takes the negative's length"}
#: NTI backpropagates through the model; it refuses a model whose forward pass is closed to gradients:
NO_BACKWARD = "no backward pass|changes activations in place"
#: on every ComfyUI: Flux-style blocks change activations in place after autograd saved them
NTI_IN_PLACE = {"Flux schnell", "LongCat-Image", "Chroma", "Chroma Radiance", "HunyuanImage 2.1", "PixelDiT"}
#: on a ComfyUI that runs RoPE through comfy_kitchen kernels outside training (0.28), which have no backward
NTI_KERNELS = {"HiDream", "Lumina 2", "Z-Image", "Kandinsky 5 Image", "Lens", "ERNIE-Image", "Z-Image pixel space",
               "OmniGen2", "Boogu", "Qwen-Image", "Krea 2"}


def rope_kernels() -> bool:
    """Whether this ComfyUI runs RoPE through fused kernels outside training (0.28: comfy_kitchen)."""
    import comfy.ldm.flux.math

    return hasattr(comfy.ldm.flux.math, "_apply_rope")


def comfy_version() -> str:
    return str(getattr(importlib.import_module("comfyui_version"), "__version__", "?"))


#: families Invert refuses, with what the message says: the other tests, which start from an inversion, leave them out
INVERSION_REFUSED = {"HunyuanImage 2.1 Refiner": "is an image-conditioned model (a refiner)"}


def family_params(needs_inversion: bool = True) -> list[Any]:
    """One param per family: skipped (with the ComfyUI version) when this host lacks it; without the families
    Invert refuses when the test starts from an inversion."""
    out = []
    for family in tf.FAMILIES_LIST:
        if needs_inversion and family.name in INVERSION_REFUSED:
            continue
        marks: list[Any] = []
        if not family.available():
            marks.append(pytest.mark.skip(reason=f"ComfyUI {comfy_version()} has no {family.config}"))
        out.append(pytest.param(family, id=family.name, marks=marks))
    return out


def pack(name: str) -> Any:
    """A module of the pack as ComfyUI loaded it."""
    return comfyhost.pack_module("nodes." + name)


@functools.cache
def built(name: str) -> Any:
    """The family's tiny model, built once per session in inference mode (as ComfyUI's loader builds)."""
    with torch.inference_mode():
        return tf.FAMILIES[name].build(0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def sampler(nodes: dict, name: str) -> Any:
    return solver_sampler(nodes, name)


def inversion(nodes: dict, g: Any, family: tf.Family, solver: str = "edict", steps: int = 4) -> tuple[Any, dict]:
    latent = family.random_latent()
    with torch.inference_mode():
        inv = nodes["ExactInversion_Invert"].execute(guider=g, sampler=sampler(nodes, solver),
                                                     sigmas=sigmas(nodes, g.model_patcher, steps),
                                                     latent=latent).result[0]
    return inv, latent


def denoised(model: Any, cond: list, latent: torch.Tensor, sigma: float) -> torch.Tensor:
    """One evaluation of ``model`` at ``sigma`` on ``latent`` with ``cond`` (cfg 1), through ComfyUI's own
    sampling setup (which takes the latent into the model's space, ``process_latent_in``)."""
    g = comfy.samplers.CFGGuider(model)
    g.set_conds(cond, cond)
    g.set_cfg(1.0)
    out: dict[str, torch.Tensor] = {}

    class Once(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            out["x0"] = model_wrap(latent_image, sigmas[:1].expand(latent_image.shape[0]), **extra_args)
            return latent_image

    with torch.inference_mode():
        g.sample(torch.zeros_like(latent), latent, Once(), torch.tensor([sigma, 0.0]), seed=0)
    return out["x0"]


def mid_sigma(model: Any, family: tf.Family) -> float:
    return 0.5 if family.sampling == "flow" else float(model.get_model_object("model_sampling").sigma_max) * 0.1


# --- the tiny models themselves ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", family_params(needs_inversion=False))
def test_the_tiny_model_predicts_from_the_latent_and_the_prompt(host, family):
    """Exactness on a model that ignored its input or its prompt would prove nothing."""
    model = built(family.name)
    s = mid_sigma(model, family)
    x1, x2 = family.random_latent(1)["samples"], family.random_latent(2)["samples"]
    a = denoised(model, family.cond(1), x1, s)
    assert a.shape == model.model.process_latent_in(x1).shape and torch.isfinite(a).all()
    assert rel(denoised(model, family.cond(2), x1, s), a) > 1e-3
    assert rel(denoised(model, family.cond(1), x2, s), a) > 1e-2
    sampling = model.get_model_object("model_sampling")
    expected = {"eps": "EPS", "v": "V_PREDICTION", "flow": "CONST"}[family.sampling]
    assert pack("model_adapter").prediction_type(sampling).__name__ == expected


# --- 1. exact round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["edict", "bdia"])
@pytest.mark.parametrize("family", family_params(needs_inversion=False))
def test_edict_and_bdia_invert_and_edit_back_exactly(node_classes, host, family, solver):
    model = built(family.name)
    pos, neg = family.cond(1), family.cond(2)
    if family.name in INVERSION_REFUSED:
        refused = re.escape(INVERSION_REFUSED[family.name])
        with pytest.raises(ValueError, match=rf"^Invert: the model \(.*\) .* {refused}"):
            inversion(node_classes, guider(node_classes, model, pos, neg, 3.0), family, solver, steps=6)
        return
    inv, latent = inversion(node_classes, guider(node_classes, model, pos, neg, 3.0), family, solver, steps=6)
    with torch.inference_mode():
        rec = edit(node_classes, guider(node_classes, model, pos, neg, 3.0), inv)["samples"]
    assert rel(rec, latent["samples"]) <= 1e-5
    assert all(t.dtype == torch.float64 for t in inv.latents.values())
    assert rel(inv.latents["x"].float(), model.model.process_latent_in(latent["samples"])) > 0.1  # it went somewhere


# --- 2. attention: the anchor's map in the model's text attention, or a clear refusal ----------------------------


def probe(model: Any, family: tf.Family, cond: list, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """q and k (batch, heads, tokens, dim) of every attention call of one evaluation, seen through ComfyUI's
    ``optimized_attention_override`` on a clone."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    m = model.clone()

    def override(func: Any, *args: Any, **kwargs: Any) -> Any:
        q, k = args[0], args[1]
        if not kwargs.get("skip_reshape", False):
            heads = int(args[3] if len(args) > 3 else kwargs["heads"])
            q = q.reshape(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
            k = k.reshape(k.shape[0], k.shape[1], -1, q.shape[-1]).transpose(1, 2)
        calls.append((q.detach().float().clone(), k.detach().float().clone()))
        return func(*args, **kwargs)

    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    denoised(m, cond, x, mid_sigma(model, family))
    return calls


def check_layout(model: Any, family: tf.Family, layout: Any, position: int) -> None:
    """The pack's layout against the model's own attention: in the first text attention call, the image
    queries are the rows that change with the latent (the text rows do not), and the key the pack reads for
    context token ``position`` is the text key that changes most when that token changes."""
    base = family.cond(1)
    other = [[base[0][0].clone(), base[0][1]]]
    other[0][0][:, position] = tf._rand(99, other[0][0].shape[-1])
    x1, x2 = family.random_latent(1)["samples"], family.random_latent(2)["samples"]
    runs = [probe(model, family, base, x1), probe(model, family, base, x2), probe(model, family, other, x1)]
    h, w = (-(-family.latent[-2] // family.patch[0]), -(-family.latent[-1] // family.patch[1]))
    n_ctx = base[0][0].shape[1]
    pad = int(getattr(model.model.diffusion_model, "pad_tokens_multiple", None) or 1)  # Z-Image pads the image
    padded = -(-h * w // pad) * pad
    located = [(i, layout.locate(h * w, q.shape[2], k.shape[2], n_ctx, padded)) for i, (q, k) in enumerate(runs[0])]
    found = [(i, loc) for i, loc in located if loc is not None]
    assert found, "no attention call of the model fits the pack's layout"
    if layout.order != "cross":  # the joint calls are the longest
        longest = max(runs[0][i][0].shape[2] for i, _ in found)
        found = [(i, loc) for i, loc in found if runs[0][i][0].shape[2] == longest]
    i, (image_start, context_start) = found[0]
    (q1, k1), (q2, _), (_, k3) = runs[0][i], runs[1][i], runs[2][i]
    image = torch.zeros(q1.shape[2], dtype=torch.bool)
    image[image_start:image_start + h * w] = True
    text = torch.ones(q1.shape[2], dtype=torch.bool)
    text[image_start:image_start + padded] = False
    moved = (q1 - q2).abs().amax(dim=(0, 1, 3)) > 1e-6
    assert moved[image].all(), "an image query of the pack's layout does not depend on the latent"
    if layout.order != "cross":
        assert not moved[text].any(), "a text query of the pack's layout depends on the latent"
        text = torch.nonzero(text).flatten()
    else:
        text = torch.arange(k1.shape[2])
    change = (k3 - k1).abs().amax(dim=(0, 1, 3))[text]
    assert int(text[int(change.argmax())]) == context_start + position


@pytest.mark.parametrize("family", family_params())
def test_attention_nodes_find_the_anchor_or_refuse_clearly(node_classes, host, family):
    nodes, model, clip = node_classes, built(family.name), family.clip()
    pos, tgt, neg = family.cond(1), family.cond(3), family.cond(2)
    g = guider(nodes, model, pos, neg, 1.0)
    inv, latent = inversion(nodes, g, family)

    def blended(**kw: Any) -> Any:
        return nodes[BLEND].execute(model=model, source_positive=pos, target_positive=tgt, negative=neg, clip=clip,
                                    source_prompt=SOURCE, target_prompt=TARGET, anchor=ANCHOR, cfg=1.0,
                                    target_cfg=5.0, injection=0.0, **kw).result[0]

    def mask() -> torch.Tensor:
        with torch.inference_mode():
            return nodes[MASK].execute(guider=g, inversion=inv, clip=clip, prompt=SOURCE, words=ANCHOR).result[0]

    if family.name in ATTENTION_REFUSED:
        for node, run in (("Blended Guidance Guider", blended), ("Attention Mask", mask)):
            refused = rf"^{node}: input '(model|guider)': the model \({family.config}\) is not supported: .*"
            with pytest.raises(ValueError, match=refused + rf"{ATTENTION_REFUSED[family.name]}.*UNet cross-attention"):
                run()
        return
    b = blended(local_blend=True)
    b.control.history = []
    with torch.inference_mode():
        out = edit(nodes, b, inv)["samples"]
        plain = edit(nodes, guider(nodes, model, tgt, neg, 5.0), inv)["samples"]
    assert rel(b.last_reconstruction, latent["samples"]) <= 1e-5  # recording leaves the model's output alone
    run = b.edit_pass
    assert run.maps == 2 * 4  # every evaluation of the reconstruction (EDICT: 2 per step) found the anchor
    records = pack("attention_control").joint_records(b.control.history)
    if family.patch is not None:  # a DiT: one map per text attention call, on the image's token grid
        grid = (-(-family.latent[-2] // family.patch[0]), -(-family.latent[-1] // family.patch[1]))
        assert records and {tuple(r.maps.shape) for r in records} == {(1, 1, *grid)}
    anchor_map = run.map_sum / run.maps
    assert float(anchor_map.std()) > 1e-3 * float(anchor_map.mean())  # a map, not uniform attention
    assert torch.isfinite(out).all() and rel(out, plain) > 1e-4  # the mask changed the edit
    m = mask()
    assert tuple(m.shape) == (1, *family.latent[-2:])
    expected = run.map_sum / run.map_sum.amax()  # the guider's maps, averaged over the same evaluations
    lo = expected.amin()
    assert torch.allclose(m, ((expected - lo) / (1 - lo)).reshape(m.shape), atol=1e-5)
    control = pack("attention_control")
    layout = control.text_layout(model, "test")
    if layout is not None:
        positions = control.context_positions(clip, SOURCE, ANCHOR, layout)
        assert b.control.anchor_positions == positions and len(positions) == 1
        check_layout(model, family, layout, positions[0])


# --- 3. null-text inversion -------------------------------------------------------------------------------------


def null_text_case(nodes: dict, family: tf.Family) -> tuple[Any, Any, list, list, dict]:
    """A cfg-5 CFGGuider on the family's tiny model with a negative as long as an empty prompt encodes to."""
    model = built(family.name)
    pos = family.cond(1)
    neg = family.cond(2, None if family.fixed_length_text else max(1, pos[0][0].shape[1] // 2))
    return model, guider(nodes, model, pos, neg, 5.0), pos, neg, family.random_latent(3)


def null_text(nodes: dict, g: Any, solver: str, latent: dict, steps: int = 3, **settings: Any) -> Any:
    s = solver_sampler(nodes, solver, **({"inversion_label": "next"} if solver == "ddim" else {}))
    with torch.inference_mode():
        return nodes[NULL_TEXT].execute(guider=g, sampler=s, sigmas=sigmas(nodes, g.model_patcher, steps),
                                        latent=latent, **settings).result[0]


def refusal(family: tf.Family, why: str) -> Any:
    return pytest.raises(ValueError, match=rf"^Null-text Inversion: (the model \({family.config}\) |method 'npi' .*"
                                           rf"this model \({family.config}\) )?.*({why})")


@pytest.mark.parametrize("family", family_params())
def test_npi_with_edict_is_exact_or_refused_saying_why(node_classes, host, family):
    model, g, pos, neg, latent = null_text_case(node_classes, family)
    why = NULL_TEXT_REFUSED.get(family.name) or NPI_REFUSED.get(family.name)
    if why is not None:
        with refusal(family, why):
            null_text(node_classes, g, "edict", latent, method="npi")
        return
    npi = null_text(node_classes, g, "edict", latent, method="npi")
    with torch.inference_mode():
        rec = edit(node_classes, g, npi)["samples"]
    assert rel(rec, latent["samples"]) <= 1e-5  # exact at cfg 5, the source prompt as the negative
    assert torch.equal(npi.extras[pack("uncond").UNCOND_CONTEXT][0, 0], pos[0][0][0].float())


@pytest.mark.parametrize("family", family_params())
def test_nti_optimises_the_negative_or_is_refused_saying_why(node_classes, host, family):
    model, g, pos, neg, latent = null_text_case(node_classes, family)
    why = NULL_TEXT_REFUSED.get(family.name)
    if why is None and (family.name in NTI_IN_PLACE or (rope_kernels() and family.name in NTI_KERNELS)):
        why = NO_BACKWARD
    if why is not None:
        with refusal(family, why):
            null_text(node_classes, g, "ddim", latent, method="nti", inner_steps=2)
        return
    nti = null_text(node_classes, g, "ddim", latent, method="nti", inner_steps=3, early_stop=0.0, learning_rate=0.05)
    context = nti.extras[pack("uncond").UNCOND_CONTEXT]
    assert tuple(context.shape) == (3, 1, *neg[0][0].shape[1:]) and torch.isfinite(context).all()
    assert not torch.equal(context[0, 0], neg[0][0][0].float())  # optimised away from the negative
    info = nti.meta["null_text"]
    assert info["skipped_updates"] == 0
    assert all(last < first for first, last in zip(info["first_losses"], info["final_losses"], strict=True))

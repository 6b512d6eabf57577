"""Blended Guidance Guider: two-branch edits of an inversion (AIDI §3.3 + prompt-to-prompt + local blend).

Mechanics run on a seeded random toy export and on the tiny SD1-shaped UNet with a ControlNet; the
edit-quality claims (the background kept better than by a plain edit, at equal success) on the
shipped toy model, where the true masks are known.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from PIL import Image
from test_toy_model import load_random_toy, loader_module

from testbed.helpers import guider as cfg_guider
from testbed.solver_nodes import FEW_STEPS, solver_sampler
from testbed.tiny import (
    image_tensor,
    make_clip,
    make_controlnet,
    make_flux_cond,
    make_flux_model,
    make_model,
    make_sd3_model,
)
from toyworld import judge as J
from toyworld import world as W

NODE = "ExactInversion_BlendedGuidance"
SOURCE = "a red circle on a green background"
TARGET = "a yellow circle on a green background"


def pack(name: str):
    return importlib.import_module(loader_module().__name__.rsplit(".", 1)[0] + "." + name)


@pytest.fixture(scope="module")
def toy(host, node_classes, tmp_path_factory):
    return load_random_toy(node_classes, tmp_path_factory.mktemp("toy_blend"), seed=11)


@pytest.fixture(scope="module")
def shipped(host, node_classes):
    mod = loader_module()
    mod.set_model_folder(None)
    mod.clear_cache()
    return node_classes["ExactInversion_ToyModelLoader"].execute(model_file=mod.DEFAULT_FILE).result


def encode(nodes, clip, text):
    return nodes["CLIPTextEncode"]().encode(clip, text)[0]


def invert(nodes, model, clip, image, solver="ddim", steps=6, cfg=1.0):
    g = cfg_guider(nodes, model, encode(nodes, clip, SOURCE), encode(nodes, clip, ""), cfg)
    sig = nodes["BasicScheduler"].execute(model=model, scheduler="normal", steps=steps, denoise=1.0).result[0]
    sampler = solver_sampler(nodes, solver, **FEW_STEPS.get(solver, {}))  # the toy workflows' settings
    with torch.inference_mode():
        inv = nodes["ExactInversion_Invert"].execute(guider=g, sampler=sampler, sigmas=sig,
                                                     latent={"samples": image}).result[0]
    return g, inv


def blended(nodes, model, clip, target=TARGET, **kw):
    args = dict(model=model, source_positive=encode(nodes, clip, SOURCE), target_positive=encode(nodes, clip, target),
                negative=encode(nodes, clip, ""), clip=clip, source_prompt=SOURCE, target_prompt=target, anchor="red",
                cfg=1.0, target_cfg=4.0)
    args.update(kw)
    return nodes[NODE].execute(**args).result[0]


def edict_inversion(nodes, guider, scheduler: str, steps: int, latent: dict):
    """EDICT (p 0.93) inversion of ``latent`` through ``guider`` on a ``scheduler`` grid of the guider's model."""
    sig = nodes["BasicScheduler"].execute(model=guider.model_patcher, scheduler=scheduler, steps=steps,
                                          denoise=1.0).result[0]
    sampler = nodes["ExactInversion_EDICTSolver"].execute(p=0.93, p_rule="fixed", state_dtype="float64").result[0]
    with torch.inference_mode():
        return nodes["ExactInversion_Invert"].execute(guider=guider, sampler=sampler, sigmas=sig,
                                                      latent=latent).result[0]


def edit(nodes, g, inv):
    with torch.inference_mode():
        return nodes["ExactInversion_Edit"].execute(guider=g, inversion=inv).result[0]["samples"]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- pure helpers ----------------------------------------------------------------------------------------------


def test_token_alignment_maps_equal_and_swapped_tokens_and_leaves_new_ones(host):
    align = pack("attention_control").token_alignment
    assert align([1, 5, 6, 2], [1, 7, 6, 2]) == [0, 1, 2, 3]  # a word swap keeps positions
    assert align([1, 5, 6, 2], [1, 5, 9, 6, 2]) == [0, 1, -1, 2, 3]  # an inserted word attends on its own
    assert align([1, 5, 2], [1, 8, 9, 2]) == [0, -1, -1, 2]  # one word -> two tokens: refinement


# --- mechanics on a random toy model ---------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["ddim", "edict", "bdia", "ees25", "belm", "rex", "rf_solver", "fireflow"])
def test_the_reconstruction_branch_is_bit_exact_and_a_same_prompt_edit_reconstructs(node_classes, toy, solver):
    model, clip, _ = toy
    image = W.held_out(1).images
    g, inv = invert(node_classes, model, clip, image, solver)
    plain = edit(node_classes, g, inv)
    b = blended(node_classes, model, clip, target=SOURCE, target_cfg=1.0, injection=0.5, local_blend=True)
    same = edit(node_classes, b, inv)
    assert torch.equal(b.last_reconstruction, plain)  # the recorded branch is ComfyUI's own computation
    assert rel(same, plain) < 1e-4  # target = source at the same scale: only attention rounding differs
    if solver in ("edict", "bdia", "belm", "rex"):
        assert rel(plain, image) < 1e-6  # and the exact solvers reconstruct the input


def test_a_batch_of_images_is_edited_as_each_alone(node_classes, toy):
    model, clip, _ = toy
    images = W.held_out(2).images
    _, inv = invert(node_classes, model, clip, images)
    both = edit(node_classes, blended(node_classes, model, clip, local_blend=True, eta=0.3, seed=5), inv)
    for i in range(2):
        _, one = invert(node_classes, model, clip, images[i:i + 1])
        alone = edit(node_classes, blended(node_classes, model, clip, local_blend=True, eta=0.3, seed=5), one)
        if i == 0:  # image i's noise comes from seed + i, whatever else is in the batch
            assert rel(both[:1], alone) < 1e-4  # float rounding of a batched network only
        else:
            assert rel(both[1:], alone) > 1e-3  # alone, image 1 draws from seed 5, in the batch from 6
    deterministic = edit(node_classes, blended(node_classes, model, clip, local_blend=True), inv)
    _, second = invert(node_classes, model, clip, images[1:])
    alone = edit(node_classes, blended(node_classes, model, clip, local_blend=True), second)
    assert rel(deterministic[1:], alone) < 1e-4


def test_edit_warns_when_the_reconstruction_branch_is_not_the_inversions(node_classes, toy, caplog):
    model, clip, _ = toy
    _, inv = invert(node_classes, model, clip, W.held_out(1).images)
    with caplog.at_level("WARNING"):
        edit(node_classes, blended(node_classes, model, clip), inv)
    assert "differs from the one Invert used" not in caplog.text
    with caplog.at_level("WARNING"):
        edit(node_classes, blended(node_classes, model, clip, cfg=2.0), inv)
    assert "Edit from Inversion: the guider's source prompt or cfg (cfg 2) differs" in caplog.text
    # a source prompt text that is not the conditioning's is refused where it is typed, before any edit runs
    with pytest.raises(ValueError, match=r"^Blended Guidance Guider: input 'source_prompt' .* is not the prompt "
                                         r"'source_positive' was encoded from"):
        blended(node_classes, model, clip, source_positive=encode(node_classes, clip, TARGET))


def test_blended_guidance_makes_the_target_scale_local(node_classes, toy):
    """With the mask on, guidance is w_E only where the anchor is: the edit differs from a uniform one."""
    model, clip, _ = toy
    _, inv = invert(node_classes, model, clip, W.held_out(1).images)
    uniform = edit(node_classes, blended(node_classes, model, clip, blended_guidance=False, injection=0.0), inv)
    plain = edit(node_classes, cfg_guider(node_classes, model, encode(node_classes, clip, TARGET),
                                          encode(node_classes, clip, ""), 4.0), inv)
    local = edit(node_classes, blended(node_classes, model, clip, injection=0.0), inv)
    assert torch.equal(uniform, plain)  # blended off, no injection: exactly the plain CFG edit
    assert rel(local, plain) > 1e-3


def test_injection_changes_the_edit_only_while_it_lasts(node_classes, toy):
    model, clip, _ = toy
    _, inv = invert(node_classes, model, clip, W.held_out(1).images)
    none = edit(node_classes, blended(node_classes, model, clip, injection=0.0), inv)
    some = edit(node_classes, blended(node_classes, model, clip, injection=0.5), inv)
    tiny = edit(node_classes, blended(node_classes, model, clip, injection=0.01), inv)  # < one step of six
    assert rel(some, none) > 1e-3
    assert torch.equal(tiny, none)


def test_stochastic_editing_is_seeded_and_stays_inside_the_mask(node_classes, shipped):
    model, clip, _ = shipped
    batch = W.held_out(1)
    _, inv = invert(node_classes, model, clip, batch.images, steps=10)
    inside_px = J.erode(batch.hard.bool(), 1).expand(1, 3, -1, -1)
    outside_px = (~J.dilate(batch.hard.bool(), 1)).expand(1, 3, -1, -1)
    ratios = {}
    for local_blend in (False, True):
        def run(local_blend=local_blend, **kw):
            return edit(node_classes, blended(node_classes, model, clip, local_blend=local_blend, **kw), inv)

        base, a, a2, c = run(), run(eta=0.5, seed=1), run(eta=0.5, seed=1), run(eta=0.5, seed=2)
        assert torch.equal(a, a2)
        assert rel(a, c) > 1e-3 and rel(a, base) > 1e-3
        diff = (a - c).abs()
        ratios[local_blend] = float(diff[inside_px].mean()) / float(diff[outside_px].mean())
    # the noise goes in where the mask is; local blend then keeps the rest on the reconstruction
    assert ratios[False] > 2, ratios
    assert ratios[True] > 10, ratios


def test_the_guider_refuses_to_drive_other_nodes_and_bad_inputs(node_classes, toy):
    model, clip, _ = toy
    g = blended(node_classes, model, clip)
    sig = node_classes["BasicScheduler"].execute(model=model, scheduler="normal", steps=2, denoise=1.0).result[0]
    sampler = node_classes["KSamplerSelect"].execute(sampler_name="euler").result[0]
    latent = {"samples": torch.zeros(1, 3, 32, 32)}
    noise = node_classes["RandomNoise"].execute(noise_seed=0).result[0]
    with pytest.raises(ValueError, match="Blended Guidance Guider: this guider edits an inversion"):
        node_classes["SamplerCustomAdvanced"].execute(noise=noise, guider=g, sampler=sampler, sigmas=sig,
                                                      latent_image=latent)
    with pytest.raises(ValueError, match="input 'anchor'.*'square' is not in the prompt"):
        blended(node_classes, model, clip, anchor="square")
    with pytest.raises(ValueError, match="input 'threshold'"):
        blended(node_classes, model, clip, threshold=1.0)
    with pytest.raises(ValueError, match="input 'target_prompt' is empty"):
        blended(node_classes, model, clip, target_prompt=" ")


# --- SD1-style: the real CLIP tokenizer, a ControlNet on both branches ------------------------------------------


def test_sd1_shaped_model_with_a_controlnet(node_classes, host):
    nodes = node_classes
    model, clip = make_model(0), make_clip(0)
    cnet, hint = make_controlnet(0), image_tensor(Image.new("RGB", (64, 64), "white"))
    source, target = "a photo of a dog on grass", "a photo of a cat on grass"
    pos, neg = encode(nodes, clip, source), encode(nodes, clip, "")
    tgt = encode(nodes, clip, target)
    apply = nodes["ControlNetApplyAdvanced"]().apply_controlnet
    c_pos, c_neg = apply(pos, neg, cnet, hint, 1.0, 0.0, 1.0)
    c_tgt, _ = apply(tgt, neg, cnet, hint, 1.0, 0.0, 1.0)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    inv = edict_inversion(nodes, cfg_guider(nodes, model, c_pos, c_neg, 2.0), "normal", 5, latent)
    b = nodes[NODE].execute(model=model, source_positive=c_pos, target_positive=c_tgt, negative=c_neg, clip=clip,
                            source_prompt=source, target_prompt=target, anchor="dog", cfg=2.0, target_cfg=6.0,
                            local_blend=True).result[0]
    out = edit(nodes, b, inv)
    assert rel(b.last_reconstruction, latent["samples"]) < 1e-6  # exact, with the ControlNet on both branches
    assert torch.isfinite(out).all() and rel(out, latent["samples"]) > 1e-3
    positions = pack("prompt_words").word_token_positions(clip, source, "dog")
    assert b.control.anchor_positions == positions == [5]  # BOS, a, photo, of, a, dog


# --- joint attention: tiny DiTs in ComfyUI's own Flux and SD3 classes -----------------------------------------


class TokenizerOnlyClip:
    """A DiT family's tokenizer without its encoders: what the guider needs of a CLIP (conditionings are
    hand-made)."""

    def __init__(self, family: str) -> None:
        import comfy.text_encoders.flux
        import comfy.text_encoders.sd3_clip

        self.tokenizer = (comfy.text_encoders.flux.FluxTokenizer() if family == "flux"
                          else comfy.text_encoders.sd3_clip.SD3Tokenizer())

    def tokenize(self, text: str, **kw):
        return self.tokenizer.tokenize_with_weights(text, **kw)


#: family -> (model, context tokens, the anchor "dog"'s context position: T5 splits "a" in two on Flux; SD3's
#: context starts with CLIP's tokens, BOS first)
DITS = {"flux": (make_flux_model, 256, 6), "sd3": (make_sd3_model, 154, 5)}


@pytest.mark.parametrize("family", list(DITS))
def test_joint_attention_dits_get_anchor_maps(node_classes, host, family):
    make, tokens, dog = DITS[family]
    nodes, model, clip = node_classes, make(0), TokenizerOnlyClip(family)
    source, target = "a photo of a dog on grass", "a photo of a cat on grass"
    pos, tgt, neg = (make_flux_cond(s, tokens) for s in (1, 2, 3))
    g = cfg_guider(nodes, model, pos, neg, 1.0)
    latent = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4))}
    inv = edict_inversion(nodes, g, "simple", 4, latent)
    plain = edit(nodes, g, inv)

    def flux_blended(**kw):
        return nodes[NODE].execute(model=model, source_positive=pos, target_positive=tgt, negative=neg, clip=clip,
                                   source_prompt=source, target_prompt=target, anchor="dog", cfg=1.0,
                                   target_cfg=5.0, **kw).result[0]

    with pytest.raises(ValueError, match="input 'injection' must be 0 for joint-attention"):
        flux_blended()
    b = flux_blended(injection=0.0, local_blend=True)
    out = edit(nodes, b, inv)
    assert torch.equal(b.last_reconstruction, plain)  # recording leaves the attention calls alone
    assert rel(plain, latent["samples"]) < 1e-6  # EDICT is exact on the flow DiTs too
    assert b.control.anchor_positions == [dog]
    run = b.edit_pass
    assert run.maps == 2 * 4 and tuple(run.map_sum.shape) == (1, 1, 8, 8)  # EDICT: 2 evaluations per step
    assert float(run.map_sum.std()) > 1e-3 * float(run.map_sum.mean())  # a map, not uniform attention
    with torch.inference_mode():
        mask = nodes["ExactInversion_AttentionMask"].execute(guider=g, inversion=inv, clip=clip, prompt=source,
                                                             words="dog").result[0]
    expected = run.map_sum / run.map_sum.amax()  # the guider's maps, averaged over the same evaluations
    lo = expected.amin()
    assert tuple(mask.shape) == (1, 8, 8)
    assert torch.allclose(mask, ((expected - lo) / (1 - lo))[:, 0], atol=1e-5)  # min-max scaled, same maps
    uniform = edit(nodes, flux_blended(injection=0.0, blended_guidance=False), inv)
    assert rel(out, uniform) > 1e-3 and torch.isfinite(out).all()


# --- quality on the shipped model ------------------------------------------------------------------------------


def test_blended_local_edit_keeps_the_background_better_than_a_plain_edit(node_classes, shipped):
    """Two held-out images, DDIM, 15 steps: both edits succeed; local blend keeps the background closer."""
    model, clip, vae = shipped
    batch = W.held_out(2)
    for i in range(2):
        shape, fg, bg = (int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i]))
        source, target_fg = W.caption(shape, fg, bg), (fg + 3) % len(W.COLOURS)
        if target_fg == bg:
            target_fg = (target_fg + 1) % len(W.COLOURS)
        target = W.caption(shape, target_fg, bg)
        image, mask = batch.images[i:i + 1], batch.hard[i:i + 1]
        pos, neg, tgt = (encode(node_classes, clip, t) for t in (source, "", target))
        g = cfg_guider(node_classes, model, pos, neg, 1.0)
        sig = node_classes["BasicScheduler"].execute(model=model, scheduler="normal", steps=15, denoise=1.0).result[0]
        sampler = solver_sampler(node_classes, "ddim")
        with torch.inference_mode():
            inv = node_classes["ExactInversion_Invert"].execute(guider=g, sampler=sampler, sigmas=sig,
                                                                latent={"samples": image}).result[0]
        plain = edit(node_classes, cfg_guider(node_classes, model, tgt, neg, 4.0), inv)
        local = edit(node_classes, node_classes[NODE].execute(
            model=model, source_positive=pos, target_positive=tgt, negative=neg, clip=clip, source_prompt=source,
            target_prompt=target, anchor=W.COLOURS[fg], cfg=1.0, target_cfg=4.0, local_blend=True).result[0], inv)
        for out in (plain, local):
            assert bool(J.colour_edit(out, mask, target_fg)["success"][0]), (i, source, target)
        kept_plain = float(J.psnr_outside(plain, image, mask)[0])
        kept_local = float(J.psnr_outside(local, image, mask)[0])
        assert kept_local > kept_plain + 3.0, (i, kept_plain, kept_local)

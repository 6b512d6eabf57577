"""Attention Mask: words of the source prompt -> a soft MASK from the reconstruction's cross-attention."""

from __future__ import annotations

import copy

import comfy.samplers
import pytest
import torch
from test_toy_attention import capture
from test_toy_model import load_random_toy

from toyworld import world as W

NODE = "ExactInversion_AttentionMask"
PROMPT = "a red circle on a green background"


@pytest.fixture(scope="module")
def toy(host, node_classes, tmp_path_factory):
    return load_random_toy(node_classes, tmp_path_factory.mktemp("toy_mask"), seed=5)


@pytest.fixture(scope="module")
def inverted(node_classes, toy):
    model, clip, _ = toy
    nodes = node_classes
    pos = nodes["CLIPTextEncode"]().encode(clip, PROMPT)[0]
    neg = nodes["CLIPTextEncode"]().encode(clip, "")[0]
    guider = nodes["CFGGuider"].execute(model=model, positive=pos, negative=neg, cfg=2.0).result[0]
    sig = nodes["BasicScheduler"].execute(model=model, scheduler="normal", steps=4, denoise=1.0).result[0]
    sampler = nodes["ExactInversion_BDIASolver"].execute(gamma=1.0, state_dtype="float64").result[0]
    with torch.inference_mode():
        inv, _ = nodes["ExactInversion_Invert"].execute(guider=guider, sampler=sampler, sigmas=sig,
                                                        latent={"samples": W.held_out(1).images}).result
    return guider, inv


def run(node_classes, toy, inverted, **kw):
    guider, inv = inverted
    args = {"guider": guider, "inversion": inv, "clip": toy[1], "prompt": PROMPT, "words": "circle", **kw}
    with torch.inference_mode():
        return node_classes[NODE].execute(**args)


def test_mask_is_the_normalised_mean_of_the_words_maps(node_classes, toy, inverted):
    out = run(node_classes, toy, inverted)
    mask = out.result[0]
    assert mask.shape == (1, 32, 32) and mask.min() == 0 and mask.max() == 1
    assert out.ui is not None  # the preview
    # the same reconstruction, recorded by hand: the mask is its min-max normalised mean map of token "circle"
    guider, inv = inverted
    cap = capture()
    rec = cap.AttentionRecorder([3])  # <bos> a red circle: position 3
    recording = comfy.samplers.CFGGuider(cap.patch_recorder(guider.model_patcher, rec))  # the same prompts and cfg
    recording.original_conds = guider.original_conds  # this test's own guider
    recording.cfg = guider.cfg
    with torch.inference_mode():
        node_classes["ExactInversion_Edit"].execute(guider=recording, inversion=inv)
    expected = cap.normalise(rec.mean_map((32, 32))[:, 0])
    assert torch.allclose(mask, expected, atol=1e-6)


def test_words_resolution_and_steps_change_the_mask(node_classes, toy, inverted):
    base = run(node_classes, toy, inverted).result[0]
    for kw in ({"words": "red"}, {"words": "circle, red"}, {"resolution": "2nd finest"}, {"start": 0.5},
               {"end": 0.5}):
        other = run(node_classes, toy, inverted, **kw).result[0]
        assert other.shape == base.shape and (other - base).abs().max() > 1e-3, kw


def test_the_guider_and_its_model_are_used_as_they_are(node_classes, toy, inverted):
    """The recording patches live in the run's own model_options: no copy of the guider, nothing left on it."""
    guider, _ = inverted
    before, attributes = guider.model_patcher, dict(vars(guider))
    options = copy.deepcopy(before.model_options)
    run(node_classes, toy, inverted)
    assert guider.model_patcher is before and before.model_options == options
    assert "patches_replace" not in before.model_options.get("transformer_options", {})
    assert {k: v for k, v in vars(guider).items() if k in attributes} .keys() == attributes.keys()


@pytest.mark.parametrize("kw, message", [
    ({"words": "blue"}, r"Attention Mask: input 'words': word 'blue' is not in the prompt"),
    ({"words": "dog"}, r"Attention Mask: input 'words': .*unknown word 'dog'.*the toy model knows only"),
    ({"words": " , "}, r"input 'words': no words given"),
    ({"start": 0.6, "end": 0.4}, r"inputs 'start' and 'end' must satisfy"),
    ({"resolution": "huge"}, r"input 'resolution' must be one of"),
    ({"inversion": "nope"}, r"input 'inversion' must come from Invert"),
    ({"guider": "nope"}, r"input 'guider' is not a GUIDER"),
])
def test_bad_inputs_are_clear_errors(node_classes, toy, inverted, kw, message):
    with pytest.raises(ValueError, match=message):
        run(node_classes, toy, inverted, **kw)

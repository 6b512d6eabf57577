"""Load Embedded Toy Model: MODEL, CLIP and VAE that the stock nodes and our Invert/Edit accept.

The trained file may not exist, so the module exports a seeded random toy model (fp16, the same format
as scripts/train_toy.py writes) into a temp folder and points the loader at it with ``set_model_folder``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import toyworld
from testbed import comfyhost
from testbed.helpers import guider, sigmas
from toyworld import model as toy
from toyworld.world import to_unit

NODE = "ExactInversion_ToyModelLoader"
PROMPT = "a red circle on a green background"


def loader_module():
    """The pack's nodes.toy_model as ComfyUI loaded it (not a second copy from the repo root)."""
    return comfyhost.pack_module("nodes.toy_model")


def random_toy(seed: int = 0) -> tuple[torch.nn.Module, toy.TextEncoder]:
    """A seeded random toy model. ComfyUI's UNet zero-initialises its output layers; those get small random
    values so the prediction depends on the input and the text, as a trained model's does."""
    torch.manual_seed(seed)
    unet, text = toy.build_unet(), toy.TextEncoder()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return unet, text


def write_export(path: Path, seed: int = 0, **meta_changes: str) -> None:
    unet, text = random_toy(seed)
    meta = toy.export_metadata({"training": {"note": "random init for tests"}}, text)
    meta.update(meta_changes)
    safetensors.torch.save_file(toy.export_state_dict(unet, text), str(path), metadata=meta)


def load_node(node_classes, name: str = "toy_model.safetensors"):
    return node_classes[NODE].execute(model_file=name).result


def load_random_toy(node_classes, folder: Path, seed: int):
    """MODEL, CLIP, VAE of a seeded random export written to ``folder``; the loader points back at the pack's
    models/ afterwards (the loaded objects stay usable)."""
    mod = loader_module()
    write_export(folder / "toy_model.safetensors", seed=seed)
    mod.set_model_folder(folder)
    mod.clear_cache()
    try:
        return load_node(node_classes)
    finally:
        mod.set_model_folder(None)
        mod.clear_cache()


@pytest.fixture(scope="module")
def folder(host, tmp_path_factory):
    mod = loader_module()
    d = tmp_path_factory.mktemp("toy_models")
    write_export(d / "toy_model.safetensors")
    mod.set_model_folder(d)
    mod.clear_cache()
    yield d
    mod.set_model_folder(None)
    mod.clear_cache()


@pytest.fixture(scope="module")
def loaded(node_classes, folder):
    return load_node(node_classes)


@pytest.fixture(scope="module")
def reference(folder):
    """The exported text encoder (fp16 weights as float32) read back directly, outside ComfyUI."""
    sd = safetensors.torch.load_file(str(folder / "toy_model.safetensors"))
    with safetensors.safe_open(str(folder / "toy_model.safetensors"), "pt") as f:
        meta = f.metadata()
    return toy.load_text_encoder(sd, meta).eval()


def encode(node_classes, clip, text: str):
    with torch.inference_mode():
        return node_classes["CLIPTextEncode"]().encode(clip, text)[0]


def toy_image(n: int = 1, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE in [0, 1] channels last, the rendered [-1, 1] batch) of toy scenes."""
    batch = toyworld.random_batch(n, seed)
    return to_unit(batch.images).movedim(1, -1).contiguous(), batch.images


def test_outputs_are_comfy_objects(loaded):
    import comfy.model_patcher
    import comfy.sd

    model, clip, vae = loaded
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(clip, comfy.sd.CLIP)
    assert isinstance(vae, comfy.sd.VAE) and vae.latent_channels == 3 and vae.vae_dtype == torch.float32
    assert type(model.model.latent_format).__name__ == "ChromaRadiance"
    assert model.model.diffusion_model.dtype == torch.float32
    assert next(clip.cond_stage_model.parameters()).dtype == torch.float32
    # SD1 schedule from the file's metadata
    ms = model.get_model_object("model_sampling")
    abar = toy.alphas_cumprod()
    torch.testing.assert_close(ms.sigmas.double(), ((1 - abar) / abar).sqrt(), rtol=1e-6, atol=0)


def test_clip_text_encode_equals_text_encoder(node_classes, loaded, reference):
    cond = encode(node_classes, loaded[1], PROMPT)
    assert len(cond) == 1
    emb, extra = cond[0]
    with torch.no_grad():
        ids = toyworld.encode_batch([PROMPT])
        want = reference(ids)
    assert emb.shape == (1, 16, toy.CONTEXT_DIM) and emb.dtype == torch.float32
    assert torch.equal(emb, want)
    eos = toyworld.tokenize(PROMPT).index(2)
    assert torch.equal(extra["pooled_output"], want[:, eos])


def test_empty_prompt(node_classes, loaded, reference):
    emb = encode(node_classes, loaded[1], "")[0][0]
    with torch.no_grad():
        assert torch.equal(emb, reference.empty())


def test_unknown_word_is_a_clear_error(node_classes, loaded):
    with pytest.raises(ValueError, match=r"unknown word 'dog'.*toy model knows only .*circle"):
        encode(node_classes, loaded[1], "a red dog on a green background")


def test_word_positions_match_the_encoding(node_classes, loaded, reference):
    # the key positions the attention work reads: swapping the word at position 2 changes the context there
    pos = toyworld.word_positions(PROMPT, "red")
    assert pos == [2]
    a = encode(node_classes, loaded[1], PROMPT)[0][0]
    b = encode(node_classes, loaded[1], PROMPT.replace("red", "blue", 1))[0][0]
    changed = (a - b).abs().amax(dim=-1)[0]
    assert torch.all(changed[:2] == 0) and changed[2] > 0  # causal: positions before the word are unchanged


def test_vae_encode_decode(node_classes, loaded):
    vae = loaded[2]
    image, rendered = toy_image(2)
    latent = node_classes["VAEEncode"]().encode(vae, image)[0]["samples"]
    assert latent.shape == (2, 3, 32, 32) and latent.dtype == torch.float32
    assert torch.equal(latent, image.movedim(-1, 1) * 2 - 1)  # the [-1, 1] latent, no rounding beyond fp32's
    torch.testing.assert_close(latent, rendered, rtol=0, atol=2e-7)  # = the renderer's [-1, 1] image
    decoded = node_classes["VAEDecode"]().decode(vae, {"samples": latent})[0]
    assert decoded.shape == image.shape
    err = float((decoded - image).abs().max())
    print(f"VAE round trip max abs error {err:.2e}")
    assert err <= 2.0 ** -24  # two float32 roundings in [0, 1]
    dyadic = torch.arange(0, 257, dtype=torch.float32).div(256).view(1, 1, 257, 1).expand(1, 16, 257, 3)
    back = node_classes["VAEDecode"]().decode(vae, node_classes["VAEEncode"]().encode(vae, dyadic)[0])[0]
    assert torch.equal(back, dyadic)  # exactly representable values come back bit for bit


def test_ksampler_from_empty_latent(node_classes, loaded):
    model, clip, vae = loaded
    latent = node_classes["EmptyChromaRadianceLatentImage"].execute(width=32, height=32, batch_size=1).result[0]
    neg = encode(node_classes, clip, "")
    outs = []
    with torch.inference_mode():
        for text in (PROMPT, "a blue square on a yellow background"):
            pos = encode(node_classes, clip, text)
            outs.append(node_classes["KSampler"]().sample(model, 7, 6, 3.0, "euler", "normal", pos, neg, latent,
                                                          denoise=1.0)[0]["samples"])
        image = node_classes["VAEDecode"]().decode(vae, {"samples": outs[0]})[0]
    assert outs[0].shape == (1, 3, 32, 32) and torch.isfinite(outs[0]).all()
    assert not torch.equal(outs[0], outs[1])  # the prompt reaches the UNet
    assert image.shape == (1, 32, 32, 3) and 0 <= float(image.min()) and float(image.max()) <= 1


def test_images_far_beyond_the_training_size_are_refused_before_the_model_runs(node_classes, loaded):
    """A 512x512 image takes minutes per model call on a CPU, and Cancel would wait for each: refused at once,
    with what to do; 128x128 (the limit) still samples."""
    model, clip, _ = loaded
    pos, neg = encode(node_classes, clip, PROMPT), encode(node_classes, clip, "")
    for side, refused in ((512, True), (129, True), (128, False)):
        latent = node_classes["EmptyChromaRadianceLatentImage"].execute(width=side, height=side, batch_size=1).result[0]
        with torch.inference_mode():
            if refused:
                with pytest.raises(ValueError, match=rf"Load Embedded Toy Model: .* got {side}x{side}.*Scale the image "
                                                     "to 32x32"):
                    node_classes["KSampler"]().sample(model, 7, 1, 3.0, "euler", "normal", pos, neg, latent)
            else:
                out = node_classes["KSampler"]().sample(model, 7, 1, 3.0, "euler", "normal", pos, neg, latent)[0]
                assert out["samples"].shape[-1] == side


def test_edict_invert_edit_reconstructs_a_toy_image(node_classes, loaded):
    model, clip, vae = loaded
    image, _ = toy_image(1, seed=11)
    latent = node_classes["VAEEncode"]().encode(vae, image)[0]
    g = guider(node_classes, model, encode(node_classes, clip, PROMPT), encode(node_classes, clip, ""), 3.0)
    sig = sigmas(node_classes, model, 10)
    solver = node_classes["ExactInversion_EDICTSolver"].execute(p=0.93, p_rule="fixed", state_dtype="float64").result[0]
    with torch.inference_mode():
        inv, z_top = node_classes["ExactInversion_Invert"].execute(guider=g, sampler=solver, sigmas=sig,
                                                                    latent=latent).result
        rec = node_classes["ExactInversion_Edit"].execute(guider=g, inversion=inv, sigmas=None).result[0]
        g_edit = guider(node_classes, model, encode(node_classes, clip, PROMPT.replace("red", "blue", 1)),
                        encode(node_classes, clip, ""), 3.0)
        edited = node_classes["ExactInversion_Edit"].execute(guider=g_edit, inversion=inv, sigmas=None).result[0]
        ddim = node_classes["ExactInversion_DDIMSolver"].execute(inversion_label="current",
                                                                 state_dtype="float64").result[0]
        inv_ddim, _ = node_classes["ExactInversion_Invert"].execute(guider=g, sampler=ddim, sigmas=sig,
                                                                    latent=latent).result
        rec_ddim = node_classes["ExactInversion_Edit"].execute(guider=g, inversion=inv_ddim, sigmas=None).result[0]
    src, out = latent["samples"].double(), rec["samples"].double()
    rel = float((out - src).norm() / src.norm())
    print(f"EDICT round trip on the toy model, cfg 3, 10 steps: relative error {rel:.2e}")
    assert rel <= 1e-5
    assert float((z_top["samples"].double() - src).norm() / src.norm()) > 0.5  # it really went to noise
    assert float((edited["samples"].double() - src).norm() / src.norm()) > 1e-3  # another prompt edits it
    # the model is not trivially invertible: approximate DDIM inversion misses on the same grid
    assert float((rec_ddim["samples"].double() - src).norm() / src.norm()) > 1e-2


def test_latent_preview_shows_the_image(loaded, monkeypatch):
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod

    model = loaded[0]
    monkeypatch.setattr(latent_preview.args, "preview_method", LatentPreviewMethod.Auto)
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    assert isinstance(previewer, latent_preview.Latent2RGBPreviewer)
    image, rendered = toy_image(1, seed=5)
    fmt, preview, _ = previewer.decode_latent_to_preview_image("JPEG", rendered)
    got = torch.from_numpy(np.asarray(preview.convert("RGB"), dtype=np.float32))
    assert fmt == "JPEG" and preview.size == (32, 32)
    assert float((got - image[0] * 255).abs().max()) <= 1.0  # uint8 truncation only


def test_cached_per_file_and_reloaded_when_it_changes(node_classes, folder, loaded):
    mod = loader_module()
    again = load_node(node_classes)
    assert again[0].model is loaded[0].model and again[1].cond_stage_model is loaded[1].cond_stage_model
    assert again[0] is not loaded[0]  # a clone, so patches on one output never reach another
    path = folder / "toy_model.safetensors"
    stamp = mod.ToyModelLoader.fingerprint_inputs(model_file="toy_model.safetensors")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert mod.ToyModelLoader.fingerprint_inputs(model_file="toy_model.safetensors") != stamp
        fresh = load_node(node_classes)
        assert fresh[0].model is not loaded[0].model
        assert load_node(node_classes)[0].model is fresh[0].model
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        mod.clear_cache()


def test_missing_file_says_how_to_train(node_classes, tmp_path):
    mod = loader_module()
    previous = mod.set_model_folder(tmp_path)
    try:
        assert mod.list_files() == ["toy_model.safetensors"]
        assert mod.ToyModelLoader.define_schema().inputs[0].options == ["toy_model.safetensors"]
        with pytest.raises(ValueError, match=r"^Load Embedded Toy Model: input 'model_file': .*is missing from "
                                             r".*ships with the pack.*retrain it with scripts/train_toy.py"):
            load_node(node_classes)
        mod.set_model_folder(None)
        assert mod.model_folder() == Path(mod.__file__).resolve().parents[1] / "models"
        assert "toy_model.safetensors" in mod.list_files()
    finally:
        mod.set_model_folder(previous)


@pytest.mark.parametrize("name", ["../toy_model.safetensors", "/etc/passwd", "sub/toy_model.safetensors",
                                  "toy_model.ckpt"])
def test_paths_outside_the_folder_refused(node_classes, folder, name):
    with pytest.raises(ValueError, match=r"Load Embedded Toy Model: input 'model_file'"):
        load_node(node_classes, name)


def test_symlink_out_of_the_folder_refused(node_classes, folder, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    write_export(outside)
    link = folder / "link.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(ValueError, match=r"points outside the pack's models folder"):
            load_node(node_classes, "link.safetensors")
    finally:
        link.unlink()


def test_foreign_files_refused(node_classes, folder):
    cases = {
        "sd.safetensors": ({"model.diffusion_model.x": torch.zeros(2)}, {"format": "pt"},
                           r"not an Exact Inversion toy model .*'pt'"),
        "nometa.safetensors": ({"x": torch.zeros(2)}, None, r"not an Exact Inversion toy model \(format None"),
        "future.safetensors": (None, {"format_version": str(toy.FORMAT_VERSION + 1)}, r"format_version 2; .*update"),
        "vocab.safetensors": (None, {"vocab": json.dumps(["<pad>", "dog"])}, r"another vocabulary"),
        "groups.safetensors": (None, {"norm_groups": "-8"}, r"norm_groups must be a positive integer"),
        "groups7.safetensors": (None, {"norm_groups": "7"}, r"norm_groups 7 does not divide"),
    }
    try:
        for name, (tensors, meta, message) in cases.items():
            if tensors is None:
                write_export(folder / name, **meta)
            else:
                safetensors.torch.save_file(tensors, str(folder / name), metadata=meta)
            assert name in loader_module().list_files()
            with pytest.raises(ValueError, match=r"^Load Embedded Toy Model: input 'model_file' \(" + name + ".*"
                                                 + message):
                load_node(node_classes, name)
        (folder / "pickle.safetensors").write_bytes(b"\x80\x04\x95 not safetensors at all")
        with pytest.raises(ValueError, match=r"pickle.safetensors\) is not a readable safetensors file"):
            load_node(node_classes, "pickle.safetensors")
    finally:
        for name in [*cases, "pickle.safetensors"]:
            (folder / name).unlink(missing_ok=True)


def test_norm_groups_come_from_the_file(node_classes, folder, loaded):
    """The UNet's GroupNorms use the file's norm_groups (8 in our exports); a file without the entry gets
    ComfyUI's 32, what such files were trained with."""
    norms = [m for m in loaded[0].model.diffusion_model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {toy.NORM_GROUPS} == {8}
    old = folder / "old.safetensors"
    unet, text = random_toy(1)
    meta = toy.export_metadata({}, text)
    del meta["norm_groups"]
    safetensors.torch.save_file(toy.export_state_dict(unet, text), str(old), metadata=meta)
    try:
        model = load_node(node_classes, old.name)[0]
        assert {m.num_groups for m in model.model.diffusion_model.modules()
                if isinstance(m, torch.nn.GroupNorm)} == {32}
    finally:
        old.unlink()


def test_comfy_model_detection_untouched(loaded):
    import comfy.supported_models

    mod = loader_module()
    assert all(not issubclass(c, mod.ToyConfig) for c in comfy.supported_models.models)


def test_stock_graph_through_the_executor(host, folder):
    """Loader -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage, validated and run as the server would."""
    from PIL import Image

    from testbed import comfyhost

    prompt = {
        "1": {"class_type": NODE, "inputs": {"model_file": "toy_model.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 4, "cfg": 3.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                   "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "tests/toy"}},
    }
    outputs = comfyhost.run_prompt(prompt)
    saved = outputs["7"]["images"][0]
    with Image.open(Path(host["work"]) / "output" / saved["subfolder"] / saved["filename"]) as img:
        assert img.size == (32, 32)

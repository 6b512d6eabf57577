"""Save Inversion / Load Inversion: bit-identical reloads, checked metadata, and refusals of bad files."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import edit, guider, invert, random_latent, sigmas
from tiny import make_cond, make_model

SOLVERS = {
    "ddim": ("ExactInversion_DDIMSolver", {"inversion_label": "current", "state_dtype": "float64"}),
    "edict": ("ExactInversion_EDICTSolver", {"p": 0.93, "p_rule": "fixed", "state_dtype": "float64"}),
    "bdia": ("ExactInversion_BDIASolver", {"gamma": 1.0, "state_dtype": "float64"}),
}


def sampler(node_classes, name):
    node, kwargs = SOLVERS[name]
    return node_classes[node].execute(**kwargs).result[0]


def save(node_classes, inversion, prefix="tests/inv"):
    return node_classes["ExactInversion_SaveInversion"].execute(inversion=inversion, filename_prefix=prefix)


def load(node_classes, name, allow_mismatch=False, **optional):
    return node_classes["ExactInversion_LoadInversion"].execute(file="(none)", allow_mismatch=allow_mismatch,
                                                               file_name=name, **optional).result[0]


def path_of(host, name: str) -> Path:
    relative, tag = name[:-1].rsplit(" [", 1)
    return Path(host["work"]) / tag / relative


@pytest.fixture(scope="module")
def world(host, node_classes):
    model = make_model(0)
    src = guider(node_classes, model, make_cond(1), make_cond(2), 1.0)
    tgt = guider(node_classes, model, make_cond(3), make_cond(2), 3.0)
    sig = sigmas(node_classes, model, 8)
    latent = random_latent(seed=3)
    with torch.inference_mode():
        inv, _ = invert(node_classes, src, sampler(node_classes, "edict"), sig, latent)
    name = save(node_classes, inv).result[0]
    return {"model": model, "src": src, "tgt": tgt, "sigmas": sig, "latent": latent, "inv": inv, "name": name}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_save_load_edit_is_bit_identical(host, node_classes, world, solver):
    with torch.inference_mode():
        inv, z_top = invert(node_classes, world["src"], sampler(node_classes, solver), world["sigmas"],
                            world["latent"])
        name = save(node_classes, inv, f"tests/{solver}").result[0]
        loaded = load(node_classes, name)
        loaded_z = node_classes["ExactInversion_LoadInversion"].execute(file=name, allow_mismatch=False).result[1]
        assert torch.equal(loaded_z["samples"], z_top["samples"])  # the same z_T preview as Invert's
        for g in (world["src"], world["tgt"]):  # reconstruction and an edit
            assert torch.equal(edit(node_classes, g, inv)["samples"], edit(node_classes, g, loaded)["samples"])
    assert loaded.latents.keys() == inv.latents.keys()
    assert all(torch.equal(loaded.latents[k], inv.latents[k]) for k in inv.latents)
    assert all(t.dtype == torch.float64 for t in loaded.latents.values())
    assert torch.equal(loaded.sigmas, inv.sigmas) and loaded.sigmas.dtype == torch.float64
    assert (loaded.solver, loaded.params, loaded.schedule) == (inv.solver, inv.params, inv.schedule)


def test_file_metadata(host, world):
    path = path_of(host, world["name"])
    assert path.parent == Path(host["work"]) / "output" / "inversions" / "tests"
    assert path.name == "inv_00001_.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["exact_inversion"])
        keys = set(f.keys())
    assert header["format"] == "exact-inversion/inversion" and header["format_version"] == 1
    assert header["solver"] == "edict" and header["params"] == {"p": 0.93, "p_rule": "fixed", "state_dtype": "float64"}
    assert header["latent_shape"] == [1, 4, 8, 8] and header["steps"] == 8
    assert keys == {"sigmas", "latent.x", "latent.y", "extra.source_latent", "extra.noise_latent"}
    meta = header["meta"]
    assert len(meta["model"]["id"]) == 16 and meta["model"]["summary"]["sampling"]["type"] == "ModelSampling"
    assert meta["conditioning"]["cfg"] == 1.0 and meta["conditioning"]["entries"] == {"negative": 1, "positive": 1}
    assert {"pack", "comfyui", "torch", "time_utc"} <= set(meta["created"])


def test_fingerprints_tell_models_and_prompts_apart(node_classes, world):
    """Different weights or prompts or cfg change the fingerprints; a weight patch (LoRA) does not."""
    def fingerprints(model, pos=1, cfg=1.0):
        g = guider(node_classes, model, make_cond(pos), make_cond(2), cfg)
        with torch.inference_mode():
            inv, _ = invert(node_classes, g, sampler(node_classes, "ddim"), world["sigmas"], world["latent"])
        outputs.append(inv.latents["x"])
        return inv.meta["model"]["id"], inv.meta["conditioning"]["id"]

    outputs = []

    base = fingerprints(world["model"])
    assert base == (world["inv"].meta["model"]["id"], world["inv"].meta["conditioning"]["id"])
    assert fingerprints(make_model(1))[0] != base[0]
    assert fingerprints(world["model"], pos=5)[1] != base[1]
    assert fingerprints(world["model"], cfg=2.0)[1] != base[1]
    fingerprint_module = next(m for n, m in sys.modules.items() if n.endswith("nodes.fingerprint"))
    fingerprint_module._CACHE.clear()  # hash again, while the patch sits in the weights (read from the backup)
    patched = world["model"].clone()
    keys = ["diffusion_model.input_blocks.0.0.weight", "diffusion_model.input_blocks.0.0.bias"]
    state = patched.model.state_dict()
    patched.add_patches({k: (0.5 * torch.ones_like(state[k]),) for k in keys}, 1.0)
    assert fingerprints(patched)[0] == base[0]
    assert set(keys) <= set(patched.backup)  # the weights were patched in place when it was hashed
    assert not torch.allclose(outputs[-1], outputs[0])  # the patch was really applied during that run


def test_saving_never_overwrites(host, node_classes, world):
    names = [save(node_classes, world["inv"], "tests/counter").result[0] for _ in range(3)]
    assert [path_of(host, n).name for n in names] == [f"counter_0000{i}_.safetensors" for i in (1, 2, 3)]


def test_load_lists_output_and_input_files(host, node_classes, world):
    shutil.copy(path_of(host, world["name"]), Path(host["work"]) / "input" / "from_a_friend.safetensors")
    options = node_classes["ExactInversion_LoadInversion"].INPUT_TYPES()["required"]["file"][1]["options"]
    assert world["name"] in options and "from_a_friend.safetensors [input]" in options
    assert options[-1] == "(none)"
    loaded = node_classes["ExactInversion_LoadInversion"].execute(file="from_a_friend.safetensors [input]",
                                                                  allow_mismatch=False).result[0]
    assert torch.equal(loaded.latents["x"], world["inv"].latents["x"])


def test_roundtrip_check_on_inversion_shows_figure(host, node_classes, world):
    with torch.inference_mode():
        loaded = load(node_classes, world["name"])
        rec = edit(node_classes, world["src"], loaded)
    out = node_classes["ExactInversion_RoundTripCheck"].execute(inversion=loaded, result_latent=rec)
    assert out.result[1] <= 1e-5
    assert "relative" in out.ui["text"][0]
    (image,) = out.ui["images"]
    assert image["type"] == "temp"
    from PIL import Image

    with Image.open(Path(host["work"]) / "temp" / image["subfolder"] / image["filename"]) as figure:
        width, height = figure.size
    assert width == 3 * height and height >= 128  # original | result | error map


# --- refusals: each names the node, the input and the fix -------------------------------------------


def pack_state_module():
    """The pack's solvers/state.py as ComfyUI imported it (its package name is the checkout's folder name)."""
    return next(m for name, m in sys.modules.items() if name.endswith("solvers.state") and hasattr(m, "to_flat"))


def header_digest(header):
    return pack_state_module().header_digest(header)


def expect(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def rewrite(host, name, new_name, change, reseal=True):
    """Copy a saved file into the input folder with its tensors/metadata changed by ``change``.

    ``reseal`` recomputes the metadata checksum, as a buggy or future writer would: the file is then
    consistent but wrong, which the deeper checks must catch.
    """
    path = path_of(host, name)
    with safetensors.safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = dict(f.metadata())
    header = json.loads(metadata["exact_inversion"])
    change(tensors, header)
    if reseal:
        header["header_digest"] = header_digest(header)
    metadata["exact_inversion"] = json.dumps(header)
    safetensors.torch.save_file(tensors, str(Path(host["work"]) / "input" / new_name), metadata=metadata)
    return f"{new_name} [input]"


def test_tampered_tensor_refused(host, node_classes, world):
    path = Path(host["work"]) / "input" / "tampered.safetensors"
    data = bytearray(path_of(host, world["name"]).read_bytes())
    data[-3] ^= 0x40  # flip a bit in the last tensor's bytes
    path.write_bytes(bytes(data))
    expect(r"Load Inversion: input 'file_name' \(tampered.safetensors\) cannot be loaded: .*checksum", load,
           node_classes, "tampered.safetensors [input]")


def test_hand_edited_metadata_refused(host, node_classes, world):
    name = rewrite(host, world["name"], "edited_p.safetensors", lambda t, h: h["params"].update(p=0.95), reseal=False)
    expect(r"Load Inversion: input 'file_name' \(edited_p.safetensors\) cannot be loaded: its metadata does not "
           r"match its checksum", load, node_classes, name)


def test_inconsistent_metadata_refused(host, node_classes, world):
    def claim_other_shape(tensors, header):
        header["latent_shape"] = [1, 4, 16, 16]

    name = rewrite(host, world["name"], "edited_meta.safetensors", claim_other_shape)
    expect(r"Load Inversion: .*disagree with its metadata", load, node_classes, name)


def test_tensor_list_not_matching_metadata_refused(host, node_classes, world):
    name = rewrite(host, world["name"], "dropped_y.safetensors", lambda t, h: t.pop("latent.y"))
    expect(r"Load Inversion: .*tensors do not match the list in its metadata", load, node_classes, name)


def test_future_format_version_refused(host, node_classes, world):
    name = rewrite(host, world["name"], "future.safetensors", lambda t, h: h.update(format_version=2))
    expect(r"Load Inversion: .*format version 2.*update the pack", load, node_classes, name)


def test_nan_in_file_refused(host, node_classes, world):
    from safetensors.torch import save_file

    inv = world["inv"]
    bad_x = inv.latents["x"].clone()
    bad_x[0, 0, 0, 0] = float("nan")
    state = type(inv)(inv.solver, inv.params, inv.schedule, inv.sigmas, {**inv.latents, "x": bad_x}, meta=inv.meta)
    tensors, metadata = pack_state_module().to_flat(state)
    save_file(tensors, str(Path(host["work"]) / "input" / "nan.safetensors"), metadata=metadata)
    expect(r"Load Inversion: .*NaN or infinite", load, node_classes, "nan.safetensors [input]")


def test_unknown_solver_refused(host, node_classes, world):
    name = rewrite(host, world["name"], "unknown_solver.safetensors", lambda t, h: h.update(solver="magic"))
    expect(r"Load Inversion: input 'file_name' was made by unknown solver 'magic'", load, node_classes, name)


def test_out_of_range_parameter_in_file_refused(host, node_classes, world):
    name = rewrite(host, world["name"], "bad_p.safetensors", lambda t, h: h["params"].update(p=1.5))
    expect(r"Load Inversion: input 'file_name' has invalid edict parameters", load, node_classes, name)


def test_non_safetensors_file_refused(host, node_classes):
    shutil.copy(Path(host["work"]) / "input" / "example.png", Path(host["work"]) / "input" / "photo.safetensors")
    expect(r"Load Inversion: input 'file_name' \(photo.safetensors\) is not a safetensors file", load, node_classes,
           "photo.safetensors [input]")


def test_plain_safetensors_without_metadata_refused(host, node_classes):
    safetensors.torch.save_file({"samples": torch.zeros(1, 4, 8, 8)},
                                str(Path(host["work"]) / "input" / "latent.safetensors"))
    expect(r"Load Inversion: .*no Exact Inversion metadata", load, node_classes, "latent.safetensors [input]")


def test_wrong_extension_refused(node_classes):
    expect(r"Load Inversion: input 'file_name' .* is not a .safetensors file", load, node_classes,
           "example.png [input]")


@pytest.mark.parametrize("name", ["../escape.safetensors [output]", "/etc/passwd.safetensors [input]",
                                  "inversions/../../x.safetensors [output]", "C:/x.safetensors [input]"])
def test_path_escaping_load_name_refused(node_classes, name):
    expect(r"Load Inversion: input 'file_name' .* is not a valid file name", load, node_classes, name)


def test_symlink_out_of_the_input_folder_refused(host, node_classes, world, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(path_of(host, world["name"]), outside)
    link = Path(host["work"]) / "input" / "link.safetensors"
    link.symlink_to(outside)
    try:
        expect(r"Load Inversion: input 'file_name' points outside ComfyUI's input folder", load, node_classes,
               "link.safetensors [input]")
    finally:
        link.unlink()


@pytest.mark.parametrize("prefix", ["../escape", "../../etc/x", "/tmp/abs", "a/../../b", "", "sub/", "C:evil"])
def test_path_escaping_save_prefix_refused(host, node_classes, world, prefix):
    before = sorted(os.listdir(host["work"]))
    expect(r"Save Inversion: input 'filename_prefix' .* is not a valid file name prefix", save, node_classes,
           world["inv"], prefix)
    assert sorted(os.listdir(host["work"])) == before


def test_missing_file_refused(node_classes):
    expect(r"Load Inversion: input 'file_name': no file 'nothing.safetensors' in ComfyUI's input folder", load,
           node_classes, "nothing.safetensors [input]")


def test_no_file_chosen(node_classes):
    expect(r"Load Inversion: input 'file': no file chosen", node_classes["ExactInversion_LoadInversion"].execute,
           file="(none)", allow_mismatch=False)


def test_wrong_model_refused_unless_allowed(node_classes, world):
    other = guider(node_classes, make_model(1), make_cond(1), make_cond(2), 1.0)
    with torch.inference_mode():
        expect(r"Edit from Inversion: input 'guider' uses a different model .* tick allow_mismatch on Load "
               r"Inversion", edit, node_classes, other, load(node_classes, world["name"]))
        out = edit(node_classes, other, load(node_classes, world["name"], allow_mismatch=True))
        assert torch.isfinite(out["samples"]).all()
        same = edit(node_classes, world["src"], load(node_classes, world["name"]))  # same model: accepted
        assert torch.isfinite(same["samples"]).all()


def test_wrong_prediction_type_refused(node_classes, world):
    from helpers import variant

    v_model = variant(node_classes, world["model"], "v")  # same weights, v-prediction: another model
    g = guider(node_classes, v_model, make_cond(1), make_cond(2), 1.0)
    with torch.inference_mode():
        expect(r"Edit from Inversion: input 'guider' uses a different model", edit, node_classes, g,
               load(node_classes, world["name"]))


def test_wrong_grid_refused_unless_allowed(node_classes, world):
    other = sigmas(node_classes, world["model"], 12)
    expect(r"Load Inversion: input 'sigmas' \(12 steps\) differs from the file's grid \(8 steps\).*allow_mismatch",
           load, node_classes, world["name"], sigmas=other)
    assert load(node_classes, world["name"], allow_mismatch=True, sigmas=other).steps == 8
    assert load(node_classes, world["name"], sigmas=world["sigmas"]).steps == 8


def test_wrong_shape_refused_unless_allowed(node_classes, world):
    big = random_latent((1, 4, 16, 16))
    expect(r"Load Inversion: input 'latent' has shape \[1, 4, 16, 16\] but the file was inverted from "
           r"\[1, 4, 8, 8\].*allow_mismatch", load, node_classes, world["name"], latent=big)
    assert load(node_classes, world["name"], allow_mismatch=True, latent=big).shape == (1, 4, 8, 8)
    assert load(node_classes, world["name"], latent=world["latent"]).shape == (1, 4, 8, 8)


def test_save_refuses_non_inversion(node_classes):
    expect(r"Save Inversion: input 'inversion' must come from Invert", save, node_classes, random_latent())

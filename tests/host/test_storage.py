"""Save Inversion / Load Inversion: bit-identical reloads, checked metadata, and refusals of bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from testbed import comfyhost
from testbed.helpers import edit, guider, invert, random_latent, sigmas
from testbed.solver_nodes import solver_sampler
from testbed.tiny import make_cond, make_model


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
        inv, _ = invert(node_classes, src, solver_sampler(node_classes, "edict"), sig, latent)
    name = save(node_classes, inv).result[0]
    return {"model": model, "src": src, "tgt": tgt, "sigmas": sig, "latent": latent, "inv": inv, "name": name}


@pytest.mark.parametrize("solver", ["bdia", "ddim", "edict", "belm", "rex", "rf_solver", "fireflow"])
def test_save_load_edit_is_bit_identical(host, node_classes, world, solver):
    with torch.inference_mode():
        inv, z_top = invert(node_classes, world["src"], solver_sampler(node_classes, solver), world["sigmas"],
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
    assert header["solver"] == "edict" and header["params"] == {"p": 0.93, "p_rule": "fixed", "state_dtype": "float64",
                                                                "mixing": "authors"}
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
            inv, _ = invert(node_classes, g, solver_sampler(node_classes, "ddim"), world["sigmas"], world["latent"])
        outputs.append(inv.latents["x"])
        return inv.meta["model"]["id"], inv.meta["conditioning"]["id"]

    outputs = []

    base = fingerprints(world["model"])
    assert base == (world["inv"].meta["model"]["id"], world["inv"].meta["conditioning"]["id"])
    assert fingerprints(make_model(1))[0] != base[0]
    assert fingerprints(world["model"], pos=5)[1] != base[1]
    assert fingerprints(world["model"], cfg=2.0)[1] != base[1]
    fingerprint_module = comfyhost.pack_module("nodes.fingerprint")
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
    return comfyhost.pack_module("solvers.state")


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
    from testbed.helpers import variant

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


def test_loaded_inversion_saves_again(host, node_classes, world):
    loaded = load(node_classes, world["name"])
    again = save(node_classes, loaded, "tests/again").result[0]
    assert torch.equal(load(node_classes, again).latents["x"], world["inv"].latents["x"])


# --- hostile input: files and names (see also test_hostile_files.py for the property-based suites) ------


def storage_module():
    return comfyhost.pack_module("nodes.storage")


def everything_under(root) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


def test_counter_goes_past_five_digits_without_overwriting(host, node_classes, world):
    folder = Path(host["work"]) / "output" / "inversions" / "tests" / "many"
    folder.mkdir(parents=True)
    shutil.copy(path_of(host, world["name"]), folder / "inv_99999_.safetensors")
    before = (folder / "inv_99999_.safetensors").read_bytes()
    first = save(node_classes, world["inv"], "tests/many/inv").result[0]
    assert first == "inversions/tests/many/inv_100000_.safetensors [output]"
    written = path_of(host, first).read_bytes()
    second = save(node_classes, world["inv"], "tests/many/inv").result[0]
    assert second == "inversions/tests/many/inv_100001_.safetensors [output]"
    assert (folder / "inv_99999_.safetensors").read_bytes() == before and path_of(host, first).read_bytes() == written


def test_a_taken_name_is_never_replaced(host, node_classes, world, monkeypatch):
    """Even when the counter is wrong (another save at the same moment), an existing file is never replaced."""
    folder = Path(host["work"]) / "output" / "inversions" / "tests"
    (folder / "race_00002_.safetensors").write_bytes(b"a user's file")
    monkeypatch.setattr(storage_module(), "_next_number", lambda folder, stem: 1)
    names = [save(node_classes, world["inv"], "tests/race").result[0] for _ in range(2)]
    assert [path_of(host, n).name for n in names] == ["race_00001_.safetensors", "race_00003_.safetensors"]
    assert (folder / "race_00002_.safetensors").read_bytes() == b"a user's file"
    assert load(node_classes, names[0]).steps == load(node_classes, names[1]).steps == 8


def test_saving_without_hard_links(host, node_classes, world, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    folder = Path(host["work"]) / "output" / "inversions" / "tests" / "nolinks"
    names = [save(node_classes, world["inv"], "tests/nolinks/inv").result[0] for _ in range(2)]
    assert sorted(os.listdir(folder)) == ["inv_00001_.safetensors", "inv_00002_.safetensors"]
    assert all(torch.equal(load(node_classes, n).latents["x"], world["inv"].latents["x"]) for n in names)


def test_failed_write_leaves_no_file(host, node_classes, world, monkeypatch):
    folder = Path(host["work"]) / "output" / "inversions" / "tests" / "full"
    folder.mkdir(parents=True)

    def disk_full(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115
        if "x" in mode and "w" not in mode and path.endswith(".partial"):
            f.write(b"half a file")
            f.close()
            raise OSError(28, "No space left on device")
        return f

    monkeypatch.setattr(storage_module(), "open", disk_full, raising=False)
    expect(r"Save Inversion: input 'filename_prefix' \('tests/full/inv'\): cannot write the file in ComfyUI's output "
           r"folder \(No space left on device\); choose a shorter or other prefix, or free disk space", save,
           node_classes, world["inv"], "tests/full/inv")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_respect_the_umask(host, node_classes, world, umask):
    old = os.umask(umask)
    try:
        name = save(node_classes, world["inv"], f"tests/umask{umask:o}").result[0]
    finally:
        os.umask(old)
    assert path_of(host, name).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("prefix, match", [
    ("p" * 300, r", 300 characters\) is too long: use at most 16 subfolders and at most 200 characters per name"),
    ("/".join(["d"] * 2100), r", 4199 characters\) is too long: use at most 16 subfolders"),
], ids=["300 characters", "2100 folders"])
def test_too_long_save_prefix_refused(host, node_classes, world, prefix, match):
    before = everything_under(host["work"])
    expect(r"Save Inversion: input 'filename_prefix' .*" + match, save, node_classes, world["inv"], prefix)
    assert everything_under(host["work"]) == before


def test_file_in_place_of_a_subfolder_refused(host, node_classes, world):
    (Path(host["work"]) / "output" / "inversions" / "tests" / "blocker").write_bytes(b"not a folder")
    before = everything_under(host["work"])
    expect(r"Save Inversion: input 'filename_prefix' \('tests/blocker/deeper/inv'\): 'inversions/tests/blocker' in "
           r"ComfyUI's output folder is a file, not a folder; choose another prefix, or move that file away", save,
           node_classes, world["inv"], "tests/blocker/deeper/inv")
    assert everything_under(host["work"]) == before


def test_save_refuses_an_inversion_it_could_not_load_back(host, node_classes, world):
    before = everything_under(host["work"])
    inv = world["inv"]
    bad = type(inv)(inv.solver, {**inv.params, "p": float("nan")}, inv.schedule, inv.sigmas, inv.latents,
                    meta=inv.meta)
    expect(r"Save Inversion: input 'inversion' cannot be saved: its solver parameter 'p' is nan; .*invert again",
           save, node_classes, bad, "tests/nan")
    bad = type(inv)(inv.solver, inv.params, inv.schedule, inv.sigmas, inv.latents,
                    meta={**inv.meta, "losses": [float("inf")]})
    expect(r"Save Inversion: input 'inversion' cannot be saved: its parameters or metadata cannot be stored as JSON",
           save, node_classes, bad, "tests/nan")
    assert everything_under(host["work"]) == before  # not even the folder


def test_broken_entries_are_skipped_logged_and_refused(host, node_classes, world, caplog):
    work = Path(host["work"])
    made = {work / "input" / "dangling.safetensors": "missing.safetensors",
            work / "input" / "loop.safetensors": "loop.safetensors",
            work / "output" / "inversions" / "gone.safetensors": str(work / "output" / "nowhere.safetensors"),
            work / "input" / "away.safetensors": "/nonexistent/elsewhere.safetensors"}
    for link, target in made.items():
        link.symlink_to(target)
    os.mkfifo(work / "input" / "pipe.safetensors")
    deep = work / "input" / "deep"
    (deep.joinpath(*["d"] * 40)).mkdir(parents=True)
    shutil.copy(path_of(host, world["name"]), deep.joinpath(*["d"] * 40, "buried.safetensors"))
    try:
        with caplog.at_level("WARNING"):
            options = node_classes["ExactInversion_LoadInversion"].INPUT_TYPES()["required"]["file"][1]["options"]
        assert world["name"] in options
        assert not any(word in o for o in options for word in ("dangling", "loop", "gone", "away", "pipe", "buried"))
        logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        for entry in ("'dangling.safetensors' from ComfyUI's input folder: it is a broken or looping link",
                      "'loop.safetensors' from ComfyUI's input folder: it is a broken or looping link",
                      "'inversions/gone.safetensors' from ComfyUI's output folder: it is a broken or looping link",
                      "'away.safetensors' from ComfyUI's input folder: it is a link that leads outside the folder",
                      "'pipe.safetensors' from ComfyUI's input folder: it is not a regular file",
                      "/d' from ComfyUI's input folder: it is a folder deeper than 32 levels"):
            assert any(m.startswith("Load Inversion: not listing '") and entry in m for m in logged), entry
        expect(r"Load Inversion: input 'file_name' \('dangling.safetensors'\) is a broken or looping link \(No such "
               r"file or directory\); choose a file written by Save Inversion \(fix or delete a broken link\)", load,
               node_classes, "dangling.safetensors [input]")
        expect(r"Load Inversion: input 'file_name' \('loop.safetensors'\) is a broken or looping link \(Too many "
               r"levels of symbolic links\)", load, node_classes, "loop.safetensors [input]")
        expect(r"Load Inversion: input 'file_name' \('inversions/gone.safetensors'\) is a broken or looping link",
               load, node_classes, "inversions/gone.safetensors [output]")
        expect(r"Load Inversion: input 'file_name' points outside ComfyUI's input folder", load, node_classes,
               "away.safetensors [input]")
        expect(r"Load Inversion: input 'file_name' \('pipe.safetensors'\) is not a regular file", load, node_classes,
               "pipe.safetensors [input]")
    finally:
        for path in [*made, work / "input" / "pipe.safetensors"]:
            path.unlink()
        shutil.rmtree(deep)


def rewrite_raw(host, name, new_name, tensors_change=None, header_text=None):
    """Copy a saved file into input with changed tensors (digests recomputed) and/or raw metadata text."""
    from testbed.hostile_files import header_digest as careless_digest

    state_module = pack_state_module()
    with safetensors.safe_open(str(path_of(host, name)), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        header = json.loads(f.metadata()["exact_inversion"])
    if tensors_change:
        tensors_change(tensors, header)
        header["digests"] = {k: state_module.tensor_digest(v) for k, v in tensors.items()}
    header["header_digest"] = careless_digest(header)
    text = header_text if header_text is not None else json.dumps(header)
    safetensors.torch.save_file(tensors, str(Path(host["work"]) / "input" / new_name),
                                metadata={"exact_inversion": text})
    return f"{new_name} [input]"


def test_deeply_nested_metadata_refused(host, node_classes, world):
    name = rewrite_raw(host, world["name"], "deep.safetensors", header_text="[" * 100_000 + "]" * 100_000)
    expect(r"Load Inversion: input 'file_name' \(deep.safetensors\) cannot be loaded: its metadata is nested too "
           r"deeply \(more than 32 levels\); choose a file written by Save Inversion", load, node_classes, name)


def test_nan_parameter_in_file_refused(host, node_classes, world):
    name = rewrite_raw(host, world["name"], "nan_p.safetensors", lambda t, h: h["params"].update(p=float("nan")))
    expect(r"Load Inversion: input 'file_name' \(nan_p.safetensors\) cannot be loaded: its metadata is not valid JSON "
           r"\('NaN is not a number JSON allows'\)", load, node_classes, name)


def test_int64_latents_refused_even_with_recomputed_digests(host, node_classes, world):
    def to_int64(tensors, header):
        tensors["latent.x"] = (tensors["latent.x"] * 1000).round().to(torch.int64)

    name = rewrite_raw(host, world["name"], "int64.safetensors", to_int64)
    expect(r"Load Inversion: input 'file_name' \(int64.safetensors\) cannot be loaded: its latent 'x' is int64 of "
           r"shape \[1, 4, 8, 8\]; latents are float32 or float64", load, node_classes, name)


def test_non_text_file_name_refused(node_classes):
    expect(r"Load Inversion: input 'file_name' must be a file name \(text\), got list", load, node_classes, ["x"])
    expect(r"Save Inversion: input 'filename_prefix' must be text, got int", save, node_classes,
           pack_state_module().InversionState("ddim", {}, "vp", torch.tensor([1.0, 0.0]),
                                              {"x": torch.zeros(1, 4, 2, 2, dtype=torch.float64)}), 5)

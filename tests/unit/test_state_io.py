"""The flat form of an InversionState (what a .safetensors file holds): lossless, versioned, tamper-evident."""

from __future__ import annotations

import json

import pytest
import torch

from solvers import InversionState
from solvers.state import (
    FORMAT_VERSION,
    METADATA_KEY,
    StateFormatError,
    check_state,
    from_flat,
    header_digest,
    tensor_digest,
    to_flat,
)


def make_state() -> InversionState:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=g)
    return InversionState(
        solver="edict", params={"p": 0.93, "p_rule": "fixed", "state_dtype": "float64"}, schedule="vp",
        sigmas=torch.linspace(14.6, 0.0, 11, dtype=torch.float64),
        latents={"x": x, "y": x + 1e-3}, extras={"source_latent": torch.randn(2, 4, 8, 8, generator=g)},
        meta={"model": {"id": "abc"}, "warnings": []},
    )


def test_round_trip_is_lossless():
    state = make_state()
    back = from_flat(*to_flat(state))
    assert (back.solver, back.params, back.schedule, back.meta) == (state.solver, state.params, state.schedule,
                                                                    state.meta)
    assert torch.equal(back.sigmas, state.sigmas)
    for name in ("x", "y"):
        assert torch.equal(back.latents[name], state.latents[name]) and back.latents[name].dtype == torch.float64
    assert torch.equal(back.extras["source_latent"], state.extras["source_latent"])


def test_header_carries_version_and_shape():
    _, metadata = to_flat(make_state())
    header = json.loads(metadata[METADATA_KEY])
    assert header["format_version"] == FORMAT_VERSION
    assert header["latent_shape"] == [2, 4, 8, 8] and header["steps"] == 10
    assert header["header_digest"] == header_digest(header)


def test_any_changed_value_is_detected():
    tensors, metadata = to_flat(make_state())
    tensors["latent.y"] = tensors["latent.y"].clone()
    tensors["latent.y"].view(-1)[17] += 2.0 ** -40  # one element, far below float32 resolution
    with pytest.raises(StateFormatError, match="'latent.y' does not match its checksum"):
        from_flat(tensors, metadata)


def test_edited_header_is_detected():
    tensors, metadata = to_flat(make_state())
    header = json.loads(metadata[METADATA_KEY])
    header["params"]["p"] = 0.9
    with pytest.raises(StateFormatError, match="metadata does not match its checksum"):
        from_flat(tensors, {METADATA_KEY: json.dumps(header)})


@pytest.mark.parametrize("metadata, match", [
    (None, "no Exact Inversion metadata"),
    ({"other": "x"}, "no Exact Inversion metadata"),
    ({METADATA_KEY: "{not json"}, "not valid JSON"),
    ({METADATA_KEY: json.dumps({"format": "something-else"})}, "not in the Exact Inversion format"),
    ({METADATA_KEY: json.dumps({"format": "exact-inversion/inversion", "format_version": 99})}, "format version 99"),
])
def test_foreign_metadata_refused(metadata, match):
    tensors, _ = to_flat(make_state())
    with pytest.raises(StateFormatError, match=match):
        from_flat(tensors, metadata)


def test_nan_refused_even_with_valid_checksums():
    state = make_state()
    state.latents["x"][0, 0, 0, 0] = float("nan")
    with pytest.raises(StateFormatError, match="NaN or infinite"):
        from_flat(*to_flat(state))


# --- hostile files: each refused with a clear StateFormatError, never another exception ----------------


def resealed(tensors, header):
    """Flat form whose digests and header checksum were recomputed after an edit (a consistent but wrong file)."""
    from testbed.hostile_files import header_digest as careless_digest

    header = dict(header, digests={k: tensor_digest(v) for k, v in tensors.items()})
    header["header_digest"] = careless_digest(header)
    return tensors, {METADATA_KEY: json.dumps(header)}


def edited(change):
    """A valid flat form, changed by ``change(tensors, header)`` and resealed."""
    tensors, metadata = to_flat(make_state())
    header = json.loads(metadata[METADATA_KEY])
    change(tensors, header)
    return resealed(tensors, header)


def refused(match, flat):
    with pytest.raises(StateFormatError, match=match):
        from_flat(*flat)


def test_int64_latents_refused_even_with_recomputed_digests():
    def to_int64(tensors, header):
        tensors["latent.x"] = (tensors["latent.x"] * 1000).to(torch.int64)

    refused(r"its latent 'x' is int64 of shape \[2, 4, 8, 8\]; latents are float32 or float64", edited(to_int64))


@pytest.mark.parametrize("sigmas, match", [
    (torch.linspace(14.6, 0.0, 11, dtype=torch.float32), r"its sigma grid is float32 .*1-D float64"),
    (torch.linspace(14.6, 0.0, 11, dtype=torch.float64).reshape(1, 11), r"its sigma grid is float64 of shape \[1, "),
    (torch.linspace(0.0, 14.6, 11, dtype=torch.float64), "must be strictly decreasing"),
    (torch.tensor([14.6, float("nan"), 0.0], dtype=torch.float64), "NaN or infinity"),
    (torch.tensor([3.0], dtype=torch.float64), "at least 2 values"),
    (torch.tensor([3.0, -1.0], dtype=torch.float64), "negative"),
])
def test_sigma_grid_must_be_1d_float64_finite_decreasing(sigmas, match):
    def change(tensors, header):
        tensors["sigmas"] = sigmas
        header["steps"] = sigmas.numel() - 1

    refused(match, edited(change))


@pytest.mark.parametrize("change, match", [
    (lambda t: t.update({"latent.y": t["latent.y"][0]}), r"its latent 'y' is float64 of shape \[4, 8, 8\]"),
    (lambda t: t.update({"latent.y": t["latent.y"][:, :, :4]}), "its latents differ in shape"),
    (lambda t: t.update({"latent.y": t["latent.y"].float()}), "its latents differ in dtype"),
    (lambda t: t.update({"latent.x": t["latent.x"][:0], "latent.y": t["latent.y"][:0]}), "latent 'x' is float64 of "
                                                                                           r"shape \[0, 4, 8, 8\]"),
    (lambda t: t.update({"extra.source_latent": t["extra.source_latent"].to(torch.int32)}),
     "its extra tensor 'source_latent' is int32 .* extras are float16, bfloat16, float32 or float64"),
    (lambda t: t.update({"extra.source_latent": t["extra.source_latent"][:1]}),
     r"its extra tensor 'source_latent' is float32 of shape \[1, 4, 8, 8\]; expected the latent shape"),
    (lambda t: t.update({"extra.null_text.c_crossattn": torch.zeros(3, 1, 2, 2)}),
     r"'null_text.c_crossattn' is float32 of shape \[3, 1, 2, 2\]; expected \[steps \(10\) or 1"),
    (lambda t: t.update({"extra.null_text.y": torch.zeros(1, 2)}), "'null_text.y' .* with 'null_text.c_crossattn'"),
    (lambda t: t.update({"extra.source_latent": torch.full((2, 4, 8, 8), float("inf"))}),
     "'source_latent' contains NaN or infinite values"),
    (lambda t: t.update({"bogus": torch.zeros(1)}), r"tensors this format does not define: \['bogus'\]"),
])
def test_tensor_dtypes_and_shapes_checked(change, match):
    def apply(tensors, header):
        change(tensors)
        header["latents"] = sorted(k[7:] for k in tensors if k.startswith("latent."))
        header["extras"] = sorted(k[6:] for k in tensors if k.startswith("extra."))
        header["latent_shape"] = list(tensors["latent.x"].shape)

    refused(match, edited(apply))


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ('{"format": NaN}', "NaN is not a number JSON allows"),
    ('{"format": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"format": 1e400}', "1e400 is out of range"),
    ('{"format": ' + "9" * 5000 + "}", "not valid JSON"),
])
def test_hostile_metadata_text_refused(text, match):
    tensors, _ = to_flat(make_state())
    refused(match, (tensors, {METADATA_KEY: text}))


def test_nan_parameter_refused_even_resealed():
    refused("not a number JSON allows", edited(lambda t, h: h["params"].update(p=float("nan"))))


@pytest.mark.parametrize("change, match", [
    (lambda h: h.pop("steps"), "lacks the field 'steps'"),
    (lambda h: h.update(steps="10"), "field 'steps' is '10'; expected int"),
    (lambda h: h.update(steps=True), "field 'steps' is True; expected int"),
    (lambda h: h.update(latent_shape=[2, 4, 8, "8"]), "'latent_shape' .* list of integers"),
    (lambda h: h.update(params=[0.93]), "field 'params' is \\[0.93\\]; expected dict"),
    (lambda h: h["params"].update(p=10**400), "solver parameter 'p' is 1000"),
    (lambda h: h["params"].update(p_rule={"a": 1}), "solver parameter 'p_rule'"),
    (lambda h: h["params"].update(p_rule="x" * 1000), "solver parameter 'p_rule'"),
    (lambda h: h.update(solver="x" * 1000), "its solver name 'xxx"),
    (lambda h: h.update(schedule="ve"), "neither 'vp' nor 'flow'"),
    (lambda h: h["meta"].update(model=[1]), "meta field 'model' is \\[1\\]; expected dict or NoneType"),
    (lambda h: h["meta"].update(conditioning={"cfg": "high"}), "meta field 'conditioning.cfg' is 'high'"),
    (lambda h: h["meta"].update(conditioning={"cfg": 10**400}), "meta field 'conditioning.cfg'"),
    (lambda h: h["meta"].update(warnings=[1]), "'warnings' must be a list of text"),
    (lambda h: h["meta"].update(deep=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
     "nested too deeply"),
    (lambda h: h.update(format_version=True), "format version True"),
])
def test_header_fields_checked(change, match):
    refused(match, edited(lambda t, h: change(h)))


@pytest.mark.parametrize("change", [
    lambda t, h: h.update(written_by="a future minor version"),
    lambda t, h: h["meta"].update(notes={"a": [1, 2, {"b": None}]}),
    lambda t, h: t.update({"extra.source_latent": t["extra.source_latent"].to(torch.bfloat16)}),
    lambda t, h: (t.update({"extra.trajectory": torch.zeros(3, 2)}), h.update(extras=["source_latent",
                                                                                      "trajectory"])),
])
def test_harmless_differences_still_load(change):
    state = from_flat(*edited(change))
    assert torch.equal(state.latents["x"], make_state().latents["x"])


def test_files_of_the_first_writer_still_load():
    """Files written before the hostile-input checks (the first writer, copied here) load unchanged."""
    import hashlib

    def first_digest(t):
        c = t.detach().to("cpu").contiguous()
        h = hashlib.sha256(f"{c.dtype}|{list(c.shape)}|".encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
        return h.hexdigest()

    state = make_state()
    tensors = {"sigmas": state.sigmas, **{"latent." + k: v for k, v in state.latents.items()},
               **{"extra." + k: v for k, v in state.extras.items()}}
    header = {"format": "exact-inversion/inversion", "format_version": 1, "solver": state.solver,
              "params": state.params, "schedule": state.schedule, "steps": state.steps,
              "latent_shape": list(state.shape), "latents": sorted(state.latents), "extras": sorted(state.extras),
              "meta": state.meta, "digests": {k: first_digest(v) for k, v in tensors.items()}}
    header["header_digest"] = hashlib.sha256(json.dumps(header, sort_keys=True, allow_nan=False).encode()).hexdigest()
    back = from_flat(tensors, {METADATA_KEY: json.dumps(header, sort_keys=True, allow_nan=False)})
    assert torch.equal(back.latents["y"], state.latents["y"]) and back.meta == state.meta
    assert to_flat(back)[1] == to_flat(state)[1]  # and the new writer writes the same bytes of metadata


@pytest.mark.parametrize("change, match", [
    (lambda s: s.params.update(p=float("nan")), "solver parameter 'p' is nan"),
    (lambda s: s.meta.update(losses=[float("inf")]), "cannot be stored as JSON"),
    (lambda s: s.meta.update(tensor=torch.zeros(1)), "cannot be stored as JSON"),
    (lambda s: s.latents.update(y=s.latents["y"].half()), "its latent 'y' is float16"),
    (lambda s: s.extras.update(source_latent=torch.full((2, 4, 8, 8), float("nan"))), "contains NaN"),
])
def test_unstorable_states_refused_before_writing(change, match):
    state = make_state()
    change(state)
    with pytest.raises(StateFormatError, match=match):
        check_state(state)
        to_flat(state)


def test_cyclic_metadata_refused_before_writing():
    state = make_state()
    state.meta["self"] = state.meta
    with pytest.raises(StateFormatError, match="nested more than 32 levels"):
        to_flat(state)


def test_digest_of_any_tensor():
    scalar, vector = torch.tensor(1.0, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    assert tensor_digest(scalar) != tensor_digest(vector)
    assert len(tensor_digest(torch.zeros(0, 3, dtype=torch.bool))) == 64


def test_tensors_sharing_memory_can_be_written():
    from safetensors.torch import load, save

    state = make_state()
    state.latents["y"] = state.latents["x"]  # one tensor under two names (a solver may hand back x as y)
    tensors, metadata = to_flat(state)
    back = from_flat(load(save(tensors, metadata=metadata)), metadata)
    assert torch.equal(back.latents["y"], state.latents["x"])


def test_unprintable_parameter_refused_clearly():
    state = make_state()
    state.params["p"] = 10**5000  # repr() of it raises: the message must still come out
    with pytest.raises(StateFormatError, match="solver parameter 'p' is <int>"):
        check_state(state)


def test_image_latents_with_a_time_axis_round_trip_and_videos_are_refused():
    """Qwen-Image's VAE gives an image as [batch, channels, 1, height, width]: stored as it is; several frames
    (a video) are not an inversion this format holds."""
    state = make_state()
    image = {k: v.unsqueeze(2) for k, v in state.latents.items()}
    state.latents, state.extras = image, {"source_latent": state.extras["source_latent"].unsqueeze(2)}
    back = from_flat(*to_flat(state))
    assert back.shape == (2, 4, 1, 8, 8) and all(torch.equal(back.latents[k], image[k]) for k in image)
    state.latents = {k: torch.cat([v, v], dim=2) for k, v in image.items()}
    with pytest.raises(StateFormatError, match=r"\[batch, channels, 1, height, width\]"):
        check_state(state)

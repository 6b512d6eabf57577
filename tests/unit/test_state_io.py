"""The flat form of an InversionState (what a .safetensors file holds): lossless, versioned, tamper-evident."""

from __future__ import annotations

import json

import pytest
import torch

from solvers import InversionState
from solvers.state import FORMAT_VERSION, METADATA_KEY, StateFormatError, from_flat, header_digest, to_flat


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

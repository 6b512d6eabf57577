"""Property-based: a mutated inversion (flat form) loads correctly or is refused, never anything else.

Mutations (testbed/hostile_files.py): header fields replaced, deleted or nested deep (types,
NaN/inf, huge numbers, missing and extra keys), metadata text deep, truncated or not JSON, tensors
with other dtypes and shapes, non-finite or disordered values, dropped or added; each optionally
resealed (digests, lists and header checksum recomputed) so the deeper checks are reached too.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import InversionState
from solvers.state import LATENT_DTYPES, METADATA_KEY, StateFormatError, check_state, from_flat, to_flat
from testbed.hostile_files import apply, mutations

#: generated cases per run; EXACT_INVERSION_FUZZ_SCALE (e.g. 10) runs more of them, still from the fixed seed.
EXAMPLES = int(800 * float(os.environ.get("EXACT_INVERSION_FUZZ_SCALE", "1")))


def _states() -> list[InversionState]:
    """Valid inversions of each shape the format has: EDICT (vp, f64), DDIM (flow, f32, null-text), BDIA."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=g)
    meta = {"model": {"id": "0123456789abcdef"}, "conditioning": {"id": "fedcba9876543210", "cfg": 1.0},
            "warnings": [], "created": {"pack": "0.1.0"}}
    latent_extras = {"source_latent": torch.randn(1, 4, 4, 4, generator=g),
                     "noise_latent": torch.randn(1, 4, 4, 4, generator=g)}
    edict = InversionState("edict", {"p": 0.93, "p_rule": "fixed", "state_dtype": "float64"}, "vp",
                           torch.linspace(14.6, 0.0, 7, dtype=torch.float64), {"x": x, "y": x + 1e-3},
                           extras=dict(latent_extras), meta=dict(meta))
    null_text = {"null_text.c_crossattn": torch.randn(5, 1, 3, 6, generator=g),
                 "null_text.y": torch.randn(1, 6, generator=g)}
    ddim = InversionState("ddim", {"inversion_label": "current", "state_dtype": "float32"}, "flow",
                          torch.linspace(1.0, 0.0, 6, dtype=torch.float64), {"x": x.float()},
                          extras={**latent_extras, **null_text},
                          meta={**meta, "null_text": {"method": "null-text", "cfg": 7.5}})
    bdia = InversionState("bdia", {"gamma": 1.0, "state_dtype": "float64"}, "vp",
                          torch.linspace(10.0, 0.1, 4, dtype=torch.float64), {"x": x, "x_next": x * 0.5})
    return [edict, ddim, bdia]


FLATS = []
for _state in _states():
    _tensors, _metadata = to_flat(_state)
    FLATS.append((_tensors, json.loads(_metadata[METADATA_KEY])))


def assert_valid(state: InversionState) -> None:
    """What a loaded state promises: the format's dtypes and shapes, and a lossless second round trip."""
    check_state(state)
    assert state.sigmas.dtype == torch.float64 and state.sigmas.ndim == 1 and len(state.sigmas) >= 2
    assert bool((state.sigmas[:-1] > state.sigmas[1:]).all()) and torch.isfinite(state.sigmas).all()
    assert all(t.dtype in LATENT_DTYPES and t.ndim == 4 for t in state.latents.values())
    assert len({tuple(t.shape) for t in state.latents.values()}) == 1
    again = from_flat(*to_flat(state))
    assert all(torch.equal(again.latents[k], v) for k, v in state.latents.items())
    assert (again.solver, again.params, again.meta) == (state.solver, state.params, state.meta)


def assert_clear(err: StateFormatError) -> None:
    """A refusal is one short sentence about the file (the node adds its name, the input and the fix)."""
    text = str(err)
    assert text.startswith(("it", "its", "tensor ")), text
    assert 0 < len(text) <= 400 and "\n" not in text, text


def test_mutated_flat_form_loads_or_is_refused():
    outcomes: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None)
    @given(st.integers(0, len(FLATS) - 1), mutations)
    def check(index, drawn):
        tensors, metadata = apply(*FLATS[index], drawn)
        try:
            state = from_flat(tensors, metadata)
        except StateFormatError as err:
            assert_clear(err)
            outcomes["refused"] += 1
            return
        assert_valid(state)
        outcomes["loaded"] += 1

    check()
    print(f"flat form: {sum(outcomes.values())} cases, {dict(outcomes)}")  # shown with pytest -s
    assert sum(outcomes.values()) >= EXAMPLES * 0.9, outcomes  # hypothesis really generated the cases
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0, outcomes


def test_unmutated_bases_load():
    for tensors, header in FLATS:
        assert_valid(from_flat(tensors, {METADATA_KEY: json.dumps(header)}))
    assert len(FLATS) == 3

"""The solver state's dtype by device: float64 where the device has it, float32 (and a note) where not."""

from __future__ import annotations

import pytest
import torch

from solvers import BDIA, EDICT, SOLVERS, precision
from solvers.precision import choose_state_dtype, device_has_float64
from solvers.schedule import Schedule

MPS = torch.device("mps")  # a device object only: nothing runs on it here
CPU = torch.device("cpu")


def no_float64(device: torch.device) -> bool:
    return False


def test_auto_is_float64_where_the_device_has_it():
    assert choose_state_dtype("auto", CPU) == ("float64", None)
    assert choose_state_dtype("auto", MPS, has_float64=lambda d: True) == ("float64", None)


def test_auto_falls_back_to_float32_and_says_what_it_costs():
    name, note = choose_state_dtype("auto", MPS, has_float64=no_float64)
    assert name == "float32"
    assert "mps" in note and "float32" in note and "no float64" in note and "5e-5 relative" in note


def test_an_explicit_choice_is_kept_when_it_can_work():
    assert choose_state_dtype("float32", CPU) == ("float32", None)
    assert choose_state_dtype("float32", MPS, has_float64=no_float64) == ("float32", None)
    assert choose_state_dtype("float64", CPU) == ("float64", None)


def test_explicit_float64_without_float64_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"is float64, but the model's device \(mps\) has no float64; choose auto"):
        choose_state_dtype("float64", MPS, has_float64=no_float64)


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="auto, float64, float32"):
        choose_state_dtype("float16", CPU)


def test_the_capability_is_probed_and_mps_known_without_a_probe(monkeypatch):
    assert device_has_float64(CPU)
    calls = []

    def ones(*args, **kwargs):
        calls.append(kwargs.get("device"))
        raise TypeError("Cannot convert a MPS Tensor to float64 dtype")

    monkeypatch.setattr(precision, "_probed", {})
    monkeypatch.setattr(torch, "ones", ones)
    assert not device_has_float64(MPS) and calls == []  # known: no probe
    assert not device_has_float64(torch.device("xpu", 3)) and len(calls) == 1  # probed: the backend raised
    assert not device_has_float64(torch.device("xpu", 3)) and len(calls) == 1  # cached


def test_the_capability_is_looked_up_per_call(monkeypatch):
    monkeypatch.setattr(precision, "device_has_float64", no_float64)
    assert choose_state_dtype("auto", CPU)[0] == "float32"


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_with_state_dtype_changes_only_the_dtype(name):
    solver = SOLVERS[name]()
    assert solver.with_state_dtype("float64") is solver
    other = solver.with_state_dtype("float32")
    assert type(other) is type(solver) and other.state_dtype == torch.float32
    assert {**other.params(), "state_dtype": "float64"} == solver.params()


def test_with_state_dtype_rebuilds_what_depends_on_the_dtype():
    assert BDIA().lattice and not BDIA().with_state_dtype("float32").lattice
    sigmas = torch.tensor([14.6, 5.0, 2.0, 1.0, 0.03, 0.0], dtype=torch.float64)
    vp = Schedule("vp")
    assert EDICT().warnings(sigmas, vp) == []
    assert "float32 round trip" in EDICT().with_state_dtype("float32").warnings(sigmas, vp)[0]

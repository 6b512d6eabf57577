"""Which float type a solver's state uses on a device: float64 where the device has it.

Exact solvers reconstruct to the rounding of their state, so float64 is the default. Apple's MPS has no
float64 at all, and a device that lacks it fails on the first tensor, so ``auto`` falls back to float32 there
and says what that costs; an explicit ``float64`` is refused where it cannot work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: The choices a solver node offers: ``auto`` picks float64 where the device has it, float32 otherwise.
STATE_DTYPE_CHOICES = ("auto", "float64", "float32")

#: Device types known to lack float64 (probing them would only raise).
NO_FLOAT64 = frozenset({"mps"})

_probed: dict[str, bool] = {}


def device_has_float64(device: torch.device) -> bool:
    """True when ``device`` computes in float64; probed once per device (one tiny tensor) and cached."""
    device = torch.device(device)
    if device.type in NO_FLOAT64:
        return False
    key = str(device)
    if key not in _probed:
        try:
            _probed[key] = bool((torch.ones(2, dtype=torch.float64, device=device) * 3).sum().item() == 6.0)
        except (RuntimeError, TypeError):  # backends report a missing dtype as either
            _probed[key] = False
    return _probed[key]


def float32_consequence(device: torch.device) -> str:
    """What a float32 state costs, for a node's report (figures: bench/state_dtype.py)."""
    return (f"the solver state is float32 because the model's device ({torch.device(device).type}) has no "
            "float64: exact solvers then reconstruct to float32 rounding amplified by the model (about 5e-5 "
            "relative on the embedded model at 25 steps) instead of float64's 1e-16")


def choose_state_dtype(requested: str, device: torch.device,
                       has_float64: Callable[[torch.device], bool] | None = None) -> tuple[str, str | None]:
    """The state dtype to run with on ``device``, and a note for the report when the device forced float32.

    ``requested`` is one of ``STATE_DTYPE_CHOICES``; an explicit ``float64`` on a device without it raises
    ``ValueError`` naming the fix. ``has_float64`` defaults to ``device_has_float64``, looked up per call.
    """
    has_float64 = has_float64 or device_has_float64
    if requested not in STATE_DTYPE_CHOICES:
        raise ValueError(f"must be one of {', '.join(STATE_DTYPE_CHOICES)}, got {requested!r}")
    if requested == "float32":
        return "float32", None
    if has_float64(device):
        return "float64", None
    if requested == "auto":
        return "float32", float32_consequence(device)
    raise ValueError(f"is float64, but the model's device ({torch.device(device).type}) has no float64; "
                     "choose auto (float32 there) or float32")

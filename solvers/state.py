"""InversionState: everything needed to run an inversion back, and to check it is run back right.

Also its flat form (named tensors + a JSON header with a format version and tensor digests), which
``nodes/storage.py`` writes to and reads from .safetensors files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class InversionState:
    """What ``Invert`` produces and ``Edit`` starts from.

    ``latents`` are the solver's named state tensors at ``sigmas[0]`` in ComfyUI's sampler space
    (after ``process_latent_in``): ``{"x"}`` for DDIM/AIDI/EES, ``{"x", "y"}`` for EDICT,
    ``{"x", "x_next"}`` for BDIA (``x_next`` at ``sigmas[1]``). ``sigmas`` is the exact float64
    grid the inversion ran on (noisy -> clean). ``meta`` carries fingerprints of the model and
    conditioning and creation info; ``extras`` carries optional tensors (trajectory, null embeddings).
    """

    solver: str
    params: dict[str, Any]
    schedule: str
    sigmas: Tensor
    latents: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sigmas = self.sigmas.detach().to("cpu", torch.float64)
        if "x" not in self.latents:
            raise ValueError("InversionState needs at least the latent 'x'")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the inverted latent (batch, channels, height, width)."""
        return tuple(self.latents["x"].shape)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> str:
        """One line for UI text and logs."""
        return (
            f"{self.solver} inversion, {self.steps} steps, sigma {float(self.sigmas[-1]):.4g} -> "
            f"{float(self.sigmas[0]):.4g}, latent {list(self.shape)}"
        )


FORMAT = "exact-inversion/inversion"
FORMAT_VERSION = 1
METADATA_KEY = "exact_inversion"
_LATENT = "latent."
_EXTRA = "extra."


class StateFormatError(ValueError):
    """A stored inversion that cannot be trusted: wrong format, version, or contents."""


def tensor_digest(t: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: detects any edit to a stored tensor."""
    c = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{c.dtype}|{list(c.shape)}|".encode())
    h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def to_flat(state: InversionState) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state as flat named tensors plus string metadata (what a .safetensors file holds).

    Every tensor's digest goes into the metadata, so a file edited after saving is refused.
    ``meta`` must be JSON-serialisable (fingerprints, creation info, warnings).
    """
    tensors: dict[str, Tensor] = {"sigmas": state.sigmas}
    tensors.update({_LATENT + k: v.detach().to("cpu").contiguous() for k, v in state.latents.items()})
    tensors.update({_EXTRA + k: v.detach().to("cpu").contiguous() for k, v in state.extras.items()})
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "solver": state.solver,
        "params": state.params,
        "schedule": state.schedule,
        "steps": state.steps,
        "latent_shape": list(state.shape),
        "latents": sorted(state.latents),
        "extras": sorted(state.extras),
        "meta": state.meta,
        "digests": {k: tensor_digest(v) for k, v in tensors.items()},
    }
    header["header_digest"] = header_digest(header)
    return tensors, {METADATA_KEY: json.dumps(header, sort_keys=True, allow_nan=False)}


def header_digest(header: dict[str, Any]) -> str:
    """sha256 of the header's canonical JSON (without this digest): detects hand-edited metadata."""
    body = {k: v for k, v in header.items() if k != "header_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def header_of(metadata: dict[str, str] | None) -> dict[str, Any]:
    """The parsed, version-checked JSON header of a stored inversion."""
    text = (metadata or {}).get(METADATA_KEY)
    if text is None:
        raise StateFormatError("it has no Exact Inversion metadata (is it a latent or a model file?)")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as err:
        raise StateFormatError(f"its metadata is not valid JSON ({err.msg})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateFormatError("its metadata is not in the Exact Inversion format")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise StateFormatError(f"it has format version {version!r}; this version of the pack reads version "
                               f"{FORMAT_VERSION} (update the pack, or invert again)")
    if header.get("header_digest") != header_digest(header):
        raise StateFormatError("its metadata does not match its checksum (the file was edited or damaged)")
    return header


def from_flat(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> InversionState:
    """Rebuild a state from ``to_flat``'s output, verifying every digest and the declared shapes."""
    header = header_of(metadata)
    digests = header.get("digests")
    if not isinstance(digests, dict) or set(digests) != set(tensors):
        raise StateFormatError("its tensors do not match the list in its metadata (the file was edited)")
    for name, t in tensors.items():
        if tensor_digest(t) != digests[name]:
            raise StateFormatError(f"tensor {name!r} does not match its checksum (the file was edited or damaged)")
    latent_names = header.get("latents") or []
    latents = {k: tensors[_LATENT + k] for k in latent_names if _LATENT + k in tensors}
    extras = {k[len(_EXTRA):]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    if "sigmas" not in tensors or set(latents) != set(latent_names) or "x" not in latents:
        raise StateFormatError("it lacks the sigma grid or the inverted latents")
    if not all(torch.isfinite(t).all() for t in (tensors["sigmas"], *latents.values())):
        raise StateFormatError("it contains NaN or infinite values")
    if header.get("schedule") not in ("vp", "flow"):
        raise StateFormatError(f"its model type {header.get('schedule')!r} is neither 'vp' nor 'flow'")
    state = InversionState(
        solver=str(header.get("solver")),
        params=dict(header.get("params") or {}),
        schedule=str(header.get("schedule")),
        sigmas=tensors["sigmas"],
        latents=latents,
        extras=extras,
        meta=dict(header.get("meta") or {}),
    )
    if list(state.shape) != header.get("latent_shape") or state.steps != header.get("steps"):
        raise StateFormatError(f"its latent shape {list(state.shape)} / {state.steps} steps disagree with its "
                               f"metadata ({header.get('latent_shape')}, {header.get('steps')} steps)")
    if any(tuple(v.shape) != state.shape for v in latents.values()):
        raise StateFormatError("its latents differ in shape")
    return state

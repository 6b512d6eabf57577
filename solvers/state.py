"""InversionState: everything needed to run an inversion back, and to check it is run back right.

Also its flat form (named tensors + a JSON header with a format version and tensor digests), which
``nodes/storage.py`` writes to and reads from .safetensors files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .schedule import Schedule, check_sigmas


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

#: What a file's tensors must be (format version 1), checked by ``from_flat`` before a file is trusted, and
#: by ``check_state`` before one is written, so a saved file always loads:
#:
#: * ``sigmas``: 1-D float64, at least 2 finite values, non-negative, strictly decreasing (flow: <= 1);
#: * ``latent.<name>``: the solver's state (``x`` always), float32 or float64, all of one dtype and one
#:   shape [batch, channels, height, width], or [batch, channels, 1, height, width] (an image in a video VAE's
#:   latent, as Qwen-Image's), with every dimension >= 1, finite;
#: * ``extra.<name>``: float16, bfloat16, float32 or float64, finite. ``source_latent`` and
#:   ``noise_latent`` (nodes/inversion.py) have the latent shape; ``null_text.c_crossattn``
#:   (nodes/uncond.py) is [steps or 1, batch, tokens, width]; ``null_text.y`` is [batch, width] and
#:   comes only with the context.
LATENT_DTYPES = (torch.float32, torch.float64)


def is_image_latent_shape(shape: Any) -> bool:
    """[batch, channels, height, width], or the same with a time axis of one frame (video VAEs' images)."""
    dims = tuple(shape)
    return min(dims, default=0) >= 1 and (len(dims) == 4 or (len(dims) == 5 and dims[2] == 1))
EXTRA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LATENT_SHAPED_EXTRAS = ("source_latent", "noise_latent")
_UNCOND_CONTEXT = "null_text.c_crossattn"
_UNCOND_POOLED = "null_text.y"

#: The JSON header: these fields, of these types (more fields are allowed: the digest covers them).
_HEADER_FIELDS: dict[str, type] = {"solver": str, "params": dict, "schedule": str, "steps": int,
                                   "latent_shape": list, "latents": list, "extras": list, "meta": dict,
                                   "digests": dict}
#: ``meta`` fields the nodes read (nodes/inversion.py, nodes/nulltext.py, nodes/storage.py), and their types.
_META_FIELDS: dict[str, tuple[type, ...]] = {"model": (dict, type(None)), "conditioning": (dict, type(None)),
                                             "null_text": (dict, type(None)), "created": (dict, type(None)),
                                             "warnings": (list,), "loaded_from": (str,), "allow_mismatch": (bool,)}
_META_SUBFIELDS: dict[tuple[str, str], str] = {("model", "id"): "text", ("conditioning", "id"): "text",
                                               ("conditioning", "cfg"): "number", ("null_text", "method"): "text",
                                               ("null_text", "cfg"): "number"}
#: Solver names are short identifiers (they appear in messages and the UI); so are parameter texts.
_SOLVER_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_MAX_PARAM_TEXT = 256
#: Nesting allowed in the JSON header (what the pack writes is about 6 deep); deeper is refused, not recursed into.
MAX_JSON_DEPTH = 32


class StateFormatError(ValueError):
    """A stored inversion that cannot be trusted: wrong format, version, or contents."""


def _short(value: Any, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters: hostile values must not flood a message (nor break it)."""
    try:
        text = repr(value)
    except Exception:  # e.g. an integer too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(t: Any) -> str:
    """A tensor's dtype and shape for messages (or the type of something that is not a tensor)."""
    if not isinstance(t, Tensor):
        return f"a {type(t).__name__}, not a tensor"
    dtype = str(t.dtype).removeprefix("torch.")
    return f"{dtype} of shape {list(t.shape)}" if t.ndim <= 8 else f"{dtype} with {t.ndim} dimensions"


def tensor_digest(t: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: detects any edit to a stored tensor."""
    c = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{c.dtype}|{list(c.shape)}|".encode())
    h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


# --- JSON -------------------------------------------------------------------------------------------


def _json_depth(value: Any) -> int:
    """Nesting depth of JSON-like data, walked without recursion and stopping past the limit (cycles end)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _parse_json(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing floats, bounded nesting (never a RecursionError)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as err:
        raise StateFormatError(f"its metadata is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from err
    except ValueError as err:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise StateFormatError(f"its metadata is not valid JSON ({_short(str(err), 100)})") from err
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise StateFormatError(f"its metadata is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return value


def _dump_json(value: Any) -> str:
    """Canonical JSON; anything JSON cannot carry faithfully (NaN, objects, cycles) is a StateFormatError."""
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise StateFormatError(f"its parameters or metadata are nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise StateFormatError(f"its parameters or metadata cannot be stored as JSON ({_short(str(err), 100)})") \
            from err


def header_digest(header: dict[str, Any]) -> str:
    """sha256 of the header's canonical JSON (without this digest): detects hand-edited metadata."""
    body = {k: v for k, v in header.items() if k != "header_digest"}
    return hashlib.sha256(_dump_json(body).encode()).hexdigest()


# --- header fields ----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    """A real number Python's float() can hold (bool excluded): what numeric fields must be to be used."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= sys.float_info.max


def _kind(value: Any, kind: str) -> bool:
    return isinstance(value, str) if kind == "text" else value is None or _is_number(value)


def check_params(params: Any) -> None:
    """Solver parameters are flat: names to finite numbers, text, booleans or null (what solvers take)."""
    if not isinstance(params, dict):
        raise StateFormatError(f"its solver parameters are {type(params).__name__}, not a mapping")
    for name, value in params.items():
        text = isinstance(value, str) and len(value) <= _MAX_PARAM_TEXT
        plain = value is None or text or isinstance(value, bool) or _is_number(value)
        if not isinstance(name, str) or len(name) > _MAX_PARAM_TEXT or not plain:
            raise StateFormatError(f"its solver parameter {_short(name)} is {_short(value)}; parameters are "
                                   f"finite numbers, text of at most {_MAX_PARAM_TEXT} characters, booleans or null")


def check_meta(meta: Any) -> None:
    """The ``meta`` fields the nodes read have the types they read them as."""
    if not isinstance(meta, dict):
        raise StateFormatError(f"its meta is {type(meta).__name__}, not a mapping")
    for key, kinds in _META_FIELDS.items():
        if key in meta and not isinstance(meta[key], kinds):
            raise StateFormatError(f"its meta field {key!r} is {_short(meta[key])}; expected "
                                   f"{' or '.join(k.__name__ for k in kinds)}")
    if not all(isinstance(w, str) for w in meta.get("warnings", [])):
        raise StateFormatError("its meta field 'warnings' must be a list of text")
    for (key, sub), kind in _META_SUBFIELDS.items():
        value = (meta.get(key) or {}).get(sub)
        if sub in (meta.get(key) or {}) and not _kind(value, kind):
            raise StateFormatError(f"its meta field '{key}.{sub}' is {_short(value)}; expected {kind}")


def _check_header_fields(header: dict[str, Any]) -> None:
    """Every field the loader uses is present and of its type (a resealed file may still be wrong)."""
    for key, kind in _HEADER_FIELDS.items():
        if key not in header:
            raise StateFormatError(f"its metadata lacks the field {key!r}")
        value = header[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StateFormatError(f"its metadata field {key!r} is {_short(value)}; expected {kind.__name__}")
    names = [*header["latents"], *header["extras"], *header["digests"].values()]
    if not all(isinstance(n, str) for n in names):
        raise StateFormatError("its metadata lists tensors or checksums that are not text")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in header["latent_shape"]):
        raise StateFormatError(f"its metadata field 'latent_shape' is {_short(header['latent_shape'])}; expected "
                               "a list of integers")
    if not _SOLVER_NAME.fullmatch(header["solver"]):
        raise StateFormatError(f"its solver name {_short(header['solver'])} is not a solver name")
    if header["schedule"] not in ("vp", "flow"):
        raise StateFormatError(f"its model type {_short(header['schedule'])} is neither 'vp' nor 'flow'")
    check_params(header["params"])
    check_meta(header["meta"])


def header_of(metadata: dict[str, str] | None) -> dict[str, Any]:
    """The parsed, version-checked JSON header of a stored inversion."""
    text = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if text is None:
        raise StateFormatError("it has no Exact Inversion metadata (is it a latent or a model file?)")
    if not isinstance(text, str):
        raise StateFormatError("its Exact Inversion metadata is not text")
    header = _parse_json(text)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateFormatError("its metadata is not in the Exact Inversion format")
    version = header.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise StateFormatError(f"it has format version {_short(version)}; this version of the pack reads version "
                               f"{FORMAT_VERSION} (update the pack, or invert again)")
    if header.get("header_digest") != header_digest(header):
        raise StateFormatError("its metadata does not match its checksum (the file was edited or damaged)")
    _check_header_fields(header)
    return header


# --- tensors ----------------------------------------------------------------------------------------


def _check_grid(schedule: str, sigmas: Any) -> None:
    if schedule not in ("vp", "flow"):
        raise StateFormatError(f"its model type {_short(schedule)} is neither 'vp' nor 'flow'")
    if not isinstance(sigmas, Tensor) or sigmas.dtype != torch.float64 or sigmas.ndim != 1:
        raise StateFormatError(f"its sigma grid is {_describe(sigmas)}; it must be a 1-D float64 tensor")
    try:
        check_sigmas(sigmas, Schedule(schedule), what="its sigma grid")
    except ValueError as err:
        raise StateFormatError(str(err).split(". ")[0]) from err


def _check_latents(latents: dict[str, Any]) -> tuple[int, ...]:
    """The solver's state tensors: one float dtype, one image-latent shape, finite. Returns that shape."""
    if "x" not in latents:
        raise StateFormatError("it lacks the sigma grid or the inverted latents")
    for name, t in sorted(latents.items()):
        if not isinstance(t, Tensor) or t.dtype not in LATENT_DTYPES or not is_image_latent_shape(t.shape):
            raise StateFormatError(f"its latent {_short(name)} is {_describe(t)}; latents are float32 or float64 "
                                   "with shape [batch, channels, height, width] or [batch, channels, 1, height, "
                                   "width]")
    if len({t.dtype for t in latents.values()}) > 1:
        raise StateFormatError("its latents differ in dtype")
    if len({tuple(t.shape) for t in latents.values()}) > 1:
        raise StateFormatError("its latents differ in shape")
    if not all(torch.isfinite(t).all() for t in latents.values()):
        raise StateFormatError("it contains NaN or infinite values")
    return tuple(latents["x"].shape)


def _extra_shape_problem(name: str, shape: tuple[int, ...], latent: tuple[int, ...], steps: int,
                         extras: dict[str, Any]) -> str | None:
    """What is wrong with a documented extra's shape (None when it fits, or the name is not documented)."""
    if name in _LATENT_SHAPED_EXTRAS:
        return None if shape == latent else f"expected the latent shape {list(latent)}"
    if name == _UNCOND_CONTEXT:
        fits = len(shape) == 4 and shape[0] in (1, steps) and min(shape) >= 1
        return None if fits else f"expected [steps ({steps}) or 1, batch, tokens, width]"
    if name == _UNCOND_POOLED:
        fits = len(shape) == 2 and min(shape) >= 1 and _UNCOND_CONTEXT in extras
        return None if fits else f"expected [batch, width], with {_UNCOND_CONTEXT!r}"
    return None


def _check_extras(extras: dict[str, Any], latent: tuple[int, ...], steps: int) -> None:
    for name, t in sorted(extras.items()):
        if not isinstance(t, Tensor) or t.dtype not in EXTRA_DTYPES:
            raise StateFormatError(f"its extra tensor {_short(name)} is {_describe(t)}; extras are float16, "
                                   "bfloat16, float32 or float64")
        problem = _extra_shape_problem(name, tuple(t.shape), latent, steps, extras)
        if problem:
            raise StateFormatError(f"its extra tensor {_short(name)} is {_describe(t)}; {problem}")
        if not torch.isfinite(t).all():
            raise StateFormatError(f"its extra tensor {_short(name)} contains NaN or infinite values")


def check_tensors(schedule: str, sigmas: Any, latents: dict[str, Any], extras: dict[str, Any]) -> None:
    """The tensors have the dtypes and shapes the format promises (see the table above)."""
    _check_grid(schedule, sigmas)
    _check_extras(extras, _check_latents(latents), len(sigmas) - 1)


def check_state(state: InversionState) -> None:
    """Refuse, before writing, a state that ``from_flat`` would refuse to read back."""
    if not isinstance(state.solver, str) or not _SOLVER_NAME.fullmatch(state.solver):
        raise StateFormatError(f"its solver name {_short(state.solver)} is not a solver name")
    check_params(state.params)
    check_meta(state.meta)
    if not isinstance(state.latents, dict) or not isinstance(state.extras, dict):
        raise StateFormatError("its latents and extras must be mappings of names to tensors")
    names = [*state.latents, *state.extras]
    if not all(isinstance(n, str) and n for n in names):
        raise StateFormatError("its latent and extra names must be non-empty text")
    check_tensors(state.schedule, state.sigmas, state.latents, state.extras)


# --- flat form --------------------------------------------------------------------------------------


def _owned(t: Tensor) -> Tensor:
    """A contiguous CPU copy: safetensors refuses tensors that share memory (y is x, a view of x, ...)."""
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def to_flat(state: InversionState) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state as flat named tensors plus string metadata (what a .safetensors file holds).

    Every tensor's digest goes into the metadata, so a file edited after saving is refused.
    ``meta`` must be JSON-serialisable (fingerprints, creation info, warnings); if it is not, or holds
    NaN, this raises StateFormatError. The tensors' values are not checked here: ``check_state`` does.
    """
    tensors: dict[str, Tensor] = {"sigmas": _owned(state.sigmas)}
    tensors.update({_LATENT + k: _owned(v) for k, v in state.latents.items()})
    tensors.update({_EXTRA + k: _owned(v) for k, v in state.extras.items()})
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
    return tensors, {METADATA_KEY: _dump_json(header)}


def _split_tensors(tensors: dict[str, Any], header: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(latents, extras) by name, once the tensors are exactly those the header lists and checksums."""
    if not isinstance(tensors, dict) or set(header["digests"]) != set(tensors):
        raise StateFormatError("its tensors do not match the list in its metadata (the file was edited)")
    latents = {k[len(_LATENT):]: v for k, v in tensors.items() if k.startswith(_LATENT) and len(k) > len(_LATENT)}
    extras = {k[len(_EXTRA):]: v for k, v in tensors.items() if k.startswith(_EXTRA) and len(k) > len(_EXTRA)}
    unknown = set(tensors) - {"sigmas"} - {_LATENT + k for k in latents} - {_EXTRA + k for k in extras}
    if unknown:
        raise StateFormatError(f"it holds tensors this format does not define: {_short(sorted(unknown))}")
    if sorted(latents) != sorted(header["latents"]) or sorted(extras) != sorted(header["extras"]):
        raise StateFormatError("its tensors do not match the list in its metadata (the file was edited)")
    if "sigmas" not in tensors or "x" not in latents:
        raise StateFormatError("it lacks the sigma grid or the inverted latents")
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise StateFormatError(f"its entry {_short(name)} is {_describe(t)}")
        if tensor_digest(t) != header["digests"][name]:
            raise StateFormatError(f"tensor {_short(name)} does not match its checksum (the file was edited or "
                                   "damaged)")
    return latents, extras


def from_flat(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> InversionState:
    """Rebuild a state from ``to_flat``'s output, verifying every digest, dtype and shape.

    Anything a file can hold that is not a valid inversion raises StateFormatError (never another error).
    """
    header = header_of(metadata)
    latents, extras = _split_tensors(tensors, header)
    check_tensors(header["schedule"], tensors["sigmas"], latents, extras)
    state = InversionState(solver=header["solver"], params=dict(header["params"]), schedule=header["schedule"],
                           sigmas=tensors["sigmas"], latents=latents, extras=extras, meta=dict(header["meta"]))
    if list(state.shape) != header["latent_shape"] or state.steps != header["steps"]:
        raise StateFormatError(f"its latent shape {list(state.shape)} / {state.steps} steps disagree with its "
                               f"metadata ({_short(header['latent_shape'])}, {_short(header['steps'])} steps)")
    return state

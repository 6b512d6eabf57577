"""Hypothesis strategies that mutate a valid inversion file's flat form (tensors + JSON header).

Shared by tests/unit/test_state_fuzz.py (``from_flat`` on the mutated form) and
tests/host/test_hostile_files.py (the same mutations written to disk and loaded by Load Inversion).
Pure torch and hypothesis: it never imports the pack, so the digests here are written from the
format's description (sha256 of dtype|shape|bytes, and of the header's canonical JSON), which makes
a resealed file one that a buggy or malicious writer could really produce.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches (character tables, constants) in ./.hypothesis; keep them out of the checkout. The
# suites keep no example database either (database=None, fixed seeds).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "exact-inversion-hypothesis")

METADATA_KEY = "exact_inversion"

#: dtypes a mutation may give a tensor (all of them writable by safetensors).
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]

#: header fields and nested metadata paths a mutation may replace or delete.
PATHS: list[tuple[Any, ...]] = [
    ("format",), ("format_version",), ("solver",), ("params",), ("schedule",), ("steps",), ("latent_shape",),
    ("latents",), ("extras",), ("meta",), ("digests",), ("header_digest",), ("unknown_field",),
    ("params", "p"), ("params", "p_rule"), ("params", "state_dtype"), ("params", "gamma"), ("params", "extra"),
    ("meta", "model"), ("meta", "model", "id"), ("meta", "conditioning"), ("meta", "conditioning", "id"),
    ("meta", "conditioning", "cfg"), ("meta", "null_text"), ("meta", "null_text", "cfg"),
    ("meta", "null_text", "method"), ("meta", "warnings"), ("meta", "created"), ("meta", "loaded_from"),
    ("meta", "allow_mismatch"), ("meta", "anything"), ("latent_shape", 0), ("latent_shape", 3), ("latents", 0),
]

TENSOR_NAMES = ["sigmas", "latent.x", "latent.y", "latent.x_next", "latent.z", "latent.", "extra.", "extra.foo",
                "extra.source_latent", "extra.noise_latent", "extra.null_text.c_crossattn", "extra.null_text.y",
                "bogus", "Sigmas", "latent.x.y"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400), 2**53 + 1, 0, 1, -1, 0.5, 1.5, 1e308, -1e-320]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "x", "vp", "flow", "edict", "ddim", "float64", "float32", "fixed", "\x00", "é" * 300]),
)
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), kids, max_size=4)),
                           max_leaves=10)

header_ops = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), json_values),
    st.tuples(st.just("delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("nest"), st.sampled_from(PATHS), st.integers(1, 40)),
)
tensor_ops = st.one_of(
    st.tuples(st.just("dtype"), st.integers(0, 20), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.integers(0, 20),
              st.sampled_from(["flatten", "unsqueeze", "squeeze", "scalar", "empty", "narrow", "widen", "swap"])),
    st.tuples(st.just("value"), st.integers(0, 20), st.integers(0, 10**6),
              st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1.0, 0.0, 2.0])),
    st.tuples(st.just("sigmas"), st.sampled_from(["reverse", "repeat", "one", "above_one", "negative", "double"])),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("add"), st.one_of(st.sampled_from(TENSOR_NAMES), st.text(max_size=10)),
              st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=5)),
)
text_ops = st.one_of(
    st.tuples(st.just("deep"), st.sampled_from(["[", "{\"a\":"]), st.integers(20, 100_000)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("literal"), st.sampled_from([
        "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 5000, "[]", "{}", "null", "\"text\"", "",
        "{\"format\": \"exact-inversion/inversion\", \"format_version\": 1}", "{\"a\": 1, \"a\": 2}",
        "{\"format\": \"exact-inversion/inversion\", \"format_version\": 1.0}", "\ud800", "{" * 10 + "}" * 9])),
    st.tuples(st.just("garbage"), st.text(max_size=40)),
    st.tuples(st.just("metadata"), st.sampled_from(["none", "other_key", "empty"])),
)
#: resealing (digests, header lists/shape, header checksum) in two cases of three, so deep checks are reached.
reseals = st.one_of(st.just((True, True, True)), st.just((True, True, True)),
                    st.tuples(st.booleans(), st.booleans(), st.booleans()))
#: one to three mutations (mostly of fields and tensors), and how to reseal afterwards.
mutations = st.tuples(
    st.lists(st.one_of(header_ops, header_ops, tensor_ops, tensor_ops, tensor_ops, text_ops), min_size=1, max_size=3),
    reseals,
).map(lambda drawn: (drawn[0], *drawn[1]))


def tensor_digest(t: torch.Tensor) -> str:
    """The format's tensor checksum: sha256 of 'dtype|shape|' and the raw bytes."""
    c = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{c.dtype}|{list(c.shape)}|".encode())
    h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def header_digest(header: dict[str, Any]) -> str:
    """The format's header checksum, computed as a careless writer would (NaN allowed)."""
    body = {k: v for k, v in header.items() if k != "header_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _set(header: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    target: Any = header
    for key in path[:-1]:
        if isinstance(target, dict) and isinstance(target.get(key), (dict, list)):
            target = target[key]
        elif isinstance(target, dict):
            target[key] = {}
            target = target[key]
        else:
            return
    last = path[-1]
    if isinstance(target, list):
        if isinstance(last, int) and last < len(target):
            target.pop(last) if delete else target.__setitem__(last, value)
    elif isinstance(target, dict) and isinstance(last, str):
        target.pop(last, None) if delete else target.__setitem__(last, value)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _reshaped(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "flatten":
        return t.reshape(-1)
    if how == "unsqueeze":
        return t.unsqueeze(0)
    if how == "squeeze":
        return t.squeeze()
    if how == "scalar":
        return t.reshape(-1)[0].clone() if t.numel() else torch.zeros((), dtype=t.dtype)
    if how == "empty":
        return t.narrow(0, 0, 0) if t.ndim else t.reshape(-1)[:0]
    if how == "narrow":
        return t.narrow(-1, 0, max(t.shape[-1] - 1, 1)) if t.ndim else t
    if how == "widen":
        return torch.cat([t, t], dim=-1) if t.ndim else t
    return t.transpose(0, -1) if t.ndim > 1 else t


def _new_tensor(dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    return torch.linspace(3.0, 0.0, math.prod(shape)).reshape(shape).to(dtype)


def _tensor_op(tensors: dict[str, torch.Tensor], op: tuple[Any, ...]) -> None:
    names = sorted(tensors)
    kind = op[0]
    if kind == "add":
        tensors[op[1]] = _new_tensor(op[2], op[3])
        return
    if kind == "sigmas":
        _sigma_op(tensors, op[1])
        return
    if not names:
        return
    name = names[op[1] % len(names)]
    t = tensors[name]
    if kind == "dtype":
        tensors[name] = t.to(op[2])
    elif kind == "shape":
        tensors[name] = _reshaped(t, op[2])
    elif kind == "value" and t.numel():
        t = t.contiguous().clone()
        value = min(op[3], torch.finfo(t.dtype).max) if t.is_floating_point() else 7  # 1e300: the dtype's max
        t.view(-1)[op[2] % t.numel()] = value
        tensors[name] = t
    elif kind == "drop":
        del tensors[name]


def _sigma_op(tensors: dict[str, torch.Tensor], how: str) -> None:
    s = tensors.get("sigmas")
    if s is None or s.ndim != 1 or s.numel() < 2:
        return
    s = s.clone()
    if how == "reverse":
        s = s.flip(0)
    elif how == "repeat":
        s[1] = s[0]
    elif how == "one":
        s = s[:1]
    elif how == "above_one":
        s[0] = 1.5
    elif how == "negative":
        s[-1] = -0.5
    else:
        s = s * 2.0
    tensors["sigmas"] = s


def _resync(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Make the header's lists, steps and shape agree with the tensors, as a consistent (buggy) writer."""
    header["latents"] = sorted(k[7:] for k in tensors if k.startswith("latent."))
    header["extras"] = sorted(k[6:] for k in tensors if k.startswith("extra."))
    s, x = tensors.get("sigmas"), tensors.get("latent.x")
    if s is not None and s.ndim == 1:
        header["steps"] = len(s) - 1
    if x is not None:
        header["latent_shape"] = list(x.shape)


def _text(text: str, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "deep":
        opener = op[1]
        closer = "]" if opener == "[" else "}"
        return opener * op[2] + "1" + closer * op[2]
    if kind == "truncate":
        return text[: op[1] % (len(text) + 1)]
    if kind in ("literal", "garbage"):
        return op[1]
    return text


def apply(tensors: dict[str, torch.Tensor], header: dict[str, Any],
          drawn: tuple[list[tuple[Any, ...]], bool, bool, bool]) -> tuple[dict[str, torch.Tensor], Any]:
    """The mutated (tensors, metadata) for one drawn ``mutations`` value; the inputs are not changed."""
    ops, reseal_digests, resync, reseal_header = drawn
    tensors = {k: v.clone() for k, v in tensors.items()}
    header = copy.deepcopy(header)
    for op in ops:
        if op[0] in ("set", "delete"):
            _set(header, op[1], op[2] if op[0] == "set" else None, delete=op[0] == "delete")
        elif op[0] == "nest":
            _set(header, op[1], _nested(op[2]))
        elif op[0] in ("dtype", "shape", "value", "sigmas", "drop", "add"):
            _tensor_op(tensors, op)
    if resync:
        _resync(tensors, header)
    if reseal_digests:
        header["digests"] = {k: tensor_digest(v) for k, v in tensors.items()}
    if reseal_header:
        header["header_digest"] = header_digest(header)
    text = json.dumps(header, sort_keys=True)
    metadata: Any = {METADATA_KEY: text}
    for op in ops:
        if op[0] in ("deep", "truncate", "literal", "garbage"):
            metadata = {METADATA_KEY: _text(text, op)}
        elif op[0] == "metadata":
            metadata = {"none": None, "other_key": {"format": "pt"}, "empty": {}}[op[1]]
    return tensors, metadata

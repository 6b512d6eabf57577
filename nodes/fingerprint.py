"""Cheap fingerprints of a MODEL and of a guider's conditioning, stored with every inversion.

They let Load Inversion refuse a file made with another checkpoint, and tell a user which prompt and
cfg an inversion was made with. A model fingerprint must be fast on multi-GB checkpoints and must
not change when a LoRA or ControlNet is added (those are legitimate edits), so it hashes the model's
configuration, its sampling (eps / v / flow, shift) and a fixed sample of *base* weights: every bias
plus the first and last weight matrix, read from ModelPatcher's backup where a patch was applied in
place.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from typing import Any

import torch

_MAX_BIASES = 64
#: per BaseModel (weakly held): (weak reference to the model_sampling object in use, fingerprint).
#: Invert and every Edit ask for it; hashing once per model and sampling keeps that off the per-run cost.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _digest(h: Any, t: torch.Tensor) -> None:
    c = t.detach().to("cpu", torch.float32).contiguous()
    h.update(f"{list(c.shape)}".encode())
    h.update(c.numpy().tobytes())


def _sampling_summary(sampling: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {"type": type(sampling).__name__}
    for name in ("sigma_min", "sigma_max", "shift", "multiplier"):
        value = getattr(sampling, name, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if isinstance(value, (int, float)):
            summary[name] = round(float(value), 8)
    return summary


def _base_weights(model_patcher: Any) -> list[tuple[str, torch.Tensor]]:
    """The sampled parameters, as in the checkpoint (in-place patches undone via the backup)."""
    params = list(model_patcher.model.diffusion_model.named_parameters())
    matrices = [(n, p) for n, p in params if p.ndim >= 2]
    biases = [(n, p) for n, p in params if n.endswith(".bias")][:_MAX_BIASES]
    chosen = dict(biases)
    if matrices:
        chosen.update([matrices[0], matrices[-1]])
    backup = getattr(model_patcher, "backup", {}) or {}
    out = []
    for name in sorted(chosen):
        saved = backup.get(f"diffusion_model.{name}")
        out.append((name, saved.weight if saved is not None else chosen[name]))
    return out


def _weight_dtype(model: Any) -> torch.dtype | None:
    """The dtype the model's weights are kept in for inference (its config's, e.g. fp16).

    Weights are hashed at this dtype: ComfyUI 0.28's dynamic VRAM loading (``ModelPatcherDynamic``, the
    default on NVIDIA) keeps them in the file's dtype and casts per layer, the plain loader converts them
    once; both then compute with the same values, and must get the same fingerprint.
    """
    get_dtype = getattr(model, "get_dtype", None)
    try:
        dtype = get_dtype() if get_dtype is not None else None
    except (AttributeError, RuntimeError):
        return None
    return dtype if isinstance(dtype, torch.dtype) else None


def model_fingerprint(model_patcher: Any) -> dict[str, Any]:
    """{'id': short hex, 'summary': human-readable description} of a MODEL (cached per model and sampling)."""
    model = model_patcher.model
    sampling = model_patcher.get_model_object("model_sampling")
    cached = _CACHE.get(model)
    if cached is not None and cached[0]() is sampling:
        return copy.deepcopy(cached[1])
    fingerprint = _compute_model_fingerprint(model_patcher, model, sampling)
    _CACHE[model] = (weakref.ref(sampling), fingerprint)
    return copy.deepcopy(fingerprint)


def _compute_model_fingerprint(model_patcher: Any, model: Any, sampling: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "class": type(model).__name__,
        "latent_format": type(getattr(model, "latent_format", None)).__name__,
        "sampling": _sampling_summary(sampling),
    }
    unet_config = getattr(getattr(model, "model_config", None), "unet_config", None) or {}
    h = hashlib.sha256(json.dumps(summary, sort_keys=True).encode())
    h.update(json.dumps(unet_config, sort_keys=True, default=str).encode())
    try:
        weights = _base_weights(model_patcher)
        dtype = _weight_dtype(model)
        for name, weight in weights:
            h.update(name.encode())
            _digest(h, weight.to(dtype) if dtype is not None else weight)
        summary["weights_hashed"] = len(weights)
    except (AttributeError, RuntimeError, TypeError) as err:  # exotic/quantised weights: config only
        summary["weights_hashed"] = f"unavailable ({type(err).__name__})"
    return {"id": h.hexdigest()[:16], "summary": summary}


def _hash_value(h: Any, value: Any) -> None:
    """Tensors by content, containers recursively, anything else (a ControlNet, hooks) by type."""
    tensor = getattr(value, "cond", value)  # comfy.conds.CONDRegular and friends wrap a tensor
    if isinstance(tensor, torch.Tensor):
        _digest(h, tensor)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _hash_value(h, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _hash_value(h, item)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        h.update(repr(value).encode())
    else:
        h.update(type(value).__name__.encode())


def conditioning_fingerprint(guider: Any) -> dict[str, Any]:
    """{'id': short hex, 'cfg': float, 'entries': {...}}: which prompts and cfg a guider applies."""
    h = hashlib.sha256()
    entries: dict[str, int] = {}
    conds = getattr(guider, "original_conds", {}) or {}
    for key in sorted(conds):
        entries[key] = len(conds[key])
        h.update(key.encode())
        for cond in conds[key]:
            _hash_value(h, {k: v for k, v in cond.items() if k != "uuid"})  # ComfyUI adds a random uuid
    cfg = float(getattr(guider, "cfg", 1.0))
    h.update(repr(cfg).encode())
    return {"id": h.hexdigest()[:16], "cfg": cfg, "entries": entries}

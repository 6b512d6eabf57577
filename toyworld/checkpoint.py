"""Reading an exported toy-model file: its metadata checked, its configs parsed, its tensors split.

Pure torch and safetensors (no ComfyUI): the Load Embedded Toy Model node builds ComfyUI objects from what
this returns, and puts its own name and input in front of every ``ToyFileError`` message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor

from . import model as toy
from .text import CONTEXT_LENGTH, VOCAB

#: ModelSamplingDiscrete's settings that the file's "schedule" entry may set.
SCHEDULE_KEYS = ("beta_schedule", "linear_start", "linear_end", "timesteps")


class ToyFileError(ValueError):
    """A file that is not a toy-model export this pack can read; the message says why and what to do."""


@dataclass
class ToyCheckpoint:
    """What an export holds: the checked metadata, the three configs and the two state dicts."""

    metadata: dict[str, str]
    unet_config: dict[str, Any]
    text_config: dict[str, Any]
    schedule: dict[str, Any]
    norm_groups: int
    unet: dict[str, Tensor]
    text: dict[str, Tensor]


def _json(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        raise ToyFileError(f"has no '{key}' metadata entry; re-export it with scripts/train_toy.py")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise ToyFileError(f"has a metadata entry '{key}' that is not valid JSON ({err})") from err


def read_metadata(path: Path) -> dict[str, str]:
    """The file's metadata after checking that it is a toy-model export this pack can read."""
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ToyFileError(f"is not a readable safetensors file ({err}); choose a file written by "
                           "scripts/train_toy.py") from err
    if meta.get("format") != toy.FORMAT:
        raise ToyFileError(f"is not an Exact Inversion toy model (format {meta.get('format')!r}, expected "
                           f"{toy.FORMAT!r}); load other checkpoints with the stock Load Checkpoint node")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ToyFileError(f"has an invalid format_version {meta.get('format_version')!r}") from None
    if not 1 <= version <= toy.FORMAT_VERSION:
        raise ToyFileError(f"has format_version {version}; this pack reads versions 1 to {toy.FORMAT_VERSION}: "
                           "update the pack, or re-export the model with it")
    if meta.get("prediction", "eps") != "eps":
        raise ToyFileError(f"predicts {meta['prediction']!r}; only eps toy models are supported")
    vocab = _json(meta, "vocab")
    if list(vocab) != list(VOCAB) or int(meta.get("context_length", CONTEXT_LENGTH)) != CONTEXT_LENGTH:
        raise ToyFileError(f"was trained with another vocabulary or context length than this pack's tokenizer "
                           f"({len(VOCAB)} words, context {CONTEXT_LENGTH}); re-export it with this version of the "
                           "pack")
    return meta


def norm_groups(meta: dict[str, str]) -> int:
    """The UNet's GroupNorm group count (ComfyUI's 32 for files written before the entry existed)."""
    raw = meta.get("norm_groups", "32")
    if not raw.isdigit() or int(raw) < 1:
        raise ToyFileError(f"has an invalid entry: norm_groups must be a positive integer, got {raw!r}")
    return int(raw)


def read(path: Path) -> ToyCheckpoint:
    """Read and check an export (safetensors only)."""
    meta = read_metadata(path)
    unet_config, text_config = _json(meta, "unet_config"), _json(meta, "text_config")
    schedule = _json(meta, "schedule") if "schedule" in meta else {}
    if not isinstance(unet_config, dict) or not isinstance(text_config, dict) or not isinstance(schedule, dict):
        raise ToyFileError("has unet_config, text_config or schedule entries that are not JSON objects")
    sd = safetensors.torch.load_file(str(path), device="cpu")
    unet_sd, text_sd = toy.split_state_dict(sd)
    if toy.VAE_KEY not in sd or not unet_sd or not text_sd:
        raise ToyFileError(f"lacks the UNet, text-encoder or VAE entries ({toy.UNET_PREFIX}*, {toy.TEXT_PREFIX}*, "
                           f"{toy.VAE_KEY})")
    return ToyCheckpoint(meta, unet_config, text_config, {k: schedule[k] for k in SCHEDULE_KEYS if k in schedule},
                         norm_groups(meta), unet_sd, text_sd)

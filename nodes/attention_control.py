"""Cross-attention control for a two-branch edit: record the reconstruction branch, inject into the target.

Why: blended guidance (AIDI §3.3) and prompt-to-prompt run a reconstruction branch (source prompt)
next to the target branch (edited prompt). The reconstruction branch's attention tells where the anchor
word is (the mask), and for the first steps the target branch reuses its attention probabilities, so
the object keeps its shape and place while its words change (P2P word swap / refinement).

The guider switches ``phase`` around each model call: "record" (reconstruction branch: outputs are
ComfyUI's own, bit for bit), "inject" (target branch: the positive prompt's probabilities of aligned
tokens come from the reconstruction) or "off".
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .attention_capture import (
    AttentionRecord,
    attend_with,
    attention_probabilities,
    spatial_grid,
    stock_attention,
    text_attention_sites,
    values_from_context,
)

SiteKey = tuple[str, str, int, int]  # (layer, block name, block number, transformer index)
JOINT_CHUNK = 256  # image queries per softmax chunk on joint-attention models


def token_alignment(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """For each target context position, the source position whose attention it takes, or -1 (its own).

    Equal runs align one to one; a replaced run of the same length (a word swap: "red" -> "blue") too.
    Inserted tokens, and replaced runs of another length, keep their own attention (P2P refinement).
    """
    out = [-1] * len(target)
    matcher = difflib.SequenceMatcher(None, list(source), list(target), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for k in range(j2 - j1):
                out[j1 + k] = i1 + k
    return out


@dataclass
class AttentionControl:
    """State shared by the patched attention layers and the guider during one edit."""

    anchor_positions: list[int]  # source context positions of the anchor word
    alignment: list[int]  # target position -> source position (-1: own), from token_alignment
    inject: bool = False
    phase: str = "off"
    #: per site, the reconstruction branch's positive-prompt probabilities of this evaluation
    recorded: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    #: per site, this evaluation's anchor map (batch, h, w), mean over heads and anchor tokens
    anchor_maps: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    #: joint-attention (Flux-style) models only: the image's token grid, set by the guider per call
    image_grid: tuple[int, int] | None = None
    #: when a list, every anchor map recorded is also kept here with its sigma (Attention Mask)
    history: list[AttentionRecord] | None = None

    def begin_evaluation(self) -> None:
        self.recorded.clear()
        self.anchor_maps.clear()

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any], site: SiteKey,
               prev: Any = None) -> torch.Tensor:
        if self.phase == "record":
            self._record(q, k, extra, site)
        elif self.phase == "inject" and self.inject and site in self.recorded:
            return self._inject(q, k, v, extra, site, prev)
        return prev(q, k, v, extra) if prev is not None else stock_attention(q, k, v, extra)

    def record_joint(self, q: torch.Tensor, k: torch.Tensor, options: dict[str, Any]) -> None:
        """Anchor map from a joint attention over [text; image] tokens (q, k: batch, heads, tokens, dim).

        The image queries' probabilities of the anchor's text keys, computed in chunks of queries so the
        full (tokens x tokens) matrix never exists; only the map is kept.
        """
        if self.image_grid is None or q.ndim != 4:
            return
        h, w = self.image_grid
        text = q.shape[2] - h * w
        rows = self._positive_rows(q, options)
        if rows is None or text <= max(self.anchor_positions):
            return
        queries, keys = q[rows, :, text:].float(), k[rows].float()
        scale = queries.shape[-1] ** -0.5
        parts = []
        for start in range(0, h * w, JOINT_CHUNK):
            probs = torch.softmax(queries[:, :, start:start + JOINT_CHUNK] @ keys.transpose(-1, -2) * scale, dim=-1)
            parts.append(probs[..., self.anchor_positions].sum(-1).mean(1))
        if "block_index" in options:  # Flux names its blocks; SD3's MMDiT does not: number the calls
            site = ("joint", str(options.get("block_type", "?")), int(options["block_index"]), 0)
        else:
            site = ("joint", "call", len(self.anchor_maps), 0)
        self._keep(site, torch.cat(parts, dim=-1).reshape(-1, h, w), options)

    def _keep(self, site: SiteKey, anchor: torch.Tensor, options: dict[str, Any]) -> None:
        """This evaluation's anchor map of ``site`` (batch, h, w), and its copy in ``history`` when kept."""
        self.anchor_maps[site] = anchor
        if self.history is not None:
            sigmas = options.get("sigmas")
            sigma = float(sigmas.flatten()[0]) if sigmas is not None else float("nan")
            self.history.append(AttentionRecord(site[1:], site[0], sigma, 0, anchor.unsqueeze(1).detach().cpu()))

    def _positive_rows(self, q: torch.Tensor, extra: dict[str, Any]) -> slice | None:
        kinds = list(extra.get("cond_or_uncond", [0]))
        if 0 not in kinds:
            return None
        chunk = q.shape[0] // max(1, len(kinds))
        i = kinds.index(0)
        return slice(i * chunk, (i + 1) * chunk)

    def _record(self, q: torch.Tensor, k: torch.Tensor, extra: dict[str, Any], site: SiteKey) -> None:
        rows = self._positive_rows(q, extra)
        if rows is None:
            return
        probs = attention_probabilities(q[rows], k[rows], extra)  # B, heads, HW, tokens
        if self.inject:
            self.recorded[site] = probs
        h, w = spatial_grid(extra, probs.shape[2])
        anchor = probs[..., self.anchor_positions].sum(-1).mean(1)  # B, HW: sum over the word's tokens
        self._keep(site, anchor.reshape(-1, h, w), extra)

    def _inject(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any], site: SiteKey,
                prev: Any) -> torch.Tensor:
        out = prev(q, k, v, extra) if prev is not None else stock_attention(q, k, v, extra)
        rows = self._positive_rows(q, extra)
        source = self.recorded[site]
        if rows is None or q[rows].shape[0] != source.shape[0]:
            return out
        own = attention_probabilities(q[rows], k[rows], extra)
        index = torch.tensor(self.alignment[:own.shape[-1]] + [-1] * max(0, own.shape[-1] - len(self.alignment)),
                             device=own.device)
        index = torch.where(index < source.shape[-1], index, torch.full_like(index, -1))
        taken = source[..., index.clamp_min(0)]
        mixed = torch.where(index >= 0, taken, own)
        out = out.clone()
        out[rows] = attend_with(mixed, v[rows], extra).to(out.dtype)
        return out

    def anchor_map(self, size: tuple[int, int], resolution: str) -> torch.Tensor | None:
        """(batch, 1, H, W) mean anchor attention of this evaluation over the chosen layers, or None."""
        if not self.anchor_maps:
            return None
        chosen = select_resolution(list(self.anchor_maps.values()), resolution)
        up = [F.interpolate(m.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False) for m in chosen]
        return torch.stack(up).mean(0)


RESOLUTIONS = ["all", "finest", "2nd finest", "3rd finest", "coarsest"]


def select_resolution(maps: list[torch.Tensor], resolution: str) -> list[torch.Tensor]:
    """The maps of one attention resolution (by rank, finest first), or all; refuses a rank the model lacks."""
    if resolution == "all":
        return maps
    sizes = sorted({m.shape[-2] * m.shape[-1] for m in maps}, reverse=True)
    index = len(sizes) - 1 if resolution == "coarsest" else RESOLUTIONS.index(resolution) - 1
    if index >= len(sizes):
        raise ValueError(f"resolution {resolution!r} does not exist: this model has {len(sizes)} attention "
                         "resolutions; pick a coarser one or 'all'")
    return [m for m in maps if m.shape[-2] * m.shape[-1] == sizes[index]]


def is_joint_attention_model(diffusion_model: Any) -> bool:
    """DiTs whose text and image tokens attend jointly, text first: Flux (double and single stream blocks)
    and SD3's MMDiT (joint blocks)."""
    flux = hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks")
    return flux or hasattr(diffusion_model, "joint_blocks")


def patch_control(model: Any, control: AttentionControl) -> Any:
    """A clone of ``model`` whose text-attention layers run through ``control`` (chaining existing patches)."""
    if is_joint_attention_model(model.model.diffusion_model):
        return _patch_joint(model, control)
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {})
    sites = text_attention_sites(m.model.diffusion_model)
    if any(layer == "attn1" for layer, *_ in sites):
        m.set_model_attn1_patch(values_from_context)  # see attention_capture.patch_recorder
    for layer, name, number, index in sites:
        prev = existing.get(layer, {}).get((name, number, index)) or existing.get(layer, {}).get((name, number))
        key = (layer, name, number, index)

        def fn(q: Any, k: Any, v: Any, extra: Any, key: SiteKey = key, prev: Any = prev) -> Any:
            return control.attend(q, k, v, extra, key, prev)

        if layer == "attn1":
            m.set_model_attn1_replace(fn, name, number, index)
        else:
            m.set_model_attn2_replace(fn, name, number, index)
    return m


def _patch_joint(model: Any, control: AttentionControl) -> Any:
    """Joint-attention models: ComfyUI's ``optimized_attention_override`` sees every attention call (Flux's
    with its block in the transformer options); recording reads q and k and leaves the call (and its output)
    alone. An override another pack set is chained."""
    m = model.clone()
    options = m.model_options.setdefault("transformer_options", {})
    prev = options.get("optimized_attention_override")

    def override(func: Any, *args: Any, **kwargs: Any) -> Any:
        if control.phase == "record":
            q, k = args[0], args[1]
            if not kwargs.get("skip_reshape", False):  # SD3: (batch, tokens, heads*dim) -> (batch, heads, tokens, dim)
                heads = int(args[3] if len(args) > 3 else kwargs["heads"])
                q, k = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
            control.record_joint(q, k, kwargs.get("transformer_options") or {})
        return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)

    options["optimized_attention_override"] = override
    return m

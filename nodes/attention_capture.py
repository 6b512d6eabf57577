"""Record per-token cross-attention maps while a MODEL runs, through ComfyUI's attention replace patches.

Why: blended-guidance masks and the toy model's attention check need the softmax(QK^T) of every
text-attention layer, which ComfyUI never materialises. A replace patch computes the probabilities in
float32 from the projected q, k, v, keeps those of the tokens asked for, and returns ComfyUI's own
attention of q, k, v, so the model's output is bit for bit what it is unpatched (an exact reconstruction
stays exact). Patches already on a block (another pack's) are chained, not clobbered.

Text attention is ``attn2`` in every transformer block, plus ``attn1`` in blocks built with
``disable_self_attentions`` (ComfyUI feeds those the context too; the toy model's 32x32 blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

BlockKey = tuple[str, int, int]  # ("input" | "middle" | "output", block number, index in the SpatialTransformer)


@dataclass
class AttentionRecord:
    block: BlockKey
    layer: str  # "attn1" (text-only block) or "attn2"
    sigma: float
    cond_or_uncond: int  # 0 = positive, 1 = negative (ComfyUI's convention)
    maps: torch.Tensor  # (batch, tokens asked, h, w), mean over heads, float32 on the CPU


@dataclass
class AttentionRecorder:
    """Callable for ``set_model_attn{1,2}_replace``; collects maps of ``token_indices``."""

    token_indices: Sequence[int]
    records: list[AttentionRecord] = field(default_factory=list)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any], layer: str
               ) -> torch.Tensor:
        b, n, _ = q.shape
        probs = attention_probabilities(q, k, extra)  # B, heads, HW, tokens
        out = stock_attention(q, k, v, extra)
        h, w = spatial_grid(extra, n)
        chosen = probs[..., list(self.token_indices)].mean(dim=1)  # B, HW, T
        kinds = list(extra.get("cond_or_uncond", [0]))
        chunk = b // max(1, len(kinds))
        sigma = float(extra["sigmas"].flatten()[0]) if "sigmas" in extra else float("nan")
        name, number = extra.get("block", ("?", -1))
        block = (str(name), int(number), int(extra.get("block_index", 0)))  # the replace patches' key
        for i, kind in enumerate(kinds):
            part = chosen[i * chunk:(i + 1) * chunk].reshape(chunk, h, w, -1).permute(0, 3, 1, 2)
            self.records.append(AttentionRecord(block, layer, sigma, int(kind), part.detach().cpu()))
        return out

    def for_layer(self, layer: str) -> Callable[..., torch.Tensor]:
        return lambda q, k, v, extra: self.attend(q, k, v, extra, layer)

    def mean_map(self, size: tuple[int, int], cond_or_uncond: int = 0,
                 select: Callable[[AttentionRecord], bool] | None = None) -> torch.Tensor:
        """Average over layers and steps of the chosen records, upsampled to ``size``: (batch, T, H, W)."""
        maps = [F.interpolate(r.maps, size=size, mode="bilinear", align_corners=False) for r in self.records
                if r.cond_or_uncond == cond_or_uncond and (select is None or select(r))]
        if not maps:
            raise ValueError("no attention was recorded (did the model run with the patched MODEL?)")
        return torch.stack(maps).mean(0)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head in float32: (batch, heads, queries, keys)."""
    heads, dim_head = extra["n_heads"], extra["dim_head"]
    b, n, _ = q.shape
    qh = q.float().view(b, n, heads, dim_head).transpose(1, 2)
    kh = k.float().view(b, -1, heads, dim_head).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dim_head), dim=-1)


def attend_with(probs: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
    """Attention output (batch, queries, heads*dim) from given probabilities and the projected values."""
    heads, dim_head = extra["n_heads"], extra["dim_head"]
    b = v.shape[0]
    vh = v.float().view(b, -1, heads, dim_head).transpose(1, 2)
    return (probs @ vh).transpose(1, 2).reshape(b, probs.shape[2], heads * dim_head).to(v.dtype)


def stock_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
    """What the unpatched layer computes from q, k, v: ComfyUI's current attention function, same arguments."""
    from comfy.ldm.modules import attention  # looked up at call time: ComfyUI picks the function at start-up

    return attention.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                         transformer_options=extra)


def spatial_grid(extra: dict[str, Any], n: int) -> tuple[int, int]:
    """(h, w) of the attention's query grid: the block's activation shape when ComfyUI gives it."""
    shape = extra.get("activations_shape")
    if shape is not None and shape[-2] * shape[-1] == n:
        return int(shape[-2]), int(shape[-1])
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"cannot tell the attention grid of {n} queries")
    return side, side


def text_attention_sites(diffusion_model: torch.nn.Module) -> list[tuple[str, str, int, int]]:
    """(layer, block name, block number, transformer index) of every attention that reads the text."""
    sites: list[tuple[str, str, int, int]] = []
    groups = [("input", list(diffusion_model.input_blocks)), ("middle", [diffusion_model.middle_block]),
              ("output", list(diffusion_model.output_blocks))]
    for name, blocks in groups:
        for number, block in enumerate(blocks):
            for module in block:
                if type(module).__name__ != "SpatialTransformer":
                    continue
                for index, tb in enumerate(module.transformer_blocks):
                    if getattr(tb, "disable_self_attn", False):
                        sites.append(("attn1", name, number, index))
                    if getattr(tb, "attn2", None) is not None:
                        sites.append(("attn2", name, number, index))
    return sites


#: ``attend(q, k, v, extra, site, prev)``: runs one text-attention layer; ``prev`` is a replace patch that was
#: already on the site (another pack's), to be chained, or None
Attend = Callable[..., torch.Tensor]


def install_text_attention(model_options: dict[str, Any], diffusion_model: Any, attend: Attend) -> None:
    """Route every text-attention layer of a UNet through ``attend``, in ``model_options`` (a clone's, or a run's
    own copy), as ModelPatcher.set_model_attn{1,2}_replace writes them; patches already there are chained.

    The one walk over the sites, shared by recording (Attention Mask, benches) and control (blended guidance).
    """
    options = model_options.setdefault("transformer_options", {})
    replace = {layer: dict(patches) for layer, patches in options.get("patches_replace", {}).items()}
    sites = text_attention_sites(diffusion_model)
    if any(layer == "attn1" for layer, *_ in sites):
        # ComfyUI 0.3.75 calls an attn1 replace with value=None in a text-only (disable_self_attn) block unless
        # an attn1_patch set value = context first; this one changes nothing else (self-attention reads n, n).
        patches = dict(options.get("patches", {}))
        patches["attn1_patch"] = [*patches.get("attn1_patch", []), values_from_context]
        options["patches"] = patches
    for layer, name, number, index in sites:
        existing = replace.setdefault(layer, {})
        prev = existing.get((name, number, index)) or existing.get((name, number))
        site = (layer, name, number, index)

        def fn(q: Any, k: Any, v: Any, extra: Any, site: tuple = site, prev: Any = prev) -> Any:
            return attend(q, k, v, extra, site, prev)

        existing[(name, number, index)] = fn
    options["patches_replace"] = replace


def patch_recorder(model: Any, recorder: AttentionRecorder) -> Any:
    """A clone of the ModelPatcher ``model`` whose text attention feeds ``recorder`` (outputs unchanged)."""
    m = model.clone()

    def attend(q: Any, k: Any, v: Any, extra: Any, site: tuple, prev: Any) -> Any:
        out = recorder.attend(q, k, v, extra, site[0])
        return prev(q, k, v, extra) if prev is not None else out

    install_text_attention(m.model_options, m.model.diffusion_model, attend)
    return m


def values_from_context(n: torch.Tensor, context: torch.Tensor, value: torch.Tensor, extra: dict[str, Any]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return n, context, value


def iou(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boolean masks over the last two dims."""
    inter = (mask_a & mask_b).sum(dim=(-2, -1)).float()
    union = (mask_a | mask_b).sum(dim=(-2, -1)).float()
    return inter / union.clamp_min(1)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map (over the last two dims) to [0, 1]."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)

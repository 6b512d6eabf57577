"""Null-text optimisation's backward pass with one UNet layer's activations at a time.

ComfyUI runs a UNet's layers through ``forward_timestep_embed``, which first offers each layer to the
``forward_timestep_embed_patch`` handlers in ``transformer_options["patches"]`` (ModelPatcher's
``set_model_forward_timestep_embed_patch``). Installed in a run's own model_options, handlers for ResBlocks
and SpatialTransformers run each layer under ``editing.gradients.recomputed_in_backward``: autograd keeps the
layer's inputs and recomputes its activations in backward, so one backward pass needs about one layer's
activations rather than the whole UNet's (measured by bench/scale.py on SDXL). ComfyUI 0.28 offers every
layer to these handlers first; 0.3.75 offers only the layers it has no branch for, so there (and for DiTs) the
activations are kept as before: the result is the same, only the memory differs.
"""

from __future__ import annotations

from typing import Any

from comfy.ldm.modules.attention import SpatialTransformer, SpatialVideoTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, VideoResBlock

from ..editing.gradients import recomputed_in_backward

PATCH = "forward_timestep_embed_patch"


def _res_block(layer: Any, x: Any, emb: Any, context: Any, transformer_options: dict, output_shape: Any,
               time_context: Any, num_video_frames: Any, image_only_indicator: Any) -> Any:
    if isinstance(layer, VideoResBlock):  # as forward_timestep_embed calls it, kept whole
        return layer(x, emb, num_video_frames, image_only_indicator)
    return recomputed_in_backward(layer, x, emb)


def _spatial_transformer(layer: Any, x: Any, emb: Any, context: Any, transformer_options: dict, output_shape: Any,
                         time_context: Any, num_video_frames: Any, image_only_indicator: Any) -> Any:
    if isinstance(layer, SpatialVideoTransformer):
        x = layer(x, context, time_context, num_video_frames, image_only_indicator, transformer_options)
    else:
        # the options as they are now (block, transformer_index): the recomputation must see the same ones
        options = dict(transformer_options)
        x = recomputed_in_backward(lambda h, c: layer(h, c, options), x, context)
    if "transformer_index" in transformer_options:  # what forward_timestep_embed does after the layer
        transformer_options["transformer_index"] += 1
    return x


def install(model_options: dict[str, Any]) -> None:
    """Recompute ResBlocks and SpatialTransformers in backward, in this run's ``model_options`` (new lists and
    dicts: nothing shared with the guider's options is changed)."""
    transformer_options = model_options["transformer_options"] = dict(model_options.get("transformer_options", {}))
    patches = transformer_options["patches"] = dict(transformer_options.get("patches", {}))
    patches[PATCH] = [*patches.get(PATCH, []), (ResBlock, _res_block), (SpatialTransformer, _spatial_transformer)]

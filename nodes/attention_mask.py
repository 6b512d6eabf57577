"""Attention Mask: where in the image do chosen words of the source prompt live? A MASK from cross-attention.

Why: editing "the dog" should touch the dog only. The model already knows where the dog is: its
cross-attention for the word "dog" while it reconstructs the inverted image. This node re-runs the
reconstruction (Edit with the inversion's own guider) on a MODEL whose text attention is recorded, and
averages the words' maps over heads, the chosen resolution and the chosen part of the steps.
"""

from __future__ import annotations

import math
from typing import Any

import comfy.model_management
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..solvers import InversionState
from .attention_capture import AttentionRecorder, normalise
from .attention_control import (
    RESOLUTIONS,
    AttentionControl,
    context_length_of,
    install_control,
    joint_records,
    select_resolution,
    supported_families,
    text_layout,
    token_grid,
    words_context_positions,
)
from .common import CATEGORY, Inversion, check_clip, check_prompt_encodes_to, guider_model, node_id, solver_for_state
from .model_adapter import model_name, run_edit, solver_for_edit
from .uncond import UNCOND_CONTEXT

NAME = "Attention Mask"


def _check_guider(guider: Any) -> None:
    guider_model(guider, NAME, fix="connect the guider you gave Invert")


def _check_prompt(guider: Any, clip: Any, prompt: str) -> None:
    """The words are looked up in ``prompt``; it must be the text of the guider's positive conditioning, or the
    mask would be of words the guider never saw."""
    check_clip(clip, NAME, "clip", "the CLIP that encoded the source prompt")
    if not prompt.strip():
        raise ValueError(f"{NAME}: input 'prompt' is empty; type the source prompt's text, as in its CLIP Text Encode")
    positive = (getattr(guider, "original_conds", None) or {}).get("positive") or []
    context = positive[0].get("cross_attn") if positive and isinstance(positive[0], dict) else None
    if isinstance(context, torch.Tensor):
        check_prompt_encodes_to(clip, prompt, context, NAME, "prompt", "the guider's positive")


def _resolution_filter(recorder: AttentionRecorder, resolution: str) -> Any:
    if resolution == "all":
        return None
    try:
        chosen = {id(m) for m in select_resolution([r.maps for r in recorder.records], resolution)}
    except ValueError as err:
        raise ValueError(f"{NAME}: input 'resolution': {err}") from err
    return lambda r: id(r.maps) in chosen


def attention_mask(guider: Any, inversion: InversionState, clip: Any, prompt: str, words: str,
                   resolution: str = "all", start: float = 0.0, end: float = 1.0) -> torch.Tensor:
    """(batch, H, W) min-max normalised attention of ``words`` (their tokens summed) at the latent's size."""
    _check_guider(guider)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (start, end)):
        raise ValueError(f"{NAME}: inputs 'start' and 'end' must be finite numbers (got {start}, {end}); they are "
                         "fractions of the reconstruction's steps, e.g. 0 and 1")
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"{NAME}: inputs 'start' and 'end' must satisfy 0 <= start < end <= 1 (got {start}, "
                         f"{end}); they are fractions of the reconstruction's steps")
    if UNCOND_CONTEXT in inversion.extras and "negative" not in (getattr(guider, "original_conds", None) or {}):
        raise ValueError(f"{NAME}: input 'inversion' carries per-step unconditional embeddings (null-text inversion), "
                         "which replace a guider's negative prompt; connect a CFGGuider (with a negative) as 'guider'")
    _check_prompt(guider, clip, prompt)
    layout = text_layout(guider.model_patcher, NAME, "guider")
    try:
        positions = words_context_positions(clip, prompt, words, layout,
                                            check=comfy.model_management.throw_exception_if_processing_interrupted)
    except ValueError as err:
        raise ValueError(f"{NAME}: input 'words': {err}") from err
    tokens = sorted({p for ps in positions.values() for p in ps})
    recorder = AttentionRecorder(tokens)  # holds the maps (the words' tokens summed) and averages them
    control = AttentionControl(tokens, [], phase="record", history=recorder.records, layout=layout,
                               image_grid=token_grid(guider.model_patcher.model.diffusion_model, inversion.shape),
                               context_tokens=context_length_of(guider))
    solver, _ = solver_for_edit(solver_for_state(inversion, NAME), guider.model_patcher, NAME)  # logs its warning
    run_edit(guider, solver, inversion, NAME,
             options_hook=lambda options, model: install_control(options, model.diffusion_model, control))
    recorder.records[:] = joint_records(recorder.records)
    sigmas = sorted({r.sigma for r in recorder.records}, reverse=True)  # the reconstruction's steps, noisy first
    if not sigmas:
        raise ValueError(f"{NAME}: no attention to the words was recorded; the guider's model "
                         f"({model_name(guider.model_patcher.model)}) showed no text attention. Supported: "
                         f"{supported_families()}")
    first, last = int(start * len(sigmas)), max(int(start * len(sigmas)) + 1, round(end * len(sigmas)))
    chosen_sigmas = set(sigmas[first:last])
    by_resolution = _resolution_filter(recorder, resolution)
    size = tuple(inversion.shape[-2:])
    maps = recorder.mean_map(size, select=lambda r: r.sigma in chosen_sigmas
                             and (by_resolution is None or by_resolution(r)))
    return normalise(maps[:, 0]).clamp(0, 1)  # the words' summed map, min-max scaled per image


class AttentionMask(io.ComfyNode):
    """A soft MASK from the cross-attention of words of the source prompt while the inversion is rebuilt."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("AttentionMask"),
            display_name=NAME,
            category=CATEGORY,
            description="Finds where words of the source prompt are in the image: re-runs the reconstruction "
                        "of the inversion with its own guider and averages the words' cross-attention maps. "
                        "Outputs a soft mask (0..1) at the latent's size; threshold it with ThresholdMask or "
                        "feed it to any node that takes a MASK.",
            inputs=[
                io.Guider.Input("guider", tooltip="The guider you gave Invert (source prompt)."),
                Inversion.Input("inversion", tooltip="The output of Invert (or Load Inversion)."),
                io.Clip.Input("clip", tooltip="The CLIP that encoded the source prompt (maps words to tokens)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The source prompt, as typed into its CLIPTextEncode."),
                io.String.Input("words", default="", tooltip="Words of the prompt, comma separated (e.g. 'dog')."),
                io.Combo.Input("resolution", options=RESOLUTIONS, default="all",
                               tooltip="Attention layers to average: all, or one resolution (finest = largest "
                                       "maps)."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="First fraction of the reconstruction steps to average (0 = the noisiest)."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Last fraction of the steps to average."),
            ],
            outputs=[io.Mask.Output("mask", display_name="MASK", tooltip="Soft mask in [0, 1] at the latent's size.")],
        )

    @classmethod
    def execute(cls, guider: Any, inversion: Any, clip: Any, prompt: str, words: str, resolution: str = "all",
                start: float = 0.0, end: float = 1.0) -> io.NodeOutput:
        if not isinstance(inversion, InversionState):
            raise ValueError(f"{NAME}: input 'inversion' must come from Invert or Load Inversion")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"{NAME}: input 'resolution' must be one of {RESOLUTIONS}, got {resolution!r}")
        mask = attention_mask(guider, inversion, clip, prompt, words, resolution, start, end)
        preview = F.interpolate(mask.unsqueeze(1), scale_factor=max(1, 128 // mask.shape[-1]), mode="nearest")
        return io.NodeOutput(mask, ui=ui.PreviewMask(preview.squeeze(1), cls=cls))


NODES = [AttentionMask]

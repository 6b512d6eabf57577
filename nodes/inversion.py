"""Invert, Edit and Round-trip check: the nodes of the invert -> edit data flow."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io, ui

from ..solvers import InversionState, check_sigmas
from .common import (
    CATEGORY,
    Inversion,
    check_latent_channels,
    guider_model,
    latent_samples,
    node_id,
    solver_for_state,
    solver_sampler_of,
)
from .fingerprint import conditioning_fingerprint, model_fingerprint
from .model_adapter import model_device, model_name, run_edit, run_inversion, schedule_for, solver_for_edit
from .storage import creation_info
from .uncond import META as NULL_TEXT_META
from .uncond import UNCOND_CONTEXT

INVERT = "Invert"
EDIT = "Edit from Inversion"
CHECK = "Round-trip Check"
#: extras key of the latent Invert started from, so Round-trip Check can take an INVERSION.
SOURCE = "source_latent"
#: extras key of z_T in LATENT space (the state's own latents are in the sampler's scaled space).
NOISE = "noise_latent"


class Invert(io.ComfyNode):
    """Runs a latent up the sigma grid with an invertible solver, producing an INVERSION."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("Invert"),
            display_name=INVERT,
            category=CATEGORY,
            description="Inverts an encoded image to noise with one of our solvers. The guider's prompt and "
                        "cfg are part of the inversion: run Edit with the same guider to reconstruct the "
                        "image, or with an edited prompt to edit it. How far to invert is set by the "
                        "sigmas (e.g. BasicScheduler's denoise).",
            inputs=[
                io.Guider.Input("guider", tooltip="Source prompt and cfg (cfg 1 is usual for inversion)."),
                io.Sampler.Input("sampler", tooltip="A solver node of this pack (DDIM, EDICT, BDIA, ...)."),
                io.Sigmas.Input("sigmas", tooltip="The noise-level grid, as a scheduler outputs it (noisy -> "
                                                  "clean). Do not flip it: Invert walks it backwards."),
                io.Latent.Input("latent", tooltip="The encoded image to invert."),
            ],
            outputs=[
                Inversion.Output("inversion", display_name="INVERSION", tooltip="The inverted state; feed it to Edit."),
                io.Latent.Output("noise_latent", display_name="noise latent",
                                 tooltip="The inverted latent z_T, for previews."),
            ],
        )

    @classmethod
    def execute(cls, guider: Any, sampler: Any, sigmas: torch.Tensor, latent: dict) -> io.NodeOutput:
        inputs = checked_inputs(guider, sampler, sigmas, latent, INVERT)
        state, z_top = run_inversion(guider, inputs.solver, inputs.samples, inputs.grid, INVERT)
        record_provenance(state, inputs, guider, z_top)
        ui_out = {"text": [state.describe(), *inputs.warnings], "warnings": inputs.warnings}
        return io.NodeOutput(state, {"samples": z_top}, ui=ui_out)


@dataclass
class InversionInputs:
    """An inverting node's inputs, checked: the model, solver, latent, schedule, grid and the solver's warnings."""

    model: Any
    solver: Any
    samples: torch.Tensor
    schedule: Any
    grid: torch.Tensor
    warnings: list[str]


def checked_inputs(guider: Any, sampler: Any, sigmas: torch.Tensor, latent: dict, node: str) -> InversionInputs:
    """Check what an inverting node (Invert, Null-text Inversion) is given; log the solver's warnings."""
    model = guider_model(guider, node)
    solver, device_note = solver_sampler_of(sampler, node).solver_on(model_device(model))
    samples = latent_samples(latent, node)
    check_latent_channels(samples, model, node, "latent")
    schedule = schedule_for(model, node)
    _check_latent_kept(model, samples, node)
    grid = check_sigmas(sigmas, schedule, what=f"{node}: input 'sigmas'")
    try:
        warnings = solver.warnings(grid, schedule)
    except ValueError as err:
        raise ValueError(f"{node}: input 'sampler' cannot invert on this grid: {err}") from err
    warnings = [device_note, *warnings] if device_note else warnings
    for warning in warnings:
        logging.warning("%s: %s", node, warning)
    return InversionInputs(model, solver, samples, schedule, grid, warnings)


def _check_latent_kept(model: Any, samples: torch.Tensor, node: str) -> None:
    """Refuse a model that reshapes the latent it reads (an image-conditioned refiner: HunyuanImage 2.1's turns 64
    channels into 128): its sampler-space state is not the image's, and Edit cannot start from it alone."""
    processed = model.model.process_latent_in(samples[:1].detach().to("cpu", torch.float32))
    if tuple(processed.shape[1:]) != tuple(samples.shape[1:]):
        raise ValueError(f"{node}: the model ({model_name(model.model)}) reads a latent of shape "
                         f"{list(samples.shape[1:])} as {list(processed.shape[1:])}: it is an image-conditioned "
                         "model (a refiner), which exact inversion does not support. Invert with the base model")


def record_provenance(state: InversionState, inputs: InversionInputs, guider: Any, z_top: torch.Tensor) -> None:
    """What every inversion carries besides its latents: source and z_T, fingerprints, creation info, warnings."""
    state.extras[SOURCE] = inputs.samples.detach().to("cpu").clone()
    state.extras[NOISE] = z_top.detach().to("cpu").clone()
    state.meta.update(model=model_fingerprint(inputs.model), conditioning=conditioning_fingerprint(guider),
                      created=creation_info(), warnings=inputs.warnings)


class Edit(io.ComfyNode):
    """Runs an INVERSION back down its grid with (possibly) another guider."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("Edit"),
            display_name=EDIT,
            category=CATEGORY,
            description="Regenerates the image from an inversion. With the same guider as Invert, exact "
                        "solvers reproduce the input; with an edited prompt, you get the edit.",
            inputs=[
                io.Guider.Input("guider", tooltip="Target prompt and cfg."),
                Inversion.Input("inversion", tooltip="The output of Invert (or Load Inversion)."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional: the SIGMAS used by Invert, to check the graph is wired as "
                                        "intended. The inversion's own grid is always used."),
            ],
            outputs=[io.Latent.Output("latent", display_name="LATENT",
                                     tooltip="The regenerated (edited) latent; decode it with the VAE.")],
        )

    @classmethod
    def execute(cls, guider: Any, inversion: Any, sigmas: torch.Tensor | None = None) -> io.NodeOutput:
        model = guider_model(guider, EDIT)
        if not isinstance(inversion, InversionState):
            raise ValueError(f"{EDIT}: input 'inversion' must come from Invert or Load Inversion")
        schedule = schedule_for(model, EDIT)
        if schedule.kind != inversion.schedule:
            raise ValueError(
                f"{EDIT}: input 'inversion' was made with a {inversion.schedule} model but the guider's model is "
                f"{schedule.kind}; edit with the model family used for the inversion"
            )
        # in LATENT space (the state is after process_latent_in, which may change the channels)
        check_latent_channels(inversion.extras.get(SOURCE, inversion.latents["x"]), model, EDIT, "inversion")
        warnings = _check_same_model(model, inversion)
        if sigmas is not None:
            _check_same_grid(sigmas, inversion)
        warnings += _check_reconstruction_branch(guider, inversion) + _check_null_text(guider, inversion)
        for warning in warnings:
            logging.warning("%s: %s", EDIT, warning)
        solver, device_warnings = solver_for_edit(solver_for_state(inversion, EDIT), model, EDIT)
        warnings += device_warnings
        out = run_edit(guider, solver, inversion, EDIT)
        warnings += list(getattr(guider, "run_warnings", []))  # a guider of ours that could not do all it was asked
        return io.NodeOutput({"samples": out}, ui={"warnings": warnings})  # [] clears the front end's last ones


def _check_same_model(model: Any, inversion: InversionState) -> list[str]:
    """A loaded file must be edited with the model it was made with, unless the user allowed it.

    In-memory inversions only warn: the graph shows which model each node uses.
    """
    made_with = (inversion.meta.get("model") or {}).get("id")
    now = model_fingerprint(model)["id"]
    if made_with is None or made_with == now:
        return []
    loaded = inversion.meta.get("loaded_from")
    if loaded and not inversion.meta.get("allow_mismatch"):
        raise ValueError(
            f"{EDIT}: input 'guider' uses a different model (fingerprint {now}) from the one that made the inversion "
            f"loaded from {loaded} ({made_with}). Load the same checkpoint, or tick allow_mismatch on Load Inversion"
        )
    return [f"the guider's model ({now}) differs from the inversion's ({made_with}); the round trip will not be "
            "exact"]


def _check_reconstruction_branch(guider: Any, inversion: InversionState) -> list[str]:
    """A guider with a reconstruction branch (Blended Guidance) must rebuild the inversion with its own
    prompt and cfg, or its maps and the blended background come from another image: warn when it does not."""
    fingerprint = getattr(guider, "reconstruction_fingerprint", None)
    made_with = (inversion.meta.get("conditioning") or {}).get("id")
    if fingerprint is None or made_with is None:
        return []
    now = fingerprint()
    if now["id"] == made_with:
        return []
    made_cfg = (inversion.meta.get("conditioning") or {}).get("cfg")
    return [f"the guider's source prompt or cfg (cfg {now['cfg']:g}) differs from the one Invert used (cfg "
            f"{made_cfg}); connect the same source conditioning and set cfg to the inversion's, or the "
            "reconstruction branch will not rebuild the image"]


def _check_null_text(guider: Any, inversion: InversionState) -> list[str]:
    """Per-step unconditional embeddings replace the guider's negative: it needs one, and the cfg they were
    optimised for (NPI's hold at any cfg)."""
    if UNCOND_CONTEXT not in inversion.extras:
        return []
    info = inversion.meta.get(NULL_TEXT_META) or {}
    method, made_cfg = info.get("method", "null-text"), info.get("cfg")
    if "negative" not in (getattr(guider, "original_conds", None) or {}):
        raise ValueError(f"{EDIT}: input 'inversion' carries per-step unconditional embeddings ({method}), which "
                         "replace a guider's negative prompt; connect a CFGGuider (any negative) instead of "
                         f"{type(guider).__name__}")
    cfg = getattr(guider, "cfg", None)
    if method != "npi" and made_cfg is not None and cfg is not None and not math.isclose(float(cfg), made_cfg):
        return [f"the inversion's embeddings were optimised for cfg {made_cfg:g} but the guider uses cfg "
                f"{float(cfg):g}; the source is only reconstructed faithfully at cfg {made_cfg:g}"]
    return []


def _check_same_grid(sigmas: torch.Tensor, inversion: InversionState) -> None:
    grid = sigmas.detach().to("cpu", torch.float64).flatten()
    ref = inversion.sigmas
    same = grid.shape == ref.shape and torch.allclose(grid, ref, rtol=1e-6, atol=1e-9)
    if not same:
        raise ValueError(
            f"{EDIT}: input 'sigmas' ({len(grid) - 1} steps, {_span(grid)}) does not match the inversion's grid "
            f"({inversion.steps} steps, {_span(ref)}). Connect the SIGMAS used by Invert, or leave it unconnected."
        )


def _span(grid: torch.Tensor) -> str:
    if grid.numel() == 0:
        return "empty"
    return f"sigma {float(grid[0]):.4g} -> {float(grid[-1]):.4g}"


def roundtrip_errors(reference: torch.Tensor, result: torch.Tensor, peak: float | None) -> dict[str, float]:
    """max-abs error, relative L2 error and PSNR (peak given, or the reference's value range)."""
    ref = reference.detach().to("cpu", torch.float64)
    res = result.detach().to("cpu", torch.float64)
    diff = res - ref
    mse = float(diff.pow(2).mean())
    norm = float(ref.norm())
    value_range = peak if peak is not None else float(ref.max() - ref.min())
    psnr = math.inf if mse == 0 else 10 * math.log10(max(value_range, 1e-12) ** 2 / mse)
    return {
        "max_abs": float(diff.abs().max()),
        "relative": float(diff.norm()) / norm if norm > 0 else float(diff.norm()),
        "psnr_db": psnr,
    }


class RoundTripCheck(io.ComfyNode):
    """Measures how far a reconstruction is from its original, and shows it in the node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("RoundTripCheck"),
            display_name=CHECK,
            category=CATEGORY,
            description="Compares a reconstruction with its original: max-abs error, relative L2 error and PSNR, "
                        "shown in the node with a figure (original | result | error map, log scale). Connect the "
                        "inversion (or the original latent) and Edit's latent, or two images.",
            is_output_node=True,
            inputs=[
                Inversion.Input("inversion", optional=True,
                                tooltip="The inversion: its source latent is the original."),
                io.Latent.Input("original_latent", optional=True, tooltip="The latent given to Invert."),
                io.Latent.Input("result_latent", optional=True, tooltip="The latent from Edit."),
                io.Image.Input("original_image", optional=True, tooltip="The original image."),
                io.Image.Input("result_image", optional=True, tooltip="The decoded reconstruction."),
            ],
            outputs=[
                io.Float.Output("max_abs_error", display_name="max abs error"),
                io.Float.Output("relative_error", display_name="relative error",
                                tooltip="||result - original|| / ||original||"),
                io.Float.Output("psnr_db", display_name="PSNR dB",
                                tooltip="PSNR in dB; peak 1 for images, the original's value range for latents."),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, inversion: Any = None, original_latent: dict | None = None, result_latent: dict | None = None,
                original_image: torch.Tensor | None = None, result_image: torch.Tensor | None = None) -> io.NodeOutput:
        ref, res, kind, peak = _pair(inversion, original_latent, result_latent, original_image, result_image)
        if tuple(ref.shape) != tuple(res.shape):
            raise ValueError(f"{CHECK}: the original and the result differ in shape ({list(ref.shape)} vs "
                             f"{list(res.shape)}); compare the input of Invert with the output of Edit")
        err = roundtrip_errors(ref, res, peak)
        report = (f"{kind} round trip: max-abs {err['max_abs']:.3e}, relative {err['relative']:.3e}, "
                  f"PSNR {err['psnr_db']:.2f} dB")
        figure = roundtrip_figure(ref, res, channels_last=kind == "image")
        ui_out = {"text": [report], **ui.PreviewImage(figure, cls=cls).as_dict()}
        return io.NodeOutput(err["max_abs"], err["relative"], err["psnr_db"], report, ui=ui_out)


def _pair(inversion: Any, original_latent: dict | None, result_latent: dict | None,
          original_image: torch.Tensor | None, result_image: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor, str, float | None]:
    """(original, result, kind, PSNR peak) from whichever inputs are connected, or a clear error."""
    images = (original_image, result_image)
    if inversion is not None and original_latent is None and result_latent is not None \
            and all(v is None for v in images):
        if not isinstance(inversion, InversionState):
            raise ValueError(f"{CHECK}: input 'inversion' must come from Invert or Load Inversion")
        if SOURCE not in inversion.extras:
            raise ValueError(f"{CHECK}: input 'inversion' does not carry its source latent (made by an older "
                             "version?); connect original_latent instead")
        return inversion.extras[SOURCE], latent_samples(result_latent, CHECK, "result_latent"), "latent", None
    if inversion is None and original_latent is not None and result_latent is not None \
            and all(v is None for v in images):
        ref = latent_samples(original_latent, CHECK, "original_latent")
        return ref, latent_samples(result_latent, CHECK, "result_latent"), "latent", None
    if all(v is not None for v in images) and inversion is None and original_latent is None \
            and result_latent is None:
        return original_image, result_image, "image", 1.0
    raise ValueError(f"{CHECK}: connect one pair: inversion and result_latent, original_latent and result_latent, "
                     "or original_image and result_image")


def _to_rgb(t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [H, W, 3] in 0..1 with the original's range (first three channels, grey if fewer)."""
    t = ((t - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    t = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1)
    return t.permute(1, 2, 0)


def roundtrip_figure(ref: torch.Tensor, res: torch.Tensor, channels_last: bool, min_size: int = 128) -> torch.Tensor:
    """An IMAGE [1, H, 3W, 3]: original | result | per-pixel error on a log scale (1e-8 black .. 1 white).

    The error is relative to the original's RMS, so an exact round trip is black and a broken one
    white, whatever the latent's scale. First batch element only.
    """
    a = ref[0].detach().to("cpu", torch.float64)
    b = res[0].detach().to("cpu", torch.float64)
    if a.ndim == 4:  # [C, 1, H, W]: an image latent with a time axis
        a, b = a[:, 0], b[:, 0]
    if channels_last:
        a, b = a.permute(2, 0, 1), b.permute(2, 0, 1)
    lo = a.amin(dim=(1, 2), keepdim=True)
    hi = a.amax(dim=(1, 2), keepdim=True)
    err = (b - a).pow(2).sum(0).sqrt() / a.pow(2).mean().sqrt().clamp_min(1e-12)
    heat = ((err.clamp_min(1e-8).log10() + 8) / 8).clamp(0, 1)
    heat_rgb = torch.stack([heat, heat.pow(2), heat.pow(4)], dim=-1)  # black -> red -> yellow -> white
    panel = torch.cat([_to_rgb(a, lo, hi), _to_rgb(b, lo, hi), heat_rgb], dim=1)
    scale = max(1, math.ceil(min_size / panel.shape[0]))
    panel = panel.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return panel.unsqueeze(0).float()


NODES = [Invert, Edit, RoundTripCheck]

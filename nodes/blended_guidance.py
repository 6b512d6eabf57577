"""Blended Guidance: a GUIDER that edits an inversion strongly where the anchor word is and gently elsewhere.

Why (AIDI §3.3, algorithms.md §4.6): a plain CFG edit pushes every pixel toward the new prompt, so the
background drifts. This guider runs two branches side by side through ``Edit from Inversion``:

- reconstruction: the source prompt at the inversion's scale w; it rebuilds the image (exactly, for
  EDICT and BDIA) and supplies the anchor word's cross-attention map M_t at every step;
- target: the edited prompt at a per-pixel scale w* = (w_E - w) * sigmoid(+-Mbar_t) + w.

Options: prompt-to-prompt attention injection for the first steps (keeps the object's shape), local
blend (outside the mask the target latent follows the reconstruction at every step, §8.2) and
stochastic editing (seeded eta noise inside the mask, §4.7) to draw variants.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import comfy.samplers
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..solvers import Schedule
from .attention_control import (
    RESOLUTIONS,
    AttentionControl,
    TextLayout,
    context_length,
    context_positions,
    patch_control,
    text_layout,
    token_alignment,
    token_grid,
)
from .common import CATEGORY, node_id
from .fingerprint import conditioning_fingerprint
from .model_adapter import EditRun, model_name, schedule_for_sampling
from .prompt_words import token_row

NAME = "Blended Guidance Guider"
ANCHOR_ROLES = ["edit region", "keep region"]
#: defaults chosen on the embedded model's toy world with bench/attention.py (see bench/README.md)
DEFAULT_THRESHOLD = 0.6
DEFAULT_SHARPNESS = 5.0
DEFAULT_RESOLUTION = "all"
DEFAULT_INJECTION = 0.6
DEFAULT_NORMALISATION = "min-max"


@dataclass(frozen=True)
class BlendSettings:
    cfg: float  # the reconstruction branch's scale w (the inversion's)
    target_cfg: float  # w_E
    anchor_is_edit_region: bool
    threshold: float  # delta
    sharpness: float  # M
    resolution: str
    blended: bool  # per-pixel scale; False: w_E everywhere
    injection: float  # fraction of steps with injected attention
    local_blend: bool
    eta: float
    seed: int


def scale_map(anchor: torch.Tensor, normalisation: str = DEFAULT_NORMALISATION) -> torch.Tensor:
    """The map in [0, 1] per image: divided by its max ("max", algorithms.md §4.6) or min-max scaled."""
    hi = anchor.amax(dim=(-2, -1), keepdim=True)
    if normalisation == "max":
        return anchor / hi.clamp_min(1e-12)
    lo = anchor.amin(dim=(-2, -1), keepdim=True)
    return (anchor - lo) / (hi - lo).clamp_min(1e-12)


def soft_mask(anchor: torch.Tensor, threshold: float, sharpness: float, edit_region: bool) -> torch.Tensor:
    """AIDI's M~: the scaled map mapped piecewise-linearly to (-M, M) around delta, then sigmoid.

    ``edit_region`` True: the anchor marks what to edit (sigmoid(Mbar)); False: what to keep (sigmoid(-Mbar)).
    """
    m = scale_map(anchor)
    mbar = torch.where(m < threshold, sharpness * (m - threshold) / threshold,
                       sharpness * (m - threshold) / (1.0 - threshold))
    return torch.sigmoid(mbar if edit_region else -mbar)


def blend_region(mean_anchor: torch.Tensor, threshold: float, edit_region: bool) -> torch.Tensor:
    """Local blend's binary edit region from the running-mean map: 3x3 max-pool, scale by max, threshold."""
    anchor = scale_map(F.max_pool2d(mean_anchor, 3, stride=1, padding=1)) > threshold
    return (anchor if edit_region else ~anchor).to(mean_anchor.dtype)


def ddim_noise_variance(schedule: Schedule, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """DDIM's sigma_t^2 = (1 - abar_prev)/(1 - abar) * (1 - abar/abar_prev), in the schedule's own alpha, sigma."""
    a, s = schedule.alpha(sigma_from), schedule.sigma(sigma_from)
    a2, s2 = schedule.alpha(sigma_to), schedule.sigma(sigma_to)
    return (s2 * s2) / (s * s) * (1.0 - (a * a) / (a2 * a2))


class _EditPass:
    """What one Edit through the guider accumulates: steps done, the running map, the last soft mask."""

    def __init__(self, batch: int, sigmas: torch.Tensor, schedule: Schedule, seed: int) -> None:
        self.batch = batch
        self.sigmas = sigmas.detach().to("cpu", torch.float64)
        self.schedule = schedule
        self.steps_done = 0
        self.map_sum: torch.Tensor | None = None
        self.maps = 0
        self.soft: torch.Tensor | None = None
        # one stream per image (seed + index), so an image's variants do not depend on the rest of its batch
        self.generators = [torch.Generator(device="cpu").manual_seed((int(seed) + i) % 2**64) for i in range(batch)]

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def injected_steps(self, fraction: float) -> int:
        """The first int(fraction * steps) steps inject, as prompt-to-prompt's cross_replace_steps."""
        return int(fraction * self.steps + 1e-9)


class BlendedGuider(comfy.samplers.CFGGuider):
    """Two-branch guider for Edit from Inversion (see the module docstring)."""

    def __init__(self, model_patcher: Any, settings: BlendSettings, anchor_positions: list[int],
                 alignment: list[int], layout: TextLayout | None = None) -> None:
        self.settings = settings
        if layout is not None and settings.injection > 0:
            raise ValueError(f"{NAME}: input 'injection' must be 0 for joint-attention and other DiT models (this "
                             f"one: {model_name(model_patcher.model)}); prompt-to-prompt injection is implemented "
                             "for UNet cross-attention only")
        self.control = AttentionControl(anchor_positions, alignment, inject=settings.injection > 0, layout=layout)
        super().__init__(patch_control(model_patcher, self.control))
        self.cfg = settings.cfg
        self.edit_pass: _EditPass | None = None
        self.last_reconstruction: torch.Tensor | None = None

    def set_branch_conds(self, source: Any, target: Any, negative: Any) -> None:
        self.inner_set_conds({"positive": source, "negative": negative, "target": target})
        self.control.context_tokens = context_length(source)

    def reconstruction_fingerprint(self) -> dict[str, Any]:
        """The reconstruction branch's prompts and cfg, fingerprinted as Invert fingerprints its guider."""
        branch = SimpleNamespace(original_conds={k: v for k, v in self.original_conds.items() if k != "target"},
                                 cfg=self.cfg)
        return conditioning_fingerprint(branch)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if not isinstance(sampler, EditRun):
            raise ValueError(f"{NAME}: this guider edits an inversion; connect it to 'Edit from Inversion' (it "
                             "cannot drive SamplerCustomAdvanced or Invert)")
        batch = noise.shape[0]
        sampler.prepare(lambda v: torch.cat([v, v]), self._after_step)  # reconstruction and edit, one batch
        schedule = schedule_for_sampling(self.model_patcher.get_model_object("model_sampling"), NAME)
        self.edit_pass = _EditPass(batch, sigmas, schedule, self.settings.seed)
        try:
            out = super().sample(torch.cat([noise, noise]), torch.cat([latent_image, latent_image]), sampler,
                                 sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.control.phase = "off"
            self.control.begin_evaluation()
        if self.edit_pass.maps == 0:
            logging.warning("%s: no cross-attention of the anchor was recorded, so the edit used target_cfg "
                            "everywhere (no mask); is the anchor within the model's text context?", NAME)
        self.last_reconstruction = out[:batch]  # the reconstruction branch's result, for checks and tests
        return out[batch:]

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        run, s, control = self.edit_pass, self.settings, self.control
        assert run is not None, "BlendedGuider.predict_noise outside sample()"
        b = run.batch
        control.begin_evaluation()
        control.image_grid = token_grid(self.model_patcher.model.diffusion_model, x.shape)
        control.phase = "record"
        rec = comfy.samplers.sampling_function(self.inner_model, x[:b], timestep[:b], self.conds.get("negative"),
                                               self.conds.get("positive"), s.cfg, model_options=model_options,
                                               seed=seed)
        control.phase = "inject" if run.steps_done < run.injected_steps(s.injection) else "off"
        anchor = control.anchor_map(tuple(x.shape[-2:]), s.resolution)
        if anchor is not None:
            run.soft = soft_mask(anchor, s.threshold, s.sharpness, s.anchor_is_edit_region).to(x)
            run.map_sum = anchor if run.map_sum is None else run.map_sum + anchor
            run.maps += 1
        x_t, t_t = x[b:], timestep[b:]
        if s.blended and run.soft is not None:
            negative, target = self.conds.get("negative"), self.conds.get("target")
            cond, uncond = comfy.samplers.calc_cond_batch(self.inner_model, [target, negative], x_t, t_t,
                                                          model_options)
            scale = (s.target_cfg - s.cfg) * run.soft + s.cfg
            tgt = comfy.samplers.cfg_function(self.inner_model, cond, uncond, scale, x_t, t_t, model_options,
                                              cond=target, uncond=negative)
        else:
            tgt = comfy.samplers.sampling_function(self.inner_model, x_t, t_t, self.conds.get("negative"),
                                                   self.conds.get("target"), s.target_cfg,
                                                   model_options=model_options, seed=seed)
        control.phase = "off"
        return torch.cat([rec, tgt])

    def _after_step(self, step: int, state: dict[str, torch.Tensor], denoised: torch.Tensor | None
                    ) -> dict[str, torch.Tensor]:
        run, s = self.edit_pass, self.settings
        assert run is not None
        run.steps_done = step + 1
        b = run.batch
        if s.local_blend and run.map_sum is not None:
            region = blend_region(run.map_sum / run.maps, s.threshold, s.anchor_is_edit_region)
            state = {k: _blend(v, b, region) for k, v in state.items()}
        if s.eta > 0 and denoised is not None and run.soft is not None:
            state = self._renoise(step, state, denoised, run)
        return state

    def _renoise(self, step: int, state: dict[str, torch.Tensor], denoised: torch.Tensor, run: _EditPass
                 ) -> dict[str, torch.Tensor]:
        """Stochastic editing (AIDI eq. 10): DDIM-eta noise of variance eta*sigma_t^2*M~ in the target branch."""
        s_from, s_to = run.sigmas[step], run.sigmas[step + 1]
        a2, s2 = run.schedule.alpha(s_to), run.schedule.sigma(s_to)
        if float(s2) == 0.0:
            return state
        b = run.batch
        var = (self.settings.eta * ddim_noise_variance(run.schedule, s_from, s_to)) * run.soft.to("cpu", torch.float64)
        shape = state["x"].shape[1:]
        xi = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in run.generators])
        out = dict(state)
        for key, value in state.items():
            if key == "x_prev":  # BDIA's state one level up: not at sigma_to
                continue
            dev, dt = value.device, value.dtype
            scale = run.schedule.scale(s_to)
            z = scale * value[b:].to("cpu", torch.float64)
            eps = (z - a2 * denoised[b:].to("cpu", torch.float64)) / s2
            z = z + ((s2 * s2 - var).clamp_min(0).sqrt() - s2) * eps + var.sqrt() * xi
            out[key] = torch.cat([value[:b], (z / scale).to(device=dev, dtype=dt)])
        return out


def _blend(value: torch.Tensor, b: int, region: torch.Tensor) -> torch.Tensor:
    rec, tgt = value[:b], value[b:]
    region = region.to(device=value.device, dtype=value.dtype)
    return torch.cat([rec, rec + region * (tgt - rec)])


class BlendedGuidance(io.ComfyNode):
    """Builds the BlendedGuider from prompts, an anchor word and the blending options."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("BlendedGuidance"),
            display_name=NAME,
            category=CATEGORY,
            description="Edits an inversion with strong guidance only where the edit belongs (AIDI's blended "
                        "guidance): the source prompt rebuilds the image and shows, through the anchor word's "
                        "cross-attention, where to edit; the target prompt is applied at target_cfg there and at "
                        "cfg elsewhere. Connect it to 'Edit from Inversion' as the guider.",
            inputs=[
                io.Model.Input("model", tooltip="The model used by Invert."),
                io.Conditioning.Input("source_positive", tooltip="The source prompt, exactly as given to Invert."),
                io.Conditioning.Input("target_positive", tooltip="The edited prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt given to Invert (often empty)."),
                io.Clip.Input("clip", tooltip="The CLIP that encoded the prompts (maps words to tokens)."),
                io.String.Input("source_prompt", multiline=True, default="",
                                tooltip="The source prompt's text, as typed into its CLIPTextEncode."),
                io.String.Input("target_prompt", multiline=True, default="",
                                tooltip="The edited prompt's text, as typed into its CLIPTextEncode."),
                io.String.Input("anchor", default="", tooltip="A word of the source prompt: the object to edit "
                                                             "(or to keep; see anchor_role)."),
                io.Combo.Input("anchor_role", options=ANCHOR_ROLES, default=ANCHOR_ROLES[0],
                               tooltip="edit region: edit where the anchor is ('dog' in dog -> cat). keep region: "
                                       "edit everywhere else ('dog' in 'a dog' -> 'a dog on the beach')."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="The reconstruction's scale: the cfg Invert used (1 is usual)."),
                io.Float.Input("target_cfg", default=7.0, min=0.0, max=30.0, step=0.1,
                               tooltip="The edit's scale inside the mask (w_E; AIDI uses up to 7)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.01, max=0.99, step=0.01,
                               tooltip="delta: the fraction of the map's peak where the mask is half on."),
                io.Float.Input("sharpness", default=DEFAULT_SHARPNESS, min=0.1, max=100.0, step=0.1,
                               tooltip="M: how hard the mask's edge is (large = binary)."),
                io.Combo.Input("resolution", options=RESOLUTIONS, default=DEFAULT_RESOLUTION,
                               tooltip="Attention layers the mask is averaged over (finest = largest maps)."),
                io.Float.Input("injection", default=DEFAULT_INJECTION, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps in which the edit reuses the source's "
                                       "cross-attention (prompt-to-prompt), so the object keeps its shape. 0 = off."),
                io.Boolean.Input("blended_guidance", default=True,
                                 tooltip="Off: target_cfg everywhere (a plain edit, with injection if set)."),
                io.Boolean.Input("local_blend", default=False,
                                 tooltip="Outside the mask, the edit follows the reconstruction at every step: "
                                         "the background is kept as the inversion rebuilds it."),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Stochastic editing: noise inside the mask (AIDI uses 0.1); change the seed "
                                       "for variants. 0 = deterministic."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the stochastic noise (used when eta > 0); image i of a batch uses "
                                     "seed + i."),
            ],
            outputs=[io.Guider.Output("guider", display_name="GUIDER", tooltip="Connect to Edit from Inversion.")],
        )

    @classmethod
    def execute(cls, model: Any, source_positive: Any, target_positive: Any, negative: Any, clip: Any,
                source_prompt: str, target_prompt: str, anchor: str, anchor_role: str = ANCHOR_ROLES[0],
                cfg: float = 1.0, target_cfg: float = 7.0, threshold: float = DEFAULT_THRESHOLD,
                sharpness: float = DEFAULT_SHARPNESS, resolution: str = DEFAULT_RESOLUTION,
                injection: float = DEFAULT_INJECTION, blended_guidance: bool = True, local_blend: bool = False,
                eta: float = 0.0, seed: int = 0) -> io.NodeOutput:
        settings = check_settings(anchor_role, cfg, target_cfg, threshold, sharpness, resolution, injection,
                                  blended_guidance, local_blend, eta, seed)
        if clip is None or not hasattr(clip, "tokenize"):
            raise ValueError(f"{NAME}: input 'clip' is not a CLIP; connect the CLIP that encoded the prompts")
        layout = text_layout(model, NAME)
        try:
            anchor_positions = context_positions(clip, source_prompt, anchor, layout)
        except ValueError as err:
            raise ValueError(f"{NAME}: input 'anchor': {err}") from err
        if not target_prompt.strip():
            raise ValueError(f"{NAME}: input 'target_prompt' is empty; type the edited prompt's text")
        alignment = token_alignment(token_row(clip, source_prompt), token_row(clip, target_prompt))
        guider = BlendedGuider(model, settings, anchor_positions, alignment, layout)
        guider.set_branch_conds(source_positive, target_positive, negative)
        return io.NodeOutput(guider)


def check_settings(anchor_role: str, cfg: float, target_cfg: float, threshold: float, sharpness: float,
                   resolution: str, injection: float, blended: bool, local_blend: bool, eta: float,
                   seed: int) -> BlendSettings:
    """The node's options as BlendSettings, or a ValueError naming the input and the fix."""
    if anchor_role not in ANCHOR_ROLES:
        raise ValueError(f"{NAME}: input 'anchor_role' must be one of {ANCHOR_ROLES}, got {anchor_role!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"{NAME}: input 'resolution' must be one of {RESOLUTIONS}, got {resolution!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"{NAME}: input 'threshold' must be between 0 and 1 (exclusive), got {threshold}")
    if sharpness <= 0:
        raise ValueError(f"{NAME}: input 'sharpness' must be positive, got {sharpness}")
    if not 0.0 <= injection <= 1.0:
        raise ValueError(f"{NAME}: input 'injection' is a fraction of the steps: 0..1, got {injection}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"{NAME}: input 'eta' must be in 0..1 (AIDI uses 0.1), got {eta}")
    if cfg < 0 or target_cfg < 0:
        raise ValueError(f"{NAME}: inputs 'cfg' and 'target_cfg' must not be negative")
    return BlendSettings(cfg=float(cfg), target_cfg=float(target_cfg),
                         anchor_is_edit_region=anchor_role == ANCHOR_ROLES[0],
                         threshold=float(threshold), sharpness=float(sharpness), resolution=resolution,
                         blended=bool(blended), injection=float(injection), local_blend=bool(local_blend),
                         eta=float(eta), seed=int(seed))


NODES = [BlendedGuidance]

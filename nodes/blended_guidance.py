"""Blended Guidance: a GUIDER that edits an inversion strongly where the anchor word is and gently elsewhere.

Why (Pan et al., AIDI, ICCV 2023, §3.3): a plain CFG edit pushes every pixel toward the new prompt, so the
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
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import comfy.samplers
import torch
from comfy_api.latest import io

from ..editing.blend import blend_branches, blend_region, renoise, soft_mask
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
from .common import CATEGORY, check_clip, check_conditioning, check_model, check_prompt_encodes_to, node_id
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
    """The node's options, checked: ``from_inputs`` takes the schema's values (by name) and validates them."""

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

    @classmethod
    def from_inputs(cls, anchor_role: str = ANCHOR_ROLES[0], cfg: float = 1.0, target_cfg: float = 7.0,
                    threshold: float = DEFAULT_THRESHOLD, sharpness: float = DEFAULT_SHARPNESS,
                    resolution: str = DEFAULT_RESOLUTION, injection: float = DEFAULT_INJECTION,
                    blended_guidance: bool = True, local_blend: bool = False, eta: float = 0.0,
                    seed: int = 0) -> BlendSettings:
        """The options from the node's inputs, or a ValueError naming the input and the fix (NaN passes
        ComfyUI's range checks, so every float is checked here)."""
        floats = {"cfg": cfg, "target_cfg": target_cfg, "threshold": threshold, "sharpness": sharpness,
                  "injection": injection, "eta": eta}
        for name, value in floats.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{NAME}: input '{name}' is {value!r}; give a finite number")
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
        return cls(cfg=float(cfg), target_cfg=float(target_cfg), anchor_is_edit_region=anchor_role == ANCHOR_ROLES[0],
                   threshold=float(threshold), sharpness=float(sharpness), resolution=resolution,
                   blended=bool(blended_guidance), injection=float(injection), local_blend=bool(local_blend),
                   eta=float(eta), seed=int(seed))


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
        #: what the last run could not do as asked; Edit from Inversion shows it in its node
        self.run_warnings: list[str] = []

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
        self.run_warnings = []
        if self.edit_pass.maps == 0:
            self.run_warnings.append(f"{NAME}: no attention of the anchor was recorded, so the edit used target_cfg "
                                     "everywhere (no mask); is the anchor within the model's text context?")
            logging.warning("%s", self.run_warnings[-1])
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
            state = {k: blend_branches(v, b, region) for k, v in state.items()}
        if s.eta > 0 and denoised is not None and run.soft is not None:
            state = self._renoise(step, state, denoised, run)
        return state

    def _renoise(self, step: int, state: dict[str, torch.Tensor], denoised: torch.Tensor, run: _EditPass
                 ) -> dict[str, torch.Tensor]:
        """Stochastic editing in the edit branch (editing.blend.renoise), one seeded noise stream per image."""
        s_from, s_to = run.sigmas[step], run.sigmas[step + 1]
        b = run.batch
        shape = state["x"].shape[1:]
        noise = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in run.generators])
        out = dict(state)
        for key, value in state.items():
            if key == "x_prev":  # BDIA's state one level up: not at sigma_to
                continue
            edited = renoise(value[b:], denoised[b:], noise, run.soft, self.settings.eta, run.schedule, s_from, s_to)
            out[key] = torch.cat([value[:b], edited])
        return out


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
                source_prompt: str, target_prompt: str, anchor: str, **options: Any) -> io.NodeOutput:
        settings = BlendSettings.from_inputs(**options)
        check_model(model, NAME)
        for name, value in (("source_positive", source_positive), ("target_positive", target_positive),
                            ("negative", negative)):
            check_conditioning(value, NAME, name)
        check_clip(clip, NAME, "clip", "the CLIP that encoded the prompts")
        if not source_prompt.strip():
            raise ValueError(f"{NAME}: input 'source_prompt' is empty; type the source prompt's text")
        if not target_prompt.strip():
            raise ValueError(f"{NAME}: input 'target_prompt' is empty; type the edited prompt's text")
        check_prompt_encodes_to(clip, source_prompt, source_positive, NAME, "source_prompt", "source_positive")
        check_prompt_encodes_to(clip, target_prompt, target_positive, NAME, "target_prompt", "target_positive")
        layout = text_layout(model, NAME)
        try:
            anchor_positions = context_positions(clip, source_prompt, anchor, layout)
        except ValueError as err:
            raise ValueError(f"{NAME}: input 'anchor': {err}") from err
        alignment = token_alignment(token_row(clip, source_prompt), token_row(clip, target_prompt))
        guider = BlendedGuider(model, settings, anchor_positions, alignment, layout)
        guider.set_branch_conds(source_positive, target_positive, negative)
        return io.NodeOutput(guider)


NODES = [BlendedGuidance]

"""Null-text inversion, negative-prompt inversion and bias correction: faithful reconstructions at high cfg.

Mokady et al., "Null-text Inversion for Editing Real Images" (CVPR 2023, §3); Miyake et al., "Negative-prompt
Inversion" (WACV 2025, §3); latent trajectory optimisation's bias correction (the noise-bias term with random
starts). All three invert the image with the source prompt alone (guidance 1, the *pivot*), then make the
guider's cfg (e.g. 7.5) follow it; the optimisation itself is ``editing/nulltext.py``:

* ``nti`` (Mokady et al.): per grid step, Adam on the unconditional text embedding so that one
  sampling step at the guider's cfg from the reconstructed state lands on the pivot's next state.
  Warm start from the previous step, lr ``1e-2·(1 − i/2N)``, early stop below ``ε·(1 + 100·i/N)``
  (the paper's ``ε + i·2e-5`` at N = 50), ``inner_steps`` iterations at most.
* ``bias_correction`` (latent-TOP): the same trajectory loss with a learnable noise bias on z_T too,
  chosen among ``starts`` random starts by the lowest first-step loss and optimised jointly with the
  text bias at the first step. The text bias is additive (``C_null + z_null``): the same parameter as
  NTI's embedding, so it shares its optimiser settings.
* ``npi`` (Miyake et al.): no optimisation; the source prompt is the unconditional embedding at
  every step, so the source branch at any cfg is the pivot itself.

The result is an INVERSION whose per-step unconditional embeddings (``nodes/uncond.py``) replace the
negative of whatever guider Edit is given. Optimisation needs gradients through the model, which
ComfyUI loads weights in ``torch.inference_mode``; ``editing/gradients.py`` lets gradients through them
without copying or touching them (see its docstring).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..editing.gradients import gradients_through_frozen_weights
from ..editing.nulltext import (
    EARLY_STOP_SCHEDULES,
    METHODS,
    NullTextSettings,
    Passes,
    StepLog,
    best_start,
    fit_step,
    trajectory,
)
from ..solvers import DDIM, InversionState, Schedule, Solver, check_sigmas
from . import layer_recompute
from .common import CATEGORY, Inversion, guider_model, node_id
from .inversion import checked_inputs, record_provenance
from .model_adapter import (
    FractionalTimesteps,
    SolverSampler,
    _sample_through,
    make_step_callback,
    model_name,
    schedule_for_sampling,
)
from .uncond import META, UNCOND_CONTEXT, UNCOND_POOLED, context_of, detached, with_uncond

NAME = "Null-text Inversion"


def _carries_control(model_wrap: Any) -> bool:
    """Whether the conds carry a ControlNet/adapter (its outputs are added to the UNet's skips in place)."""
    return any(entry.get("control") is not None
               for conds in model_wrap.conds.values() for entry in conds or [])


class _Evaluator:
    """Model evaluations through the guider's processed conds, so ControlNet, patches and hooks apply."""

    def __init__(self, model_wrap: Any, extra_args: dict[str, Any], passes: Passes,
                 fractional: FractionalTimesteps | None = None) -> None:
        self.model = model_wrap.inner_model
        self.options = extra_args.get("model_options", {})
        self.fractional = fractional
        self.positive = detached(model_wrap.conds.get("positive"))
        self.negative = detached(model_wrap.conds.get("negative"))
        self.cfg = float(model_wrap.cfg)
        self.passes = passes
        self._cache: tuple[float, torch.Tensor, torch.Tensor] | None = None

    def _timestep(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if self.fractional is not None:
            self.fractional.at(sigma)
        return sigma.to(device=x.device, dtype=x.dtype).expand(x.shape[0])

    def conditional(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 at guidance 1: the source prompt alone (the pivot's denoiser)."""
        t = self._timestep(x, sigma)
        self.passes.forward += 1
        return comfy.samplers.calc_cond_batch(self.model, [self.positive], x, t, self.options)[0]

    def guided(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
               pooled: torch.Tensor | None) -> torch.Tensor:
        """x0 at the guider's cfg with ``context`` (which may require grad) as the unconditional text.

        While x carries no gradient the conditional prediction is computed once per (x, sigma) and
        reused, as the reference computes it once per step: only the unconditional pass is repeated
        and backpropagated.
        """
        t = self._timestep(x, sigma)
        negative = with_uncond(self.negative, context, pooled)
        if x.requires_grad:
            cond, uncond = comfy.samplers.calc_cond_batch(self.model, [self.positive, negative], x, t, self.options)
            self.passes.forward += 2
            self.passes.pending += 2
        else:
            cond = self._conditional_cached(x, sigma, t)
            (uncond,) = comfy.samplers.calc_cond_batch(self.model, [negative], x, t, self.options)
            self.passes.forward += 1
            self.passes.pending += int(torch.is_grad_enabled() and context.requires_grad)
        return self._combine(x, t, cond, uncond, negative)

    def _combine(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 negative: list) -> torch.Tensor:
        """CFG as ``comfy.samplers.sampling_function`` does it, model patches (pre- and post-cfg) included."""
        out = [cond, uncond]
        for fn in self.options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [self.positive, negative], "conds_out": out, "cond_scale": self.cfg, "timestep": t,
                      "input": x, "sigma": t, "model": self.model, "model_options": self.options})
        return comfy.samplers.cfg_function(self.model, out[0], out[1], self.cfg, x, t, self.options,
                                           cond=self.positive, uncond=negative)

    def _conditional_cached(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = float(sigma)
        if self._cache is not None and self._cache[0] == key and self._cache[1].shape == x.shape \
                and torch.equal(self._cache[1], x):
            return self._cache[2]
        with torch.no_grad():
            cond = comfy.samplers.calc_cond_batch(self.model, [self.positive], x, t, self.options)[0]
        self.passes.forward += 1
        self._cache = (key, x.detach().clone(), cond)
        return cond

    def npi(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 at the guider's cfg with the source prompt as the unconditional: Edit's exact layout."""
        context, pooled = context_of(self.positive, f"{NAME}: the guider's positive")
        t = self._timestep(x, sigma)
        negative = with_uncond(self.negative, context, pooled)
        cond, uncond = comfy.samplers.calc_cond_batch(self.model, [self.positive, negative], x, t, self.options)
        self.passes.forward += 2
        return self._combine(x, t, cond, uncond, negative)


class _NullTextRun(SolverSampler):
    """Single-use sampler: pivot inversion, then the chosen method, inside the guider's sampling setup."""

    def __init__(self, solver: Solver, settings: NullTextSettings, latent_is_zero: bool) -> None:
        super().__init__(solver, NAME)
        self.settings = settings
        #: the solver whose steps follow the pivot (and that Edit runs): a coupled solver's pivot (EDICT's x,
        #: BDIA's levels) is followed with DDIM steps, since one embedding cannot steer two coupled states
        single = solver.latent_names == ("x",) or settings.method == "npi"
        self.step_solver: Solver = solver if single else DDIM(state_dtype=solver.state_dtype_name)
        self.latent_is_zero = latent_is_zero
        self.passes = Passes()
        self.log = StepLog()
        self.latents: dict[str, torch.Tensor] | None = None
        self.extras: dict[str, torch.Tensor] = {}

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        if self.latent_is_zero:  # the guider skips process_latent_in for an all-zero latent
            latent_image = model_wrap.inner_model.process_latent_in(latent_image)
        _check_text_context(model_wrap, self.settings.method)
        sampling = model_wrap.inner_model.model_sampling
        schedule = schedule_for_sampling(sampling, NAME)
        grid = check_sigmas(sigmas, schedule)
        # the run's own model_options (ComfyUI copies them per run) carry the fractional-timestep wrapper
        fractional = FractionalTimesteps.install(sampling, sigmas, extra_args.setdefault("model_options", {}))
        ev = _Evaluator(model_wrap, extra_args, self.passes, fractional)
        if self.settings.method == "npi":
            # exact solvers invert through Edit's own batched layout (source as negative) to stay bit-exact;
            # the others need only the source prompt's pass, as the paper counts it
            self.latents = self.solver.invert(ev.npi if self.solver.exact else ev.conditional, latent_image,
                                              grid, schedule)
            context, pooled = context_of(ev.positive, f"{NAME}: the guider's positive")
            self._store(context.unsqueeze(0), pooled)
        else:
            _, pivot = trajectory(self.solver, ev.conditional, latent_image, grid, schedule)
            control = _carries_control(model_wrap)
            if not control:  # a ControlNet adds to the UNet's skips in place: a kept layer input would change
                layer_recompute.install(extra_args["model_options"])
            with gradients_through_frozen_weights(copy_saved=control), \
                    refused_without_gradients(model_wrap):
                pivot = [p.clone() for p in pivot]  # normal tensors: inference ones cannot enter autograd
                self._optimise(ev, pivot, grid.clone(), schedule, model_wrap, callback)
        assert self.latents is not None
        return self.latents["x"].to(torch.float32)

    def _store(self, context: torch.Tensor, pooled: torch.Tensor | None) -> None:
        self.extras[UNCOND_CONTEXT] = context.detach().to("cpu", torch.float32).contiguous()
        if pooled is not None:
            self.extras[UNCOND_POOLED] = pooled.detach().to("cpu", torch.float32).contiguous()

    def _optimise(self, ev: _Evaluator, pivot: list[torch.Tensor], grid: torch.Tensor, schedule: Schedule,
                  model_wrap: Any, callback: Any) -> None:
        """NTI / bias correction along the pivot, step by step (noisiest first)."""
        s = self.settings
        n = len(grid) - 1
        null0, pooled = context_of(ev.negative, f"{NAME}: the guider's negative")
        batch = pivot[0].shape[0]
        null = comfy.utils.repeat_to_batch_size(null0.detach(), batch).to(torch.float32).clone()
        x = pivot[0].detach().clone()

        def one_step(z: torch.Tensor, null: torch.Tensor, i: int) -> torch.Tensor:
            """The solver's own sampling step i at the guider's cfg with ``null`` as the unconditional."""
            return self.step_solver.sample(lambda y, sg: ev.guided(y, sg, null, pooled), {"x": z}, grid[i:i + 2],
                                           schedule)

        noise_bias: torch.Tensor | None = None
        if s.method == "bias_correction":
            noise_bias = best_start(s, one_step, x, null, pivot[1], grid, schedule)
        fp16 = _compute_dtype(model_wrap.inner_model) == torch.float16
        step_cb = make_step_callback(callback)

        nulls = []
        for i in range(n):
            params = [null.requires_grad_(True)]
            if i == 0 and noise_bias is not None:
                params.append(noise_bias.requires_grad_(True))
            fit_step(s, one_step, params, x, null, noise_bias if i == 0 else None, pivot[i + 1], grid, schedule, i,
                     fp16, self.log, self.passes)
            null = null.detach()
            if i == 0 and noise_bias is not None:
                x = (x + noise_bias.detach()).detach()
                self.latents = {"x": x.clone()}
            nulls.append(null.clone())
            with torch.no_grad():
                x = one_step(x, null, i).detach()
            if step_cb is not None:
                step_cb(i, n, x, None)
        if self.latents is None:
            self.latents = {"x": pivot[0].detach().clone()}
        self._store(torch.stack(nulls), pooled)


def _compute_dtype(model: Any) -> torch.dtype:
    return getattr(model, "manual_cast_dtype", None) or model.get_dtype()


def check_settings(settings: NullTextSettings) -> None:
    """Clear errors for inputs the widgets' ranges do not already rule out (NaN among them)."""
    try:
        settings.validate()
    except ValueError as err:
        raise ValueError(f"{NAME}: {err}") from err


def _check_guider(guider: Any, settings: NullTextSettings) -> None:
    guider_model(guider, NAME)
    conds = getattr(guider, "original_conds", None)
    if not isinstance(conds, dict) or "negative" not in conds or "positive" not in conds or not hasattr(guider, "cfg"):
        raise ValueError(f"{NAME}: input 'guider' must be a CFGGuider (source prompt as positive, the empty prompt "
                         "as negative, and the cfg you will edit at)")
    if settings.method != "npi" and math.isclose(float(guider.cfg), 1.0):
        raise ValueError(f"{NAME}: input 'guider' has cfg 1, where null-text optimisation has nothing to correct; "
                         "set the cfg you will edit at (e.g. 7.5)")


def check_static_weights(model_patcher: Any, settings: NullTextSettings) -> None:
    """Refuse gradients through a model loaded by ComfyUI's dynamic VRAM (``ModelPatcherDynamic``, 0.28's default
    on NVIDIA GPUs).

    Its layers do not compute with their module parameters but with copies streamed to the GPU per call (cast
    in inference mode, kept in a reused buffer that the next layer overwrites while a backward pass still needs
it), so gradients through them are not safe; read in
    ComfyUI 0.28.2's model_patcher.py and ops.py, not yet run on a GPU. NPI needs no gradients and works.
    """
    is_dynamic = getattr(model_patcher, "is_dynamic", None)
    if settings.method != "npi" and callable(is_dynamic) and is_dynamic():
        raise ValueError(f"{NAME}: input 'method' ({settings.method}) needs gradients through the model, which "
                         "ComfyUI's dynamic VRAM loading (the default on NVIDIA GPUs) does not give; start ComfyUI "
                         "with --disable-dynamic-vram, or use method 'npi' (no optimisation)")


def check_guidance_distilled(model: Any) -> None:
    """Refuse a guidance-distilled model, told by its config: a guidance embedding (Flux dev and Fill,
    Flux.2 dev, HunyuanImage 2.1 distilled) makes the guidance scale an input of the model, which was trained
    without the unconditional prediction that these methods optimise (NTI) or replace (NPI)."""
    config = getattr(getattr(model, "model_config", None), "unet_config", None) or {}
    if config.get("guidance_embed"):
        raise ValueError(f"{NAME}: the model ({model_name(model)}) is guidance-distilled: its config has a guidance "
                         "embedding, so the guidance scale is an input of the model and there is no unconditional "
                         "prediction for null-text inversion or NPI to work on. Use Invert (cfg 1, the guidance "
                         "set with FluxGuidance) with an exact solver instead")


#: processed inputs that carry the negative prompt's length (text masks; the token count OmniGen2 and Boogu
#: build their positions from): NPI cannot put the source prompt's context, of another length, beside them
TEXT_LENGTH_INPUTS = ("attention_mask", "text_embedding_mask")
#: model classes (comfy.model_base) that use ``num_tokens``; Lumina 2 / Z-Image receive it and ignore it
USES_NUM_TOKENS = ("Omnigen2", "Boogu")


def _check_text_context(model_wrap: Any, method: str) -> None:
    """Refuse a model whose prompt does not reach it as what the per-step embeddings replace: the
    cross-attention context (c_crossattn; Stable Cascade's stage C takes ``clip_text``) and a float pooled
    vector ``y`` (the X4 upscaler's ``y`` is its noise level); and NPI where the negative's length is an input."""
    family = model_name(model_wrap.inner_model)
    negative = model_wrap.conds.get("negative") or []
    positive = model_wrap.conds.get("positive") or []
    if negative and all("c_crossattn" not in entry["model_conds"] for entry in negative):
        keys = sorted({k for entry in negative for k in entry["model_conds"]})
        raise ValueError(f"{NAME}: the model ({family}) takes its prompt as {', '.join(keys) or 'no input'}, not as "
                         "the cross-attention context (c_crossattn) that null-text inversion and NPI replace. Use "
                         "Invert with an exact solver instead")
    y = negative[0]["model_conds"].get("y") if negative else None
    if y is not None and isinstance(y.cond, torch.Tensor) and not y.cond.is_floating_point():
        raise ValueError(f"{NAME}: the model ({family}) takes an integer class input 'y' (for the X4 upscaler, its "
                         "noise level) where null-text inversion keeps the pooled text vector that goes with each "
                         "embedding. Use Invert with an exact solver instead")
    if method != "npi" or not negative or not positive:
        return
    lengths = {entry["model_conds"]["c_crossattn"].cond.shape[1] for entry in negative + positive
               if "c_crossattn" in entry["model_conds"]}
    length_inputs = TEXT_LENGTH_INPUTS + (("num_tokens",) if type(model_wrap.inner_model).__name__ in USES_NUM_TOKENS
                                          else ())
    bound = sorted({k for entry in negative for k in entry["model_conds"] if k in length_inputs})
    if len(lengths) > 1 and bound:
        raise ValueError(f"{NAME}: method 'npi' puts the source prompt's context in place of the negative's, but "
                         f"they differ in length ({' and '.join(map(str, sorted(lengths)))} tokens) and this model "
                         f"({family}) also takes the negative's length ({', '.join(bound)}), which NPI cannot "
                         "change. Use method 'nti', or prompts that encode to the same length")


@contextlib.contextmanager
def refused_without_gradients(model_wrap: Any) -> Iterator[None]:
    """Turn the two ways a model's forward pass can be closed to gradients into a clear refusal: ComfyUI's
    fused kernels without a backward pass (0.28's comfy_kitchen RoPE, used outside training) and activations
    the model changes in place after autograd saved them."""
    try:
        yield
    except RuntimeError as err:
        family = model_name(model_wrap.inner_model)
        if "no autograd formula" in str(err):
            why = "runs ComfyUI kernels that have no backward pass (comfy_kitchen, outside training)"
        elif "modified by an inplace operation" in str(err):
            why = "changes activations in place that the backward pass needs"
        else:
            raise
        raise ValueError(f"{NAME}: the model ({family}) {why}, so gradients cannot reach the unconditional "
                         "embedding and methods 'nti' and 'bias_correction' cannot run on it; use method 'npi', "
                         "which needs no gradients") from err


def null_text_invert(guider: Any, sampler: Any, sigmas: torch.Tensor, latent: dict,
                     settings: NullTextSettings) -> tuple[InversionState, torch.Tensor]:
    """The node's work: an INVERSION with per-step unconditional embeddings, and z_T in LATENT space."""
    check_settings(settings)
    _check_guider(guider, settings)
    check_guidance_distilled(guider.model_patcher.model)
    check_static_weights(guider.model_patcher, settings)
    inputs = checked_inputs(guider, sampler, sigmas, latent, NAME)
    run = _NullTextRun(inputs.solver, settings, latent_is_zero=bool(torch.count_nonzero(inputs.samples) == 0))
    z_top = _sample_through(guider, run, torch.zeros_like(inputs.samples), inputs.samples, inputs.grid)
    assert run.latents is not None, "the guider did not call the sampler"
    state = InversionState(solver=run.step_solver.name, params=run.step_solver.params(),
                           schedule=inputs.schedule.kind, sigmas=inputs.grid,
                           latents={k: v.detach().to("cpu") for k, v in run.latents.items()},
                           extras=dict(run.extras))
    record_provenance(state, inputs, guider, z_top)
    state.meta[META] = {**asdict(settings), "cfg": float(guider.cfg), "pivot_solver": inputs.solver.name,
                        "forward_passes": run.passes.forward, "backward_passes": run.passes.backward,
                        "iterations": run.log.iterations, "first_losses": run.log.first_losses,
                        "final_losses": run.log.losses, "skipped_updates": run.log.skipped}
    if run.log.skipped:
        logging.warning("%s: %d optimiser updates were skipped for non-finite fp16 gradients", NAME, run.log.skipped)
    return state, z_top


def summary(state: InversionState) -> str:
    """One line for the node's UI text."""
    info = state.meta.get(META, {})
    line = f"{info.get('method')} at cfg {info.get('cfg', 0):g}: {info.get('forward_passes')} forward, " \
           f"{info.get('backward_passes')} backward passes"
    its = info.get("iterations") or []
    if its:
        line += f"; {sum(its)} inner iterations ({min(its)}-{max(its)} per step)"
    return line


class NullTextInversion(io.ComfyNode):
    """Inverts an image so that an edit at high cfg starts from a faithful reconstruction."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("NullTextInversion"),
            display_name=NAME,
            category=CATEGORY,
            description="Inversion for editing at high cfg. 'nti' learns one unconditional embedding per step "
                        "(null-text inversion), 'bias_correction' also a noise offset, 'npi' uses the source prompt "
                        "as the unconditional (no optimisation). Edit from Inversion applies the result to the "
                        "negative of any guider you give it.",
            inputs=[
                io.Guider.Input("guider", tooltip="A CFGGuider: the source prompt (positive), the empty prompt "
                                                  "(negative) and the cfg you will edit at (e.g. 7.5)."),
                io.Sampler.Input("sampler", tooltip="The solver of the pivot inversion and of the edit: DDIM "
                                                    "(inversion label 'next', as the paper), EES or AIDI. EDICT and "
                                                    "BDIA give the pivot and DDIM follows it (with 'npi' they edit "
                                                    "as themselves, exactly)."),
                io.Sigmas.Input("sigmas", tooltip="The noise-level grid (noisy -> clean), as a scheduler outputs it."),
                io.Latent.Input("latent", tooltip="The encoded image to invert."),
                io.Combo.Input("method", options=list(METHODS), default="nti",
                               tooltip="nti: null-text optimisation; npi: negative-prompt inversion (free); "
                                       "bias_correction: nti plus a learnable noise offset with multiple starts."),
                io.Int.Input("inner_steps", default=10, min=1, max=100,
                             tooltip="Adam iterations per step at most (paper: 10)."),
                io.Float.Input("learning_rate", default=1e-2, min=1e-5, max=1.0, step=1e-3,
                               tooltip="Adam's learning rate at the first step; it falls linearly to half at the "
                                       "last (paper: 0.01)."),
                io.Float.Input("early_stop", default=1e-5, min=0.0, max=1.0, step=1e-6,
                               tooltip="Stop a step's iterations once its loss (mean squared error of the step's "
                                       "result against the pivot) is below this threshold; see early_stop_schedule. "
                                       "0: always run inner_steps."),
                io.Combo.Input("early_stop_schedule", options=list(EARLY_STOP_SCHEDULES), default="growing",
                               tooltip="growing: the paper's, the threshold grows to 100x early_stop at the last "
                                       "step; tightening: it shrinks to early_stop at the last step, where the "
                                       "loss is the reconstruction's own error (better for pixel-space models)."),
                io.Int.Input("starts", default=20, min=1, max=1000,
                             tooltip="bias_correction: random starts of the noise offset (the zero offset is one)."),
                io.Int.Input("hops", default=0, min=0, max=100,
                             tooltip="bias_correction: random moves per start, kept when they lower the loss."),
                io.Float.Input("start_scale", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="bias_correction: size of the starts and hops, relative to z_T's std."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="bias_correction: seed of the starts."),
            ],
            outputs=[
                Inversion.Output("inversion", display_name="INVERSION",
                                 tooltip="Feed it to Edit from Inversion with a CFGGuider at the same "
                                                      "cfg and your target prompt."),
                io.Latent.Output("noise_latent", display_name="noise latent",
                                 tooltip="The inverted latent z_T, for previews."),
            ],
        )

    @classmethod
    def execute(cls, guider: Any, sampler: Any, sigmas: torch.Tensor, latent: dict, **options: Any) -> io.NodeOutput:
        """``options`` are the schema's widgets by name: the fields of NullTextSettings, which checks them."""
        settings = NullTextSettings(**options)
        state, z_top = null_text_invert(guider, sampler, sigmas, latent, settings)
        text = [state.describe(), summary(state), *state.meta.get("warnings", [])]
        return io.NodeOutput(state, {"samples": z_top}, ui={"text": text, "warnings": state.meta.get("warnings", [])})


NODES = [NullTextInversion]

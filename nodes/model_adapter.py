"""Runs our pure-torch solvers inside ComfyUI's sampling path.

Everything that reaches the model goes through the user's GUIDER (``guider.sample``), so CFG,
conditioning masks, ControlNet and model patches apply exactly as in a stock sampler. We hand the
guider a ``comfy.samplers.Sampler`` of our own: it receives the prepared model (``model_wrap``)
and the latent after ``process_latent_in``, and runs the solver on a denoiser built from them.

Unlike the stock ``KSAMPLER`` it skips ``noise_scaling``/``inverse_noise_scaling`` when inverting
or editing: the inverted state is already at the top noise level, and flow models'
``inverse_noise_scaling`` divides by ``1 - sigma`` (infinite at sigma = 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..solvers import InversionState, Schedule, Solver, StepHook
from ..solvers.precision import choose_state_dtype
from .uncond import PerStepNegatives, UncondSchedule

PreviewCallback = Callable[[int, torch.Tensor, torch.Tensor, int], None]
#: ``hook(model_options, base_model)``: adds patches or wrappers to one run's own model_options
OptionsHook = Callable[[dict, Any], None]


#: ComfyUI's prediction types the solvers model exactly, matched by class, never by subclass: a subclass
#: predicts something else (EDM and X0 subclass EPS; IMG_TO_IMG_FLOW, an image-to-image model, subclasses CONST)
EXACT_PREDICTIONS = {"EPS": "vp", "V_PREDICTION": "vp", "CONST": "flow"}
SUPPORTED = ("eps- and v-prediction models (SD1.x, SD2.x, SDXL style) and flow models with unit noise scale "
             "(SD3, Flux and the other rectified-flow DiTs)")


def prediction_type(sampling: Any) -> type | None:
    """The most derived prediction class of ``sampling`` (EPS, V_PREDICTION, CONST, IMG_TO_IMG_FLOW, ...).

    ComfyUI composes a sampling object from a sigma schedule (``ModelSamplingDiscrete``, an ``nn.Module``)
    and a prediction class; the first class of the MRO that is no module and computes x0
    (``calculate_denoised``) is the prediction in force, with whatever it overrides.
    """
    for cls in type(sampling).__mro__:
        if not issubclass(cls, torch.nn.Module) and hasattr(cls, "calculate_denoised"):
            return cls
    return None


def model_name(model: Any) -> str:
    """The model family as ComfyUI names it (its supported-models config class, e.g. 'SDXL', 'Flux')."""
    config = getattr(model, "model_config", None)
    return type(config).__name__ if config is not None else type(model).__name__


def schedule_for_sampling(sampling: Any, node: str, model: Any = None) -> Schedule:
    """The solver schedule for a ComfyUI ``model_sampling`` object (eps/v -> vp, CONST -> flow), or a clear refusal.

    Only the prediction types whose coordinates the solvers model exactly pass: x = x0 + sigma*eps with
    sigma_data 1 (eps, v) and x = (1 - sigma)*x0 + sigma*eps (flow, noise_scale 1). Anything else would be
    inverted in the wrong coordinates and silently give a wrong image.
    """
    pred = prediction_type(sampling)
    kind = EXACT_PREDICTIONS.get(pred.__name__) if pred is not None and pred.__module__ == "comfy.model_sampling" \
        else None
    detail = ""
    if kind == "vp" and float(getattr(sampling, "sigma_data", 1.0)) != 1.0:
        kind, detail = None, f" with sigma_data {float(sampling.sigma_data):g}"
    if kind == "flow" and float(getattr(sampling, "noise_scale", 1.0)) != 1.0:
        kind, detail = None, f" with noise_scale {float(sampling.noise_scale):g}"
    if kind is None:
        what = pred.__name__ if pred is not None else type(sampling).__name__
        name = f"the model ({model_name(model)})" if model is not None else "the model"
        raise ValueError(f"{node}: {name} uses the sampling type {what}{detail}, which exact inversion does not "
                         f"model; supported are {SUPPORTED}. Use such a model, or remove the node that changed "
                         "its sampling")
    return Schedule(kind)


def schedule_for(model_patcher: Any, node: str) -> Schedule:
    """The solver schedule for a MODEL (a ComfyUI ModelPatcher)."""
    return schedule_for_sampling(model_patcher.get_model_object("model_sampling"), node, model_patcher.model)


def fractional_timestep(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Continuous inverse of ModelSamplingDiscrete.sigma(t), which interpolates log-sigma linearly in t."""
    table = log_sigmas.to(torch.float64)
    ls = sigma.to(device=table.device, dtype=torch.float64).log().clamp(table[0], table[-1]).flatten()
    idx = torch.searchsorted(table, ls).clamp(1, len(table) - 1)
    lo, hi = table[idx - 1], table[idx]
    t = (idx - 1).to(torch.float64) + (ls - lo) / (hi - lo)
    return t.view(sigma.shape).to(sigma.device)


class FractionalTimesteps:
    """Give a discrete model the fractional timestep of sigmas between grid levels (EES stages).

    ComfyUI's ``ModelSamplingDiscrete.timestep`` rounds to the nearest integer, so a stage evaluated
    between grid levels would silently see a grid level's timestep. This DIFFUSION_MODEL wrapper, added to
    the run's own model_options (ComfyUI copies them for every run), replaces the rounded timestep of an
    off-grid evaluation with the continuous inverse of ``sigma(t)``. Levels on the grid keep ComfyUI's own
    (rounded) timestep, so our solvers evaluate the model exactly as stock samplers do there. Continuous
    samplings (flow) need nothing. The denoiser tells it the sigma of each evaluation (``at``).
    """

    KEY = "exact_inversion_fractional_timesteps"

    def __init__(self, log_sigmas: torch.Tensor, grid: torch.Tensor) -> None:
        self.log_sigmas = log_sigmas
        self.levels = grid.detach().to("cpu", torch.float64).flatten()
        self.sigma: float | None = None
        #: evaluations that needed a fractional timestep, and how many the model's wrapper chain delivered
        self.needed = 0
        self.delivered = 0

    @classmethod
    def install(cls, sampling: Any, grid: torch.Tensor, model_options: dict[str, Any]) -> FractionalTimesteps | None:
        """Add the wrapper to a run's model_options for a discrete sampling; None for continuous ones."""
        log_sigmas = getattr(sampling, "log_sigmas", None)
        if log_sigmas is None or isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
            return None
        wrapper = cls(log_sigmas, grid)
        comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, cls.KEY,
                                                     wrapper, model_options, is_model_options=True)
        return wrapper

    def at(self, sigma: torch.Tensor) -> None:
        """The sigma of the next evaluation (a grid level or a stage in between)."""
        s = float(sigma.detach().flatten()[0])
        self.sigma = None if bool(((self.levels - s).abs() <= 1e-6 * self.levels).any()) else s
        self.needed += self.sigma is not None

    def __call__(self, executor: Any, x: torch.Tensor, timesteps: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.sigma is not None:
            frac = fractional_timestep(self.log_sigmas, torch.tensor([self.sigma], dtype=torch.float64))
            timesteps = torch.full_like(timesteps, float(frac[0]))
            self.delivered += 1
        return executor(x, timesteps, *args, **kwargs)

    def report(self, node: str) -> None:
        """Log when the model family ignores DIFFUSION_MODEL wrappers: its stages then saw rounded timesteps."""
        if self.needed and not self.delivered:
            logging.warning("%s: this model does not run ComfyUI's DIFFUSION_MODEL wrappers, so stages between grid "
                            "levels were given the nearest integer timestep (slightly less accurate)", node)


def make_denoiser(model_k: Any, extra_args: dict[str, Any], fractional: FractionalTimesteps | None = None
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ComfyUI's prepared model as ``denoise(x, sigma) -> x0_hat`` for a solver.

    The state keeps its own dtype (float64 by default): ComfyUI casts the network input to the
    model's dtype and computes the denoised estimate from our full-precision x, so the solver sees
    the network output without extra rounding. Interruption is checked before every evaluation.
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if fractional is not None:
            fractional.at(sigma)
        sigmas = sigma.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        return model_k(x, sigmas, **extra_args)

    return denoise


def make_step_callback(preview: PreviewCallback | None) -> Callable[..., None] | None:
    """Adapt ComfyUI's preview/progress callback to the solvers' per-step callback."""
    if preview is None:
        return None

    def on_step(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor | None) -> None:
        shown = denoised if denoised is not None else x
        preview(step, shown.float(), x.float(), total)

    return on_step


class SolverSampler(comfy.samplers.Sampler):
    """A SAMPLER running one of our solvers; as such it generates from noise (SamplerCustomAdvanced)."""

    def __init__(self, solver: Solver, node: str = "sampler", state_dtype: str | None = None) -> None:
        self.solver = solver
        self.node = node
        #: the node's state_dtype choice ("auto", "float64" or "float32"); the solver holds a concrete one
        self.state_dtype = state_dtype or solver.state_dtype_name

    def solver_on(self, device: torch.device) -> tuple[Solver, str | None]:
        """The solver with the state dtype for ``device`` (``solvers.precision``), and a note for the report
        when the device forced float32; an explicit float64 the device lacks is refused naming this node."""
        try:
            name, note = choose_state_dtype(self.state_dtype, device)
        except ValueError as err:
            raise ValueError(f"{self.node}: input 'state_dtype' {err}") from err
        return self.solver.with_state_dtype(name), note

    def _denoiser_and_schedule(self, model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask):
        """The solver's denoiser through the guider (``model_wrap``; its inner_model is the prepared BaseModel),
        its schedule, and the run's fractional timesteps (``None`` where none are needed).

        ``extra_args["model_options"]`` is the copy ComfyUI made for this run: the fractional-timestep
        wrapper goes there, so nothing outside the run sees it. Nothing is kept on ``self``: ComfyUI caches a
        solver node's SAMPLER and shares it between runs.
        """
        args = {**extra_args, "denoise_mask": denoise_mask}
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        sampling = model_wrap.inner_model.model_sampling
        schedule = schedule_for_sampling(sampling, self.node, model_wrap.inner_model)
        fractional = FractionalTimesteps.install(sampling, sigmas, extra_args.setdefault("model_options", {}))
        return make_denoiser(model_k, args, fractional), schedule, fractional

    def _done(self, fractional: FractionalTimesteps | None) -> None:
        if fractional is not None:
            fractional.report(self.node)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        """Plain generation, like a stock KSAMPLER (noise scaling in, inverse noise scaling out)."""
        sampling = model_wrap.inner_model.model_sampling
        denoise, schedule, fractional = self._denoiser_and_schedule(model_wrap, sigmas, extra_args, noise,
                                                                    latent_image, denoise_mask)
        x = sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        solver, note = self.solver_on(noise.device)
        if note is not None:  # plain generation has no report: the log says it
            logging.warning("%s: %s", self.node, note)
        out = solver.sample(denoise, {"x": x}, sigmas, schedule, make_step_callback(callback))
        self._done(fractional)
        return sampling.inverse_noise_scaling(sigmas[-1], out.to(noise.dtype))


class _InvertRun(SolverSampler):
    """Single-use sampler for Invert: runs ``solver.invert`` on the latent the guider prepared."""

    def __init__(self, solver: Solver, node: str, latent_is_zero: bool) -> None:
        super().__init__(solver, node)
        self.latent_is_zero = latent_is_zero
        self.latents: dict[str, torch.Tensor] | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        if self.latent_is_zero:  # the guider skips process_latent_in for an all-zero latent
            latent_image = model_wrap.inner_model.process_latent_in(latent_image)
        denoise, schedule, fractional = self._denoiser_and_schedule(model_wrap, sigmas, extra_args, noise,
                                                                    latent_image, denoise_mask)
        solver, _ = self.solver_on(noise.device)
        self.latents = solver.invert(denoise, latent_image, sigmas, schedule, make_step_callback(callback))
        self._done(fractional)
        return self.latents["x"].to(torch.float32)


class EditRun(SolverSampler):
    """Single-use sampler for Edit: runs ``solver.sample`` from an inverted state.

    A guider that runs branches side by side (blended guidance) widens the latents and adds a step hook
    through ``prepare`` (see ``solvers.base.StepHook``). ``uncond`` (null-text inversion and its relatives)
    replaces the guider's negative conditioning step by step (``uncond.PerStepNegatives``).
    """

    def __init__(self, solver: Solver, node: str, latents: dict[str, torch.Tensor],
                 uncond: UncondSchedule | None = None, options_hook: OptionsHook | None = None) -> None:
        super().__init__(solver, node)
        self.latents = latents
        self.uncond = uncond
        self.options_hook = options_hook
        self.step_hook: StepHook | None = None

    def prepare(self, widen: Callable[[torch.Tensor], torch.Tensor], hook: StepHook) -> None:
        """The explicit entry for a branching guider: how each latent is widened, and the hook after each step."""
        self.latents = {k: widen(v) for k, v in self.latents.items()}
        self.step_hook = hook

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        if self.options_hook is not None:  # patches for this run only, in the model_options ComfyUI copied for it
            self.options_hook(extra_args.setdefault("model_options", {}), model_wrap.inner_model)
        denoise, schedule, fractional = self._denoiser_and_schedule(model_wrap, sigmas, extra_args, noise,
                                                                    latent_image, denoise_mask)
        latents = {k: v.to(noise.device) for k, v in self.latents.items()}
        if self.uncond is not None:
            negative = model_wrap.conds.get("negative")
            if negative is None:
                raise ValueError(f"{self.node}: input 'inversion' carries per-step unconditional embeddings (null-text "
                                 "inversion), which replace a guider's negative prompt; connect a CFGGuider")
            PerStepNegatives(self.uncond, negative, noise.device).install(extra_args["model_options"])
        solver, _ = self.solver_on(noise.device)
        out = solver.sample(denoise, latents, sigmas, schedule, make_step_callback(callback), hook=self.step_hook)
        self._done(fractional)
        return out.to(torch.float32)


def _sample_through(guider: Any, run: SolverSampler, noise: torch.Tensor, latent: torch.Tensor,
                    sigmas: torch.Tensor) -> torch.Tensor:
    preview = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1)
    return guider.sample(noise, latent, run, sigmas, callback=preview,
                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)


def run_inversion(guider: Any, solver: Solver, latent: torch.Tensor, sigmas: torch.Tensor,
                  node: str) -> tuple[InversionState, torch.Tensor]:
    """Invert a LATENT-space tensor through ``guider`` on ``sigmas`` (float64 grid).

    Returns the state (its latents in sampler space, after ``process_latent_in``) and z_T in
    LATENT space for previews.
    """
    schedule = schedule_for(guider.model_patcher, node)
    run = _InvertRun(solver, node, latent_is_zero=bool(torch.count_nonzero(latent) == 0))
    z_top = _sample_through(guider, run, torch.zeros_like(latent), latent, sigmas)
    assert run.latents is not None, "the guider did not call the sampler"
    state = InversionState(
        solver=solver.name,
        params=solver.params(),
        schedule=schedule.kind,
        sigmas=sigmas,
        latents={k: v.detach().to("cpu") for k, v in run.latents.items()},
    )
    return state, z_top


def model_device(model_patcher: Any) -> torch.device:
    """Where a ModelPatcher runs its model (ComfyUI's torch device when it does not say)."""
    device = getattr(model_patcher, "load_device", None)
    return torch.device(device) if device is not None else comfy.model_management.get_torch_device()


def solver_for_edit(solver: Solver, model_patcher: Any, node: str) -> tuple[Solver, list[str]]:
    """The stored inversion's solver on the edit's device: a float64 state the device lacks runs in float32
    (the inversion came from another machine), and the returned warning says what that costs."""
    stored = solver.state_dtype_name
    name, note = choose_state_dtype("auto" if stored == "float64" else stored, model_device(model_patcher))
    if note is None:
        return solver, []
    warning = f"input 'inversion' holds a float64 state; here {note}"
    logging.warning("%s: %s", node, warning)
    return solver.with_state_dtype(name), [warning]


def run_edit(guider: Any, solver: Solver, state: InversionState, node: str,
             options_hook: OptionsHook | None = None) -> torch.Tensor:
    """Run an inverted state back down its own grid through ``guider``; returns a LATENT-space tensor.

    Per-step unconditional embeddings stored in the state (null-text inversion, NPI) replace the
    guider's negative conditioning. ``options_hook`` patches this run's model_options (Attention Mask's
    recording), so the guider and its model are used as they are.
    """
    zeros = torch.zeros(state.shape, dtype=torch.float32)
    try:
        uncond = UncondSchedule.from_extras(state.extras, state.sigmas)
    except ValueError as err:
        raise ValueError(f"{node}: input 'inversion' is damaged: its {err}") from err
    run = EditRun(solver, node, state.latents, uncond, options_hook)
    return _sample_through(guider, run, zeros, zeros, state.sigmas)

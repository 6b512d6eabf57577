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

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..solvers import InversionState, Schedule, Solver, StepHook
from .uncond import UncondSchedule, step_index

PreviewCallback = Callable[[int, torch.Tensor, torch.Tensor, int], None]


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


@contextlib.contextmanager
def fractional_timesteps(sampling: Any, grid: torch.Tensor) -> Iterator[None]:
    """Give a discrete model the fractional timestep of sigmas between grid levels while we run.

    ComfyUI's ``ModelSamplingDiscrete.timestep`` rounds to the nearest integer, so a stage evaluated
    between grid levels (EES) would silently see a grid level's timestep. Levels on the grid keep
    ComfyUI's own (rounded) timestep, so our solvers evaluate the model exactly as stock samplers do
    there. The method is shadowed on the instance for the run and restored after; continuous
    samplings (flow) are untouched.
    """
    log_sigmas = getattr(sampling, "log_sigmas", None)
    if log_sigmas is None or isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        yield
        return
    levels = grid.detach().to(torch.float64).flatten()
    stock = type(sampling).timestep

    def timestep(sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.detach().to(device=levels.device, dtype=torch.float64).flatten()
        on_grid = ((s[:, None] - levels[None, :]).abs() <= 1e-6 * levels[None, :]).any(dim=1)
        if bool(on_grid.all()):
            return stock(sampling, sigma)
        frac = fractional_timestep(sampling.log_sigmas, sigma).flatten()
        rounded = stock(sampling, sigma).flatten().to(frac.dtype)
        return torch.where(on_grid.to(frac.device), rounded, frac).view(sigma.shape)

    had_own = "timestep" in vars(sampling)
    previous = vars(sampling).get("timestep")
    sampling.timestep = timestep
    try:
        yield
    finally:
        if had_own:
            sampling.timestep = previous
        else:
            del sampling.timestep


def make_denoiser(model_k: Any, extra_args: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ComfyUI's prepared model as ``denoise(x, sigma) -> x0_hat`` for a solver.

    The state keeps its own dtype (float64 by default): ComfyUI casts the network input to the
    model's dtype and computes the denoised estimate from our full-precision x, so the solver sees
    the network output without extra rounding. Interruption is checked before every evaluation.
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
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

    def __init__(self, solver: Solver, node: str = "sampler") -> None:
        self.solver = solver
        self.node = node

    def _denoiser_and_schedule(self, model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask):
        # model_wrap is the guider; its inner_model is the prepared comfy BaseModel.
        args = {**extra_args, "denoise_mask": denoise_mask}
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        schedule = schedule_for_sampling(model_wrap.inner_model.model_sampling, self.node, model_wrap.inner_model)
        return make_denoiser(model_k, args), schedule

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        """Plain generation, like a stock KSAMPLER (noise scaling in, inverse noise scaling out)."""
        sampling = model_wrap.inner_model.model_sampling
        denoise, schedule = self._denoiser_and_schedule(model_wrap, sigmas, extra_args, noise, latent_image,
                                                        denoise_mask)
        x = sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        with fractional_timesteps(sampling, sigmas):
            out = self.solver.sample(denoise, {"x": x}, sigmas, schedule, make_step_callback(callback))
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
        denoise, schedule = self._denoiser_and_schedule(model_wrap, sigmas, extra_args, noise, latent_image,
                                                        denoise_mask)
        with fractional_timesteps(model_wrap.inner_model.model_sampling, sigmas):
            self.latents = self.solver.invert(denoise, latent_image, sigmas, schedule, make_step_callback(callback))
        return self.latents["x"].to(torch.float32)


class EditRun(SolverSampler):
    """Single-use sampler for Edit: runs ``solver.sample`` from an inverted state.

    A guider that runs branches side by side (blended guidance) may widen ``latents`` and set
    ``step_hook`` before sampling (see ``solvers.base.StepHook``). ``uncond`` (null-text inversion and
    its relatives) replaces the guider's negative conditioning step by step.
    """

    def __init__(self, solver: Solver, node: str, latents: dict[str, torch.Tensor],
                 uncond: UncondSchedule | None = None) -> None:
        super().__init__(solver, node)
        self.latents = latents
        self.uncond = uncond
        self.step_hook: StepHook | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        denoise, schedule = self._denoiser_and_schedule(model_wrap, sigmas, extra_args, noise, latent_image,
                                                        denoise_mask)
        latents = {k: v.to(noise.device) for k, v in self.latents.items()}
        conds = model_wrap.conds
        negative = conds.get("negative")
        if self.uncond is not None:
            if negative is None:
                raise ValueError(f"{self.node}: input 'inversion' carries per-step unconditional embeddings (null-text "
                                 "inversion), which replace a guider's negative prompt; connect a CFGGuider")
            denoise = self._per_step_uncond(denoise, conds, self.uncond.negatives(negative, noise.device))
        try:
            with fractional_timesteps(model_wrap.inner_model.model_sampling, sigmas):
                out = self.solver.sample(denoise, latents, sigmas, schedule, make_step_callback(callback),
                                         hook=self.step_hook)
        finally:
            conds["negative"] = negative
        return out.to(torch.float32)

    def _per_step_uncond(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], conds: dict,
                         per_step: list[list[dict]]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        assert self.uncond is not None
        grid = self.uncond.grid

        def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            conds["negative"] = per_step[step_index(grid, sigma)]
            return denoise(x, sigma)

        return run


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


def run_edit(guider: Any, solver: Solver, state: InversionState, node: str) -> torch.Tensor:
    """Run an inverted state back down its own grid through ``guider``; returns a LATENT-space tensor.

    Per-step unconditional embeddings stored in the state (null-text inversion, NPI) replace the
    guider's negative conditioning.
    """
    zeros = torch.zeros(state.shape, dtype=torch.float32)
    try:
        uncond = UncondSchedule.from_extras(state.extras, state.sigmas)
    except ValueError as err:
        raise ValueError(f"{node}: input 'inversion' is damaged: its {err}") from err
    run = EditRun(solver, node, state.latents, uncond)
    return _sample_through(guider, run, zeros, zeros, state.sigmas)

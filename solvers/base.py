"""The interface every solver implements, usable from plain torch (no ComfyUI import).

A solver is driven by a *denoiser* ``denoise(x, sigma) -> x0_hat``: exactly what ComfyUI's
samplers call (CFG, ControlNet and the model's prediction type are inside it). ``x`` is in
ComfyUI's coordinates at noise level ``sigma`` (see ``schedule.py``); ``sigma`` is a 0-dim float64
tensor. Sigma grids are ComfyUI's: descending, noisy -> clean, usually ending at 0. ``invert``
walks a grid from its last (cleanest) level to its first, ``sample`` from first to last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from .schedule import Schedule, check_sigmas

Denoiser = Callable[[Tensor, Tensor], Tensor]


class StepCallback(Protocol):
    """Called once per grid step with the current state and the last denoised estimate."""

    def __call__(self, step: int, total: int, x: Tensor, denoised: Tensor | None) -> None: ...


class StepHook(Protocol):
    """Called after each sampling step; returns the state to go on with (e.g. blended or re-noised).

    ``state`` holds the solver's tensors at ``sigmas[step + 1]`` (``"x"``, and EDICT's ``"y"``); BDIA
    also passes ``"x_prev"``, its state one level up. ``denoised`` is the step's last estimate (None
    where the step made no model call). Edits with a reconstruction branch use it to pull latents.
    """

    def __call__(self, step: int, state: dict[str, Tensor], denoised: Tensor | None) -> dict[str, Tensor]: ...


STATE_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


def derivative(denoise: Denoiser, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(d, x0_hat) with d = (x - x0_hat) / sigma: eps for vp models, the velocity for flow."""
    denoised = denoise(x, sigma).to(x.dtype)
    return (x - denoised) / sigma.to(x.dtype), denoised


def relabel(x: Tensor, schedule: Schedule, sigma_from: Tensor, sigma_to: Tensor) -> Tensor:
    """The same model state z seen at another noise label: what the network gets as input stays equal."""
    ratio = schedule.scale(sigma_from) / schedule.scale(sigma_to)
    return x * ratio.to(x.dtype)


class Solver(ABC):
    """Base class: holds the state dtype and the JSON-able parameters of a solver."""

    name: ClassVar[str]
    #: names of the tensors ``invert`` returns, all at the top level ``sigmas[0]`` unless noted.
    latent_names: ClassVar[tuple[str, ...]] = ("x",)
    #: True when ``sample(invert(x))`` returns x up to floating-point rounding.
    exact: ClassVar[bool] = False

    def __init__(self, state_dtype: str = "float64") -> None:
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {sorted(STATE_DTYPES)}, got {state_dtype!r}")
        self.state_dtype_name = state_dtype
        self.state_dtype = STATE_DTYPES[state_dtype]

    def params(self) -> dict[str, Any]:
        """Parameters that define the maths; stored with an inversion and checked on load."""
        return {"state_dtype": self.state_dtype_name}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Solver:
        """Rebuild a solver from ``params()`` (as stored with an inversion)."""
        return cls(**params)

    def nfe_per_step(self) -> int:
        """Denoiser evaluations per grid step (for reports; AIDI's depends on convergence)."""
        return 1

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        """Human-readable warnings for this grid; raise ValueError for settings that cannot work."""
        check_sigmas(sigmas, schedule)
        return []

    def _prepare(self, x: Tensor, sigmas: Tensor, schedule: Schedule) -> tuple[Tensor, Tensor]:
        s = check_sigmas(sigmas, schedule)
        if not torch.isfinite(x).all():
            raise ValueError("latent contains NaN or infinity")
        return x.to(self.state_dtype), s

    @abstractmethod
    def invert(
        self,
        denoise: Denoiser,
        x0: Tensor,
        sigmas: Tensor,
        schedule: Schedule,
        callback: StepCallback | None = None,
    ) -> dict[str, Tensor]:
        """Run ``x0`` (at ``sigmas[-1]``) up to ``sigmas[0]``; return the named state tensors."""

    @abstractmethod
    def sample(
        self,
        denoise: Denoiser,
        latents: dict[str, Tensor],
        sigmas: Tensor,
        schedule: Schedule,
        callback: StepCallback | None = None,
        hook: StepHook | None = None,
    ) -> Tensor:
        """Run a state from ``sigmas[0]`` down to ``sigmas[-1]``.

        ``latents`` is what ``invert`` returned, or just ``{"x": noise_latent}`` for plain
        generation (solvers with a coupled state start it up themselves). ``hook`` may replace the
        state after every step (see ``StepHook``).
        """

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


#: A solver's working state between steps: its named tensors (x, EDICT's y, BDIA's pair, AIDI's warm start).
State = dict[str, Tensor]


class Latents(dict[str, Tensor]):
    """What ``invert`` returns: the named state tensors, plus ``stats``, one dict per inversion step (in walking
    order) for solvers that measure their steps (AIDI's fixed-point iterations, EES's implicit clean step).

    The statistics travel with the result, not on the solver: ComfyUI caches node outputs, so one solver
    object serves every run of a graph.
    """

    def __init__(self, tensors: dict[str, Tensor], stats: list[dict[str, Any]] | None = None) -> None:
        super().__init__(tensors)
        self.stats: list[dict[str, Any]] = stats or []

    @property
    def nfe(self) -> int:
        """Model evaluations the inversion spent, where the steps counted them."""
        return sum(int(st.get("nfe", 0)) for st in self.stats)


class Solver(ABC):
    """Base class: the state dtype, the JSON-able parameters, and the one loop every solver walks.

    ``invert`` and ``sample`` are written once, here: they check the grid and the input, walk it, call
    the hook and the callback. A solver supplies its maths as steps on its own state (a dict of tensors):
    ``invert_step`` from level ``s[i]`` up to ``s[i - 1]``, ``sample_step`` from ``s[i]`` down to ``s[i + 1]``,
    and how its state is built from and turned back into ComfyUI's tensors.
    """

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

    def with_state_dtype(self, name: str) -> Solver:
        """This solver with its state in another dtype (itself when it already is)."""
        if name == self.state_dtype_name:
            return self
        return type(self).from_params({**self.params(), "state_dtype": name})

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

    # --- the loop -------------------------------------------------------------------------------------

    def invert(
        self,
        denoise: Denoiser,
        x0: Tensor,
        sigmas: Tensor,
        schedule: Schedule,
        callback: StepCallback | None = None,
    ) -> Latents:
        """Run ``x0`` (at ``sigmas[-1]``) up to ``sigmas[0]``; return the named state tensors."""
        x, s = self._prepare(x0, sigmas, schedule)
        n = len(s) - 1
        state = self.start_inversion(x, s, schedule)
        stats: list[dict[str, Any]] = []
        for k, i in enumerate(range(n, 0, -1)):
            state, denoised, info = self.invert_step(denoise, state, s, i, schedule)
            if info is not None:
                stats.append({"step": k, **info})
            if callback is not None:
                callback(k, n, self.shown(state, s, i - 1, schedule), denoised)
        return Latents(self.inverted(state, s, schedule), stats)

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
        if "x" not in latents:
            raise ValueError(f"{self.name} latents: missing 'x'")
        x, s = self._prepare(latents["x"], sigmas, schedule)
        n = len(s) - 1
        state = self.start_sampling(x, latents, s, schedule)
        for i in range(n):
            state, denoised = self.sample_step(denoise, state, s, i, schedule)
            if hook is not None:
                given = self.hook_view(state, s, i + 1, schedule)
                state = self.from_hook(state, given, hook(i, dict(given), denoised), s, i + 1, schedule)
            if callback is not None:
                callback(i, n, self.shown(state, s, i + 1, schedule), denoised)
        return self.shown(state, s, n, schedule)

    # --- what a solver supplies (defaults: a single state tensor "x") --------------------------------

    def start_inversion(self, x: Tensor, s: Tensor, schedule: Schedule) -> State:
        """The state at the clean end ``s[-1]``, from the latent to invert."""
        return {"x": x}

    @abstractmethod
    def invert_step(self, denoise: Denoiser, state: State, s: Tensor, i: int, schedule: Schedule
                    ) -> tuple[State, Tensor, dict[str, Any] | None]:
        """One inversion step ``s[i] -> s[i - 1]``: (new state, the step's last x0 estimate, statistics or None)."""

    def inverted(self, state: State, s: Tensor, schedule: Schedule) -> dict[str, Tensor]:
        """The tensors ``invert`` returns (``latent_names``), from the state at ``s[0]``."""
        return dict(state)

    def start_sampling(self, x: Tensor, latents: dict[str, Tensor], s: Tensor, schedule: Schedule) -> State:
        """The state at ``s[0]`` from ``invert``'s tensors (``x`` already checked and in the state dtype)."""
        return {"x": x}

    @abstractmethod
    def sample_step(self, denoise: Denoiser, state: State, s: Tensor, i: int, schedule: Schedule
                    ) -> tuple[State, Tensor | None]:
        """One sampling step ``s[i] -> s[i + 1]``: (new state, its last x0 estimate or None without a model call)."""

    def shown(self, state: State, s: Tensor, i: int, schedule: Schedule) -> Tensor:
        """The latent at level ``s[i]`` in ComfyUI's coordinates: what callbacks see and ``sample`` returns."""
        return state["x"]

    def hook_view(self, state: State, s: Tensor, i: int, schedule: Schedule) -> dict[str, Tensor]:
        """The state as a ``StepHook`` sees it, at ``s[i]`` (see ``StepHook`` for the keys)."""
        return dict(state)

    def from_hook(self, state: State, given: dict[str, Tensor], view: dict[str, Tensor], s: Tensor, i: int,
                  schedule: Schedule) -> State:
        """The state to go on with after the hook, given ``given``, returned ``view``."""
        return {**state, **view}

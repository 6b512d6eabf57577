"""Null-text inversion and bias correction as optimisation, on any solver step (pure torch).

Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion Models" (CVPR 2023), §3.2
and Algorithm 1: along the pivot (the inversion at guidance 1), per grid step, Adam on the unconditional text
embedding so that one sampling step at the edit's cfg from the reconstructed state lands on the pivot's next
state; warm start from the previous step, lr ``1e-2·(1 − i/2N)``, early stop below ``ε + i·2e-5``. Bias
correction (latent trajectory optimisation, "latent-TOP") adds a learnable noise bias on z_T, chosen among
random starts by the lowest first-step loss. The node (nodes/nulltext.py) supplies the step: the model through
ComfyUI's guider, as ``one_step(z, null, i) -> z_next``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the pack imports this package relatively and tests from the repo root: no import at run time
    from solvers import Schedule, Solver

METHODS = ("nti", "npi", "bias_correction")
#: how the early-stop threshold moves over the steps: the paper's grows from eps to 100·eps at the last
#: step; "tightening" runs the other way, for latents that are the image itself (see threshold_at)
EARLY_STOP_SCHEDULES = ("growing", "tightening")
#: Adam's epsilon (torch's default, as the reference code uses).
ADAM_EPS = 1e-8

#: one sampling step i at the edit's cfg from z with ``null`` as the unconditional: z at grid[i + 1]
OneStep = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"input '{name}' is {value}; give a finite number")


@dataclass
class NullTextSettings:
    """The method and its optimiser settings (the papers' defaults). ``validate`` says what is wrong, naming the
    node's input."""

    method: str = "nti"
    inner_steps: int = 10
    learning_rate: float = 1e-2
    early_stop: float = 1e-5
    early_stop_schedule: str = "growing"
    starts: int = 20
    hops: int = 0
    start_scale: float = 0.01
    seed: int = 0

    def validate(self) -> NullTextSettings:
        """Raise a ValueError naming the input and the fix for values the widgets' ranges do not rule out
        (NaN passes every range check)."""
        if self.method not in METHODS:
            raise ValueError(f"input 'method' must be one of {', '.join(METHODS)}; got {self.method!r}")
        for name in ("learning_rate", "early_stop", "start_scale"):
            _finite(name, getattr(self, name))
        if self.inner_steps < 1:
            raise ValueError("input 'inner_steps' must be at least 1")
        if self.learning_rate <= 0:
            raise ValueError("input 'learning_rate' must be positive (the paper's is 0.01)")
        if self.early_stop < 0:
            raise ValueError("input 'early_stop' must be 0 (off) or positive")
        if self.start_scale < 0:
            raise ValueError("input 'start_scale' must be 0 or positive")
        if self.starts < 1 or self.hops < 0:
            raise ValueError("inputs 'starts' (at least 1) and 'hops' (0 or more) count candidates")
        if self.early_stop_schedule not in EARLY_STOP_SCHEDULES:
            raise ValueError(f"input 'early_stop_schedule' must be one of {', '.join(EARLY_STOP_SCHEDULES)}")
        return self

    def learning_rate_at(self, step: int, steps: int) -> float:
        return self.learning_rate * (1.0 - step / (2.0 * steps))

    def threshold_at(self, step: int, steps: int) -> float:
        """The paper's ``eps + i·2e-5`` (eps = 1e-5, 50 steps) is ``eps·(1 + 100·i/N)``: loose at the last steps.

        "tightening" mirrors it (``eps·(1 + 100·(N−1−i)/N)``): the last step's loss *is* the
        reconstruction error, so the embedded model (whose latent is the image) needs it tightest there.
        """
        remaining = step if self.early_stop_schedule == "growing" else steps - 1 - step
        return self.early_stop * (1.0 + 100.0 * remaining / steps)


@dataclass
class Passes:
    """Model evaluations of one conditioning for the whole batch: a batched cond + uncond call is 2."""

    forward: int = 0
    backward: int = 0
    pending: int = 0  # passes in the graph the next backward() runs through

    def backwarded(self) -> None:
        self.backward += self.pending
        self.pending = 0


@dataclass
class StepLog:
    iterations: list[int] = field(default_factory=list)
    first_losses: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    skipped: int = 0


def trajectory(solver: Solver, denoise: Callable, x0: torch.Tensor, grid: torch.Tensor,
               schedule: Schedule) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The solver's inversion and its state at every grid level (index i: at grid[i]): the pivot."""
    n = len(grid) - 1
    levels: list[torch.Tensor | None] = [None] * (n + 1)
    levels[n] = x0.to(solver.state_dtype)

    def record(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor | None) -> None:
        levels[n - 1 - step] = x.detach()

    latents = solver.invert(denoise, x0, grid, schedule, record)
    assert all(v is not None for v in levels), "the solver did not report every inversion step"
    return latents, levels  # type: ignore[return-value]


def per_image_loss(x: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image in the model's own (vp) coordinates, as the reference measures it."""
    diff = (x - target.to(x)) * scale.to(x)
    return diff.pow(2).flatten(1).mean(1)


def fit_step(settings: NullTextSettings, one_step: OneStep, params: list[torch.Tensor], x: torch.Tensor,
             null: torch.Tensor, noise_bias: torch.Tensor | None, target: torch.Tensor, grid: torch.Tensor,
             schedule: Schedule, i: int, fp16: bool, log: StepLog, passes: Passes) -> None:
    """Adam on ``params`` (the null embedding, and at step 0 the noise bias) so that step i lands on ``target``.

    ``fp16``: the loss is scaled so fp16 gradients stay above fp16's smallest number (Adam is invariant to a
    constant gradient scale when its eps scales with it); an update with non-finite gradients is skipped.
    """
    n = len(grid) - 1
    scale = schedule.scale(grid[i + 1])
    threshold = settings.threshold_at(i, n) if settings.early_stop > 0 else -math.inf
    loss_scale: float | None = None if fp16 else 1.0
    optimiser: torch.optim.Adam | None = None
    done = 0
    for _ in range(settings.inner_steps):
        z = x if noise_bias is None else x + noise_bias
        per_image = per_image_loss(one_step(z, null, i), target, scale)
        loss = per_image.sum()
        if done == 0:
            log.first_losses.append(float(per_image.detach().max()))
        if loss_scale is None:
            loss_scale = 1.0 / max(float(loss.detach()), 1e-30)
        if optimiser is None:
            optimiser = torch.optim.Adam(params, lr=settings.learning_rate_at(i, n), eps=ADAM_EPS * loss_scale)
        optimiser.zero_grad()
        (loss * loss_scale).backward()
        passes.backwarded()
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            optimiser.step()
        else:
            log.skipped += 1
        done += 1
        if float(per_image.detach().max()) < threshold:
            break
    log.iterations.append(done)
    log.losses.append(float(per_image.detach().max()))


def best_start(settings: NullTextSettings, one_step: OneStep, x: torch.Tensor, null: torch.Tensor,
               target: torch.Tensor, grid: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Multi-start noise bias: per image, the candidate (zero among them) with the lowest first-step loss.

    Candidates are N(0, (start_scale·std(z_T))²); each may take ``hops`` random moves of the same
    size, kept when they lower the loss.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    size = settings.start_scale * float(x.detach().std())
    scale = schedule.scale(grid[1])

    def loss_of(bias: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return per_image_loss(one_step(x + bias, null, 0), target, scale)

    def draw() -> torch.Tensor:
        return (torch.randn(x.shape, generator=gen, dtype=torch.float64) * size).to(x)

    def per_image(mask: torch.Tensor) -> torch.Tensor:
        return mask.view(-1, *[1] * (x.ndim - 1))

    best = torch.zeros_like(x)
    best_loss = loss_of(best)
    for _ in range(1, max(settings.starts, 1)):
        cand = draw()
        cand_loss = loss_of(cand)
        for _ in range(settings.hops):
            hop = cand + draw()
            hop_loss = loss_of(hop)
            cand = torch.where(per_image(hop_loss < cand_loss), hop, cand)
            cand_loss = torch.minimum(hop_loss, cand_loss)
        best = torch.where(per_image(cand_loss < best_loss), cand, best)
        best_loss = torch.minimum(cand_loss, best_loss)
    return best.detach().clone()

"""Per-step unconditional embeddings: how an INVERSION stores them and how a sampling run applies them.

Null-text inversion and bias correction learn one unconditional text embedding per grid step;
negative-prompt inversion uses the source prompt's embedding for every step. Either way the result
is stored in the inversion's ``extras`` and *replaces* the guider's negative conditioning while Edit
runs, so the user's target guider needs no special wiring:

* ``UNCOND_CONTEXT``: ``[S, B, L, D]`` cross-attention context, S = the grid's steps (or 1: every
  step), B = the latent batch (or 1: every image);
* ``UNCOND_POOLED`` (optional): ``[B, N]`` the model's processed pooled vector (SDXL's ``y``) that went
  with it, so the pooled output stays the one the embeddings were learned with.
"""

from __future__ import annotations

from typing import Any

import comfy.conds
import comfy.patcher_extension
import torch

UNCOND_CONTEXT = "null_text.c_crossattn"
UNCOND_POOLED = "null_text.y"
#: meta key with the method's settings and costs (see nodes/nulltext.py).
META = "null_text"


def step_index(grid: torch.Tensor, sigma: torch.Tensor | float) -> int:
    """The grid step an evaluation at ``sigma`` belongs to: the largest i with grid[i] >= sigma.

    Grid levels map to their own step (a solver evaluates step i at grid[i], EDICT relabels to it);
    stages between levels (EES) belong to the step they lie in.
    """
    s = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
    levels = grid.detach().to("cpu", torch.float64)
    at_or_above = int((levels >= s * (1 - 1e-6)).sum())
    return min(max(at_or_above - 1, 0), len(levels) - 2)


def with_uncond(conds: list[dict[str, Any]], context: torch.Tensor,
                pooled: torch.Tensor | None) -> list[dict[str, Any]]:
    """A copy of a processed conds list whose every entry uses ``context`` (and ``pooled``) instead.

    Only the model inputs change; areas, masks, ControlNet and hooks of each entry are kept.
    """
    out = []
    for entry in conds:
        model_conds = dict(entry["model_conds"])
        model_conds["c_crossattn"] = comfy.conds.CONDCrossAttn(context)
        if pooled is not None and "y" in model_conds:
            model_conds["y"] = comfy.conds.CONDRegular(pooled)
        out.append({**entry, "model_conds": model_conds})
    return out


def detached(conds: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A copy of a processed conds list whose tensors carry no autograd history.

    Conditioning encoded with gradients on (a script, not ComfyUI's executor) would otherwise tie
    every backward pass to the text encoder's graph.
    """
    if conds is None:
        return None
    out = []
    for entry in conds:
        model_conds = {k: v._copy_with(v.cond.detach()) if isinstance(getattr(v, "cond", None), torch.Tensor) else v
                       for k, v in entry["model_conds"].items()}
        out.append({**entry, "model_conds": model_conds})
    return out


def context_of(conds: list[dict[str, Any]], what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cross-attention context, pooled ``y`` or None) of a processed conds list of exactly one entry."""
    if not conds or len(conds) != 1:
        raise ValueError(f"{what} must be a single conditioning (one prompt, no combined or area conditionings); "
                         f"got {len(conds or [])} entries")
    model_conds = conds[0]["model_conds"]
    if "c_crossattn" not in model_conds:
        raise ValueError(f"{what} has no cross-attention text context: this model is not text-conditioned "
                         "through cross-attention")
    y = model_conds.get("y")
    return model_conds["c_crossattn"].cond, (y.cond if y is not None else None)


class UncondSchedule:
    """The stored per-step unconditional inputs, applied to a guider's negative conds during a run."""

    def __init__(self, context: torch.Tensor, pooled: torch.Tensor | None, grid: torch.Tensor) -> None:
        if context.ndim != 4 or context.shape[0] not in (1, len(grid) - 1):
            raise ValueError(f"per-step unconditional context has shape {list(context.shape)}; expected "
                             f"[steps ({len(grid) - 1}) or 1, batch, tokens, width]")
        self.context = context
        self.pooled = pooled
        self.grid = grid

    @classmethod
    def from_extras(cls, extras: dict[str, torch.Tensor], grid: torch.Tensor) -> UncondSchedule | None:
        if UNCOND_CONTEXT not in extras:
            return None
        return cls(extras[UNCOND_CONTEXT], extras.get(UNCOND_POOLED), grid)

    def negatives(self, negative: list[dict[str, Any]], device: torch.device) -> list[list[dict[str, Any]]]:
        """One processed negative conds list per grid step (the same list repeated for a 1-step schedule)."""
        pooled = self.pooled.to(device) if self.pooled is not None else None
        lists = [with_uncond(negative, c.to(device), pooled) for c in self.context]
        steps = len(self.grid) - 1
        return lists if len(lists) == steps else lists * steps


class PerStepNegatives:
    """CALC_COND_BATCH wrapper of one Edit run: where the guider's negative enters a model evaluation, the
    step's stored unconditional inputs go in instead.

    The negative is recognised by identity (the processed list the guider holds for this run), so any guider
    that passes its negative through works, and no conds, guider or model is changed: the wrapper lives in
    the run's own model_options.
    """

    KEY = "exact_inversion_per_step_negatives"

    def __init__(self, schedule: UncondSchedule, negative: list[dict[str, Any]], device: torch.device) -> None:
        self.negative = negative
        self.grid = schedule.grid
        self.per_step = schedule.negatives(negative, device)

    def install(self, model_options: dict[str, Any]) -> None:
        comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, self.KEY,
                                                     self, model_options, is_model_options=True)

    def __call__(self, executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                 model_options: dict[str, Any]) -> Any:
        if any(c is self.negative for c in conds):
            step = self.per_step[step_index(self.grid, timestep)]
            conds = [step if c is self.negative else c for c in conds]
        return executor(model, conds, x_in, timestep, model_options)

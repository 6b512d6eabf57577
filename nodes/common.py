"""Shared socket types, naming and input checks for the pack's nodes."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..solvers import SOLVERS, InversionState, Solver
from ..solvers.state import is_image_latent_shape

#: Kept equal to pyproject.toml's version (a unit test checks); written into every saved inversion.
PACK_VERSION = "0.1.0"
CATEGORY = "sampling/exact inversion"
NODE_PREFIX = "ExactInversion_"

#: The inverted state (an ``InversionState``) travelling between nodes.
Inversion = io.Custom("INVERSION")


def node_id(name: str) -> str:
    return NODE_PREFIX + name


def solver_of(sampler: Any, node: str) -> Solver:
    """The solver inside a SAMPLER made by one of our solver nodes, or a clear error."""
    from .model_adapter import SolverSampler

    if not isinstance(sampler, SolverSampler):
        raise ValueError(
            f"{node}: input 'sampler' must come from an Exact Inversion solver node (e.g. 'DDIM Solver'); "
            f"got {type(sampler).__name__}. Stock samplers such as euler cannot be inverted."
        )
    return sampler.solver


def solver_for_state(state: InversionState, node: str, name: str = "inversion") -> Solver:
    """Rebuild the solver that made an inversion from its stored name and parameters."""
    cls = SOLVERS.get(state.solver)
    if cls is None:
        raise ValueError(f"{node}: input '{name}' was made by unknown solver {state.solver!r}; known: "
                         f"{', '.join(sorted(SOLVERS))}")
    try:
        solver = cls.from_params(state.params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{node}: input '{name}' has invalid {state.solver} parameters: {err}") from err
    missing = set(solver.latent_names) - set(state.latents)
    if missing:
        raise ValueError(f"{node}: input '{name}' lacks the {state.solver} latents {sorted(missing)}")
    return solver


def latent_samples(latent: Any, node: str, name: str = "latent") -> torch.Tensor:
    """The ``samples`` tensor of a LATENT input, checked for shape and finiteness."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{node}: input '{name}' is not a LATENT (a dict with a 'samples' tensor)")
    samples = latent["samples"]
    if samples.is_nested or not is_image_latent_shape(samples.shape):
        video = samples.ndim == 5 and not samples.is_nested and samples.shape[2] > 1
        raise ValueError(f"{node}: input '{name}' must be an image latent of shape [batch, channels, height, "
                         f"width] (or [batch, channels, 1, height, width]); got shape {list(samples.shape)}"
                         + ("; videos of several frames are not supported: invert one frame" if video else ""))
    if not torch.isfinite(samples).all():
        raise ValueError(f"{node}: input '{name}' contains NaN or infinite values; check the VAE encode "
                         "and the nodes before it")
    return samples


def check_latent_channels(samples: torch.Tensor, model_patcher: Any, node: str, name: str) -> None:
    """Refuse a latent whose channel count does not fit the model (e.g. encoded with another VAE)."""
    fmt = model_patcher.model.latent_format
    expected = getattr(fmt, "latent_channels", None)
    if expected is not None and samples.shape[1] != expected:
        raise ValueError(
            f"{node}: input '{name}' has {samples.shape[1]} channels but the model expects {expected}; "
            "encode the image with this model's VAE"
        )

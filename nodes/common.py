"""Shared socket types, naming and input checks for the pack's nodes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from comfy_api.latest import io

from ..solvers import SOLVERS, InversionState, Solver
from ..solvers.state import is_image_latent_shape

if TYPE_CHECKING:
    from .model_adapter import SolverSampler

#: Kept equal to pyproject.toml's version (a unit test checks); written into every saved inversion.
PACK_VERSION = "0.1.0"
CATEGORY = "sampling/exact inversion"
NODE_PREFIX = "ExactInversion_"

#: The inverted state (an ``InversionState``) travelling between nodes.
Inversion = io.Custom("INVERSION")


def node_id(name: str) -> str:
    return NODE_PREFIX + name


def solver_sampler_of(sampler: Any, node: str) -> SolverSampler:
    """The SAMPLER made by one of our solver nodes (its ``solver_on(device)`` gives the solver), or a clear error."""
    from .model_adapter import SolverSampler

    if not isinstance(sampler, SolverSampler):
        raise ValueError(
            f"{node}: input 'sampler' must come from an Exact Inversion solver node (e.g. 'DDIM Solver'); "
            f"got {type(sampler).__name__}. Stock samplers such as euler cannot be inverted."
        )
    return sampler


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
        raise ValueError(f"{node}: input '{name}' is not a LATENT (a dict with a 'samples' tensor); connect a VAE "
                         "Encode of the image (or another node's LATENT output)")
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


def guider_model(guider: Any, node: str, name: str = "guider",
                 fix: str = "connect e.g. a CFGGuider or BasicGuider") -> Any:
    """The MODEL of a GUIDER input, after checking it is one and its cfg (if any) is a finite number.

    ComfyUI's range check lets NaN through (NaN < min is false): a NaN cfg would invert to NaN silently.
    """
    model = getattr(guider, "model_patcher", None)
    if model is None or not hasattr(guider, "sample"):
        raise ValueError(f"{node}: input '{name}' is not a GUIDER; {fix}")
    cfg = getattr(guider, "cfg", None)
    if isinstance(cfg, (int, float)) and not math.isfinite(cfg):
        raise ValueError(f"{node}: input '{name}' has cfg {cfg}; set the guider's cfg to a finite number (e.g. 1 "
                         "to invert, 3-8 to edit)")
    return model


def check_model(model: Any, node: str, name: str = "model") -> None:
    """A MODEL input is a ModelPatcher (a prompt sent over the API can put any value there)."""
    if not (hasattr(model, "model") and hasattr(model, "clone") and hasattr(model, "get_model_object")):
        raise ValueError(f"{node}: input '{name}' is not a MODEL; connect a model loader's MODEL output")


def check_clip(clip: Any, node: str, name: str, what: str) -> None:
    """A CLIP input can at least tokenize (the word search needs no more)."""
    if not hasattr(clip, "tokenize"):
        raise ValueError(f"{node}: input '{name}' is not a CLIP; connect {what}")


def check_conditioning(conditioning: Any, node: str, name: str) -> None:
    """A CONDITIONING input is a list of [tensor, dict] pairs."""
    ok = isinstance(conditioning, list) and conditioning and all(
        isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], torch.Tensor) and isinstance(c[1], dict)
        for c in conditioning)
    if not ok:
        raise ValueError(f"{node}: input '{name}' is not a CONDITIONING; connect a CLIP Text Encode output")


def check_prompt_encodes_to(clip: Any, prompt: str, context: Any, node: str, name: str, conditioning: str) -> None:
    """Refuse a prompt text that is not the one the conditioning was encoded from: the words would be looked for
    in another prompt, and the mask or edit would silently be for it.

    ``context`` is the conditioning's text tensor (or a CONDITIONING); the prompt is encoded with ``clip`` as
    CLIP Text Encode does and compared (to float rounding).
    """
    if not hasattr(clip, "encode_from_tokens_scheduled"):
        return  # a tokenizer alone (tests of models whose text encoders are not at hand) cannot tell
    if isinstance(context, list):
        context = context[0][0]
    encoded = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]
    a, b = encoded.detach().to("cpu", torch.float32), context.detach().to("cpu", torch.float32)
    if a.shape != b.shape and a.shape[0] == 1 and a.shape[1:] == b.shape[1:]:
        a = a.expand_as(b)  # one prompt for a batch of images
    same = a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    if not same:
        shown = prompt if len(prompt) <= 80 else prompt[:80] + "..."
        raise ValueError(f"{node}: input '{name}' ({shown!r}) is not the prompt '{conditioning}' was encoded from "
                         f"(encoding it with the connected CLIP gives other text features); type the exact text of "
                         f"that CLIP Text Encode, and connect the same CLIP")

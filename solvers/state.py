"""InversionState: everything needed to run an inversion back, and to check it is run back right."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class InversionState:
    """What ``Invert`` produces and ``Edit`` starts from.

    ``latents`` are the solver's named state tensors at ``sigmas[0]`` in ComfyUI's sampler space
    (after ``process_latent_in``): ``{"x"}`` for DDIM/AIDI/EES, ``{"x", "y"}`` for EDICT,
    ``{"x", "x_next"}`` for BDIA (``x_next`` at ``sigmas[1]``). ``sigmas`` is the exact float64
    grid the inversion ran on (noisy -> clean). ``meta`` carries fingerprints of the model and
    conditioning and creation info; ``extras`` carries optional tensors (trajectory, null embeddings).
    """

    solver: str
    params: dict[str, Any]
    schedule: str
    sigmas: Tensor
    latents: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sigmas = self.sigmas.detach().to("cpu", torch.float64)
        if "x" not in self.latents:
            raise ValueError("InversionState needs at least the latent 'x'")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the inverted latent (batch, channels, height, width)."""
        return tuple(self.latents["x"].shape)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> str:
        """One line for UI text and logs."""
        return (
            f"{self.solver} inversion, {self.steps} steps, sigma {float(self.sigmas[-1]):.4g} -> "
            f"{float(self.sigmas[0]):.4g}, latent {list(self.shape)}"
        )

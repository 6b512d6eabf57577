"""Blended guidance's masks and stochastic editing (pure torch).

Pan et al., "Effective Real Image Editing with Accelerated Iterative Diffusion Inversion" (AIDI, ICCV 2023):
§3.3 blended guidance — the anchor word's attention map M, scaled to [0, 1] and mapped piecewise-linearly
around the threshold delta to (−M̄, M̄), gives the soft mask sigmoid(±M̄) of the per-pixel guidance scale;
§3.4 stochastic editing — DDIM-eta noise of variance eta·σ_t²·M̃ inside the mask (their eq. 10). Local blend
(outside the mask the edit follows the reconstruction at every step) is prompt-to-prompt's (Hertz et al.,
ICLR 2023, §3.2 "local editing"): a 3×3 max-pooled, thresholded running mean of the map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # see editing/nulltext.py
    from solvers import Schedule

#: how the anchor map is scaled to [0, 1] before thresholding
DEFAULT_NORMALISATION = "min-max"


def scale_map(anchor: torch.Tensor, normalisation: str = DEFAULT_NORMALISATION) -> torch.Tensor:
    """The map in [0, 1] per image: divided by its max ("max", AIDI's) or min-max scaled."""
    hi = anchor.amax(dim=(-2, -1), keepdim=True)
    if normalisation == "max":
        return anchor / hi.clamp_min(1e-12)
    lo = anchor.amin(dim=(-2, -1), keepdim=True)
    return (anchor - lo) / (hi - lo).clamp_min(1e-12)


def soft_mask(anchor: torch.Tensor, threshold: float, sharpness: float, edit_region: bool) -> torch.Tensor:
    """AIDI's M~: the scaled map mapped piecewise-linearly to (-M, M) around delta, then sigmoid.

    ``edit_region`` True: the anchor marks what to edit (sigmoid(Mbar)); False: what to keep (sigmoid(-Mbar)).
    """
    m = scale_map(anchor)
    mbar = torch.where(m < threshold, sharpness * (m - threshold) / threshold,
                       sharpness * (m - threshold) / (1.0 - threshold))
    return torch.sigmoid(mbar if edit_region else -mbar)


def blend_region(mean_anchor: torch.Tensor, threshold: float, edit_region: bool) -> torch.Tensor:
    """Local blend's binary edit region from the running-mean map: 3x3 max-pool, scale by max, threshold."""
    anchor = scale_map(F.max_pool2d(mean_anchor, 3, stride=1, padding=1)) > threshold
    return (anchor if edit_region else ~anchor).to(mean_anchor.dtype)


def blend_branches(value: torch.Tensor, batch: int, region: torch.Tensor) -> torch.Tensor:
    """[reconstruction; edit] batch with the edit replaced by the reconstruction outside ``region``."""
    rec, tgt = value[:batch], value[batch:]
    region = region.to(device=value.device, dtype=value.dtype)
    return torch.cat([rec, rec + region * (tgt - rec)])


def ddim_noise_variance(schedule: Schedule, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """DDIM's sigma_t^2 = (1 - abar_prev)/(1 - abar) * (1 - abar/abar_prev), in the schedule's own alpha, sigma."""
    a, s = schedule.alpha(sigma_from), schedule.sigma(sigma_from)
    a2, s2 = schedule.alpha(sigma_to), schedule.sigma(sigma_to)
    return (s2 * s2) / (s * s) * (1.0 - (a * a) / (a2 * a2))


def renoise(x: torch.Tensor, denoised: torch.Tensor, noise: torch.Tensor, soft: torch.Tensor, eta: float,
            schedule: Schedule, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """Stochastic editing (AIDI eq. 10) of a state ``x`` at ``sigma_to`` (ComfyUI coordinates): its noise part
    is shrunk to sqrt(σ² − var) and ``noise`` of variance var = eta·σ_t²·``soft`` added, in the model's own
    coordinates. Computed where ``x`` lives, in its dtype (the solver's state: float64 by default)."""
    a2, s2 = schedule.alpha(sigma_to), schedule.sigma(sigma_to)
    if float(s2) == 0.0:
        return x
    dev, dt = x.device, x.dtype
    scale = schedule.scale(sigma_to).to(device=dev, dtype=dt)
    a2, s2 = a2.to(device=dev, dtype=dt), s2.to(device=dev, dtype=dt)
    var = eta * ddim_noise_variance(schedule, sigma_from, sigma_to).to(device=dev, dtype=dt) * soft.to(dev, dt)
    z = scale * x
    eps = (z - a2 * denoised.to(dev, dt)) / s2
    z = z + ((s2 * s2 - var).clamp_min(0).sqrt() - s2) * eps + var.sqrt() * noise.to(dev, dt)
    return z / scale

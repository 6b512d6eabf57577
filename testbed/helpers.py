"""Graph pieces built with the real nodes, shared by the host tests and benches (tiny models, stock guiders)."""

from __future__ import annotations

import torch


def variant(node_classes, model, kind: str):
    """The tiny eps model as eps, v-prediction (stock ModelSamplingDiscrete) or flow (stock ModelSamplingSD3)."""
    if kind == "eps":
        return model
    if kind == "v":
        return node_classes["ModelSamplingDiscrete"]().patch(model, "v_prediction", False)[0]
    if kind == "flow":
        return node_classes["ModelSamplingSD3"]().patch(model, 3.0)[0]
    raise ValueError(kind)


def guider(node_classes, model, pos, neg, cfg: float):
    return node_classes["CFGGuider"].execute(model=model, positive=pos, negative=neg, cfg=cfg).result[0]


def sigmas(node_classes, model, steps: int, denoise: float = 1.0) -> torch.Tensor:
    return node_classes["BasicScheduler"].execute(model=model, scheduler="normal", steps=steps,
                                                   denoise=denoise).result[0]


def ddim_sampler(node_classes, label: str = "current", dtype: str = "float64"):
    return node_classes["ExactInversion_DDIMSolver"].execute(inversion_label=label, state_dtype=dtype).result[0]


def invert(node_classes, g, sampler, sig, latent):
    return node_classes["ExactInversion_Invert"].execute(guider=g, sampler=sampler, sigmas=sig, latent=latent).result


def edit(node_classes, g, inversion, sig=None):
    return node_classes["ExactInversion_Edit"].execute(guider=g, inversion=inversion, sigmas=sig).result[0]


def check(node_classes, a, b):
    return node_classes["ExactInversion_RoundTripCheck"].execute(original_latent=a, result_latent=b)


def random_latent(shape=(1, 4, 8, 8), seed: int = 0) -> dict:
    return {"samples": torch.randn(*shape, generator=torch.Generator().manual_seed(seed))}

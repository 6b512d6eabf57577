"""Model fingerprints do not depend on how ComfyUI keeps the weights in memory."""

from __future__ import annotations

import torch

from testbed import comfyhost
from testbed.tiny import make_model


def fingerprint_of(model) -> str:
    module = comfyhost.pack_module("nodes.fingerprint")
    module._CACHE.clear()
    return module.model_fingerprint(model)["id"]


def test_weights_kept_in_the_files_dtype_hash_as_the_models_dtype():
    """ComfyUI 0.28's dynamic VRAM loading (the NVIDIA default) keeps an fp32 file's weights in fp32 and casts
    them per layer to the model's fp16; the plain loader converts them once. Same model, same fingerprint:
    otherwise a file saved on one machine is refused on another."""
    converted = make_model(0, dtype=torch.float16)
    as_in_file = make_model(0, dtype=torch.float16)
    reference = make_model(0, dtype=torch.float32)
    with torch.no_grad():
        for kept, original in zip(as_in_file.model.diffusion_model.parameters(),
                                  reference.model.diffusion_model.parameters(), strict=True):
            kept.data = original.data.clone()  # fp32 values under an fp16 model, as dynamic loading holds them
    assert next(as_in_file.model.diffusion_model.parameters()).dtype == torch.float32
    assert as_in_file.model.get_dtype() == torch.float16
    assert fingerprint_of(as_in_file) == fingerprint_of(converted)
    assert fingerprint_of(reference) != fingerprint_of(converted)  # an fp32 model is another model

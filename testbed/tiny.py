"""Tiny random SD1-shaped models built in ComfyUI's own classes (UNet, CLIP, VAE, ControlNet), for tests.

No weights are downloaded or stored: everything is initialised from a seed. The shapes follow SD1.5
(4 latent channels, 8x VAE downscale, 77-token CLIP context) at a fraction of the width, so a
64x64 image runs through a whole invert -> edit graph in well under a second on one CPU core.
Requires ComfyUI to be importable (see tests/host/conftest.py).
"""

from __future__ import annotations

import dataclasses
import math

import comfy.cldm.cldm
import comfy.controlnet
import comfy.latent_formats
import comfy.ldm.flux.model
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import numpy as np
import torch
from comfy.ldm.models.autoencoder import AutoencoderKL
from PIL import Image

CONTEXT_DIM = 64

TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "context_dim": CONTEXT_DIM, "use_spatial_transformer": True, "use_linear_in_transformer": False,
    "legacy": False, "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}

TINY_CLIP_CONFIG = {  # overrides of ComfyUI's sd1_clip_config.json (CLIP-L) for a 1-layer, 64-wide encoder
    "hidden_size": CONTEXT_DIM, "intermediate_size": 128, "num_attention_heads": 2,
    "num_hidden_layers": 1, "projection_dim": CONTEXT_DIM,
}

#: a Flux-shaped DiT (double and single stream blocks, joint attention over [text; image] tokens, RoPE,
#: 2x2 patches, flow prediction) at 32 wide; hand-made CONDITIONINGs carry a 16-wide context and an 8-wide pool
TINY_FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 8, "context_in_dim": 16,
    "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
}

TINY_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


class TinySD(comfy.supported_models_base.BASE):
    """Model config of the tiny UNet (SD1.5 latent format, eps prediction)."""

    unet_config = {"model_channels": 32, "context_dim": CONTEXT_DIM, "in_channels": 4,
                   "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 2, "num_head_channels": -1}
    latent_format = comfy.latent_formats.SD15
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]

    def clip_target(self, state_dict=None):
        return None


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's disable_weight_init layers start as torch.empty garbage: give them seeded values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


#: the tiny UNet without any attention (no transformer blocks, no text context): a model Blended Guidance and
#: Attention Mask must refuse
TINY_UNET_NO_ATTENTION = {**TINY_UNET_CONFIG, "use_spatial_transformer": False, "transformer_depth": [0, 0],
                          "transformer_depth_output": [0, 0, 0, 0], "transformer_depth_middle": 0, "context_dim": None}


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32, attention: bool = True
               ) -> comfy.model_patcher.ModelPatcher:
    """A tiny eps-prediction UNet as a MODEL (ModelPatcher); ``attention`` False: without transformer blocks."""
    cfg = TinySD(TINY_UNET_CONFIG if attention else TINY_UNET_NO_ATTENTION)
    cfg.set_inference_dtype(dtype, None)
    base = cfg.get_model({})
    init_weights(base.diffusion_model, seed)
    base.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


#: an SDXL-shaped UNet: SDXL's 2048-wide context and 2816-wide "y" (pooled CLIP-G output + size embeddings)
TINY_SDXL_CONFIG = {**TINY_UNET_CONFIG, "context_dim": 2048, "adm_in_channels": 2816, "num_classes": "sequential"}


def make_sdxl_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny UNet in ComfyUI's own SDXL classes (its pooled output and image sizes reach it as ``y``)."""
    cfg = comfy.supported_models.SDXL(dict(TINY_SDXL_CONFIG))
    cfg.unet_config["num_head_channels"] = 16  # SDXL's 64-wide heads would leave a 32-wide UNet with none
    cfg.set_inference_dtype(torch.float32, None)
    base = cfg.get_model({})
    init_weights(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def make_sdxl_cond(seed: int = 0) -> list:
    """A CONDITIONING by hand for the tiny SDXL UNet: a random 77 x 2048 context and a 1280-wide pooled output."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]


def flux_config(config: dict | None = None) -> dict:
    """``config`` (default TINY_FLUX_CONFIG) with what this ComfyUI's ``FluxParams`` also requires (0.28 added
    ``txt_ids_dims``: which RoPE axes number the text tokens; none, as for Flux.1)."""
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    return {**(config or TINY_FLUX_CONFIG), **({"txt_ids_dims": []} if "txt_ids_dims" in fields else {})}


def make_flux_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny Flux-shaped flow DiT as a MODEL (ComfyUI's own Flux classes, seeded random weights)."""
    cfg = comfy.supported_models.Flux(flux_config())
    cfg.set_inference_dtype(torch.float32, None)
    base = cfg.get_model({})
    init_weights(base.diffusion_model, seed)
    with torch.no_grad():  # the q/k RMSNorm gains are named "scale": at zero every attention would be uniform
        for name, p in base.diffusion_model.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


#: an SD3-shaped MMDiT (joint blocks over [CLIP 77 + T5 77; image] tokens, 2x2 patches, flow prediction)
TINY_SD3_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "adm_in_channels": 8,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 16, "out_features": 128}},
    "pos_embed_max_size": 16, "num_patches": 256, "pos_embed_scaling_factor": None, "qk_norm": None,
}


def make_sd3_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny SD3-shaped flow MMDiT as a MODEL (ComfyUI's own SD3 classes, seeded random weights)."""
    cfg = comfy.supported_models.SD3(dict(TINY_SD3_CONFIG))
    cfg.set_inference_dtype(torch.float32, None)
    base = cfg.get_model({})
    init_weights(base.diffusion_model, seed)
    with torch.no_grad():  # the position table is a buffer (torch.empty), not a parameter
        pos = base.diffusion_model.pos_embed
        pos.copy_(torch.randn(pos.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def make_flux_cond(seed: int = 0, tokens: int = 256) -> list:
    """A CONDITIONING by hand for the tiny DiTs: a random context (Flux: T5's 256 tokens; SD3: 77 + 77) and
    pooled vector."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, TINY_FLUX_CONFIG["context_in_dim"], generator=g)
    return [[context, {"pooled_output": torch.randn(1, TINY_FLUX_CONFIG["vec_in_dim"], generator=g)}]]


def make_clip(seed: int = 0) -> comfy.sd.CLIP:
    """A 1-layer CLIP text encoder with SD1.5's real tokenizer (its vocab ships with ComfyUI)."""
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(TINY_CLIP_CONFIG)})
    init_weights(clip.cond_stage_model, seed)
    return clip


def make_vae(seed: int = 0) -> comfy.sd.VAE:
    """An 8x-downscaling KL autoencoder with 4 latent channels, like SD's VAE but only 32 channels wide."""
    params = {"ddconfig": dict(TINY_VAE_DDCONFIG), "embed_dim": 4}
    model = AutoencoderKL(**params)
    init_weights(model, seed)
    return comfy.sd.VAE(sd=model.state_dict(), config={"params": params})


def make_cond(seed: int = 0, batch: int = 1) -> list:
    """A CONDITIONING built by hand (random context), for tests that skip the text encoder."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 77, CONTEXT_DIM, generator=g), {}]]


def make_controlnet(seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.controlnet.ControlNet:
    """A CONTROL_NET shaped like the tiny UNet's encoder, taking a 3-channel (RGB) hint image.

    Trained ControlNets start their "zero convs" at zero; here every weight, zero convs included, gets
    seeded random values, so the control really changes what the UNet predicts. No ``latent_format``:
    SD1-style ControlNets take the hint in pixel space (with one, ComfyUI would demand a VAE).
    """
    config = {k: v for k, v in TINY_UNET_CONFIG.items() if k != "out_channels"}
    cmodel = comfy.cldm.cldm.ControlNet(**config, num_heads=2, hint_channels=3, dtype=dtype)
    init_weights(cmodel, seed)
    cmodel.to(dtype)
    return comfy.controlnet.ControlNet(cmodel, load_device=comfy.model_management.get_torch_device())


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE: float32 [1, H, W, 3] in [0, 1] (what LoadImage gives)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]

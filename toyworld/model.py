"""The toy model: a tiny causal text encoder (pure torch) and the config of ComfyUI's own UNet for it.

* Diffusion: eps-prediction in pixel space (3 channels, 32x32, images in [-1, 1]) on the Stable
  Diffusion 1 schedule (1000 steps, betas linear in sqrt from 0.00085 to 0.012: ComfyUI's
  ``ModelSamplingDiscrete`` defaults), so the model is an SD1-like MODEL to ComfyUI with
  ``comfy.latent_formats.ChromaRadiance`` (3-channel identity latent) and the pixel-space VAE.
* Text: token + position embeddings, ``TEXT_LAYERS`` causal pre-LN transformer layers and a final
  LayerNorm (width 64, like CLIP at 1/12 scale). The causal mixing makes a noun's state carry its
  adjective (``circle`` knows it is red), as CLIP does; the prototype's unmixed embeddings left the
  noun's cross-attention unlocalised.
* UNet: ``UNET_CONFIG`` for ``comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel``, the
  prototype's "XS" plus transformer blocks at 32x32 whose self-attention is disabled, so the text
  has pixel-level authority (null-text optimisation) without a 1024^2 attention. ``build_unet`` imports
  ComfyUI lazily; everything else here is pure torch.

Note on ComfyUI's ``disable_self_attentions``: in a disabled block ``attn1`` attends to the *text*
(keys and values from the context) instead of to the image, so the 32x32 blocks hold two
cross-attentions (``attn1`` and ``attn2``) and no self-attention.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .text import CONTEXT_LENGTH, EMPTY, VOCAB

FORMAT = "exact-inversion-toy"
FORMAT_VERSION = 1
UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "cond_stage_model.toy."
VAE_KEY = "first_stage_model.pixel_space_vae"  # makes comfy.sd.VAE build its pixel-space (identity) VAE

CONTEXT_DIM = 64
TEXT_LAYERS = 2
TEXT_HEADS = 2
# GroupNorm groups in the UNet. ComfyUI's UNetModel hard-codes 32, which at 32 channels is one channel per
# group: every norm removes each channel's image mean, so the text could not set the image's mean colour
# (the background) and the background stayed at chance. 8 groups keep relative channel means, as SD's
# 10-channel groups do (measured: scripts/train_toy.py notes, the issue 5 stop note).
NORM_GROUPS = 8

UNET_CONFIG: dict[str, Any] = {
    "image_size": 32, "in_channels": 3, "out_channels": 3, "model_channels": 32,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2],
    "num_heads": -1, "num_head_channels": 32,
    "use_spatial_transformer": True, "use_linear_in_transformer": True, "context_dim": CONTEXT_DIM,
    "transformer_depth": [1, 1, 1], "transformer_depth_output": [1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "disable_self_attentions": [True, False, False],  # 32x32: cross-attention only
    "legacy": False, "use_checkpoint": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

# SD1 ("linear" in LDM/ComfyUI, "scaled_linear" in diffusers)
NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def alphas_cumprod(dtype: torch.dtype = torch.float64) -> Tensor:
    """abar_t for t = 0..999, as ComfyUI's ModelSamplingDiscrete computes it."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).to(dtype)


class CausalLayer(nn.Module):
    """Pre-LN transformer layer with causal self-attention (position i sees tokens 0..i), like CLIP's."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out_proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.ln_2(x))))


class TextEncoder(nn.Module):
    """(B, 16) token ids -> (B, 16, 64) context: embeddings, causal layers, final LayerNorm."""

    def __init__(self, vocab: int = len(VOCAB), width: int = CONTEXT_DIM, layers: int = TEXT_LAYERS,
                 heads: int = TEXT_HEADS, context: int = CONTEXT_LENGTH) -> None:
        super().__init__()
        self.config = {"vocab": vocab, "width": width, "layers": layers, "heads": heads, "context": context}
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Parameter(torch.empty(context, width))
        self.layers = nn.ModuleList(CausalLayer(width, heads) for _ in range(layers))
        self.final_layer_norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.5)
        nn.init.normal_(self.position_embedding, std=0.5)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.final_layer_norm(x)

    def empty(self, batch: int = 1) -> Tensor:
        """Context of the empty prompt (what CFG's negative and caption dropout use)."""
        ids = torch.tensor([EMPTY] * batch, device=self.position_embedding.device)
        return self(ids)


def plain_ops() -> SimpleNamespace:
    """Plain torch layers in the shape of ``comfy.ops``: ComfyUI's default ops skip weight init (for loading),
    which leaves a from-scratch model as ``torch.empty`` garbage."""

    def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
        if dims == 2:
            return nn.Conv2d(*args, **kwargs)
        if dims == 3:
            return nn.Conv3d(*args, **kwargs)
        raise ValueError(f"unsupported dims {dims}")

    return SimpleNamespace(Linear=nn.Linear, Conv2d=nn.Conv2d, Conv3d=nn.Conv3d, GroupNorm=nn.GroupNorm,
                           LayerNorm=nn.LayerNorm, conv_nd=conv_nd)


def build_unet(operations: Any = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, norm_groups: int = NORM_GROUPS) -> nn.Module:
    """ComfyUI's UNetModel with ``UNET_CONFIG`` and ``norm_groups`` GroupNorm groups (needs ComfyUI
    importable and ``comfy.cli_args`` set up).

    ``operations`` defaults to ``plain_ops()`` (initialised weights, for training).
    """
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**UNET_CONFIG, dtype=dtype, device=device, operations=operations or plain_ops())
    set_norm_groups(unet, norm_groups)
    return unet


def set_norm_groups(module: nn.Module, groups: int) -> None:
    """Give every GroupNorm in ``module`` ``groups`` groups (its weights are per channel, so they still fit)."""
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            if m.num_channels % groups:
                raise ValueError(f"norm_groups {groups} does not divide a GroupNorm's {m.num_channels} channels")
            m.num_groups = groups


def eps(unet: nn.Module, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
    """The UNet's noise prediction at VP state ``x`` (ComfyUI passes x / sqrt(sigma^2 + 1) the same way)."""
    return unet(x, t.to(x.dtype), context=context, transformer_options={})


@torch.no_grad()
def ddim_sample(unet: nn.Module, context: Tensor, uncond: Tensor, noise: Tensor, steps: int = 20,
                cfg: float = 4.0) -> Tensor:
    """Deterministic DDIM from t = 999 with timesteps round(999 - i * 1000 / steps), CFG in eps."""
    abar = alphas_cumprod(torch.float64).to(noise.device)
    ts = [round(999 - i * NUM_TIMESTEPS / steps) for i in range(steps)]
    x = noise.double()
    b = noise.shape[0]
    ctx = torch.cat([context, uncond.expand(b, -1, -1)]) if cfg != 1.0 else context
    for i, t in enumerate(ts):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), dtype=torch.float64, device=x.device)
        xin = x.to(noise.dtype)
        tt = torch.full((ctx.shape[0],), float(t), device=x.device)
        e = eps(unet, torch.cat([xin, xin]) if cfg != 1.0 else xin, tt, ctx).double()
        if cfg != 1.0:
            e = e[b:] + cfg * (e[:b] - e[b:])
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return x.to(noise.dtype)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def export_state_dict(unet: nn.Module, text: TextEncoder, dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """One flat state dict with ComfyUI checkpoint key names: UNet, text encoder and the pixel-space VAE flag."""
    sd = {UNET_PREFIX + k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    sd.update({TEXT_PREFIX + k: v.detach().to("cpu", dtype).contiguous() for k, v in text.state_dict().items()})
    sd[VAE_KEY] = torch.tensor(1.0, dtype=dtype)
    return sd


def export_metadata(extra: dict[str, Any] | None = None, text: TextEncoder | None = None,
                    norm_groups: int = NORM_GROUPS) -> dict[str, str]:
    """safetensors metadata (strings only): format, version, configs, vocabulary, schedule, plus ``extra``."""
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "unet_config": json.dumps(UNET_CONFIG),
        "norm_groups": str(norm_groups),
        "text_config": json.dumps(text.config if text is not None else TextEncoder().config),
        "vocab": json.dumps(list(VOCAB)),
        "context_length": str(CONTEXT_LENGTH),
        "prediction": "eps",
        "schedule": json.dumps({"beta_schedule": "linear", "linear_start": BETA_START, "linear_end": BETA_END,
                                "timesteps": NUM_TIMESTEPS}),
        "latent": "pixel space, 3 channels, [-1, 1] (ComfyUI ChromaRadiance format, pixel_space_vae)",
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def split_state_dict(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(UNet keys, text-encoder keys) without their prefixes."""
    unet = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    text = {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
    return unet, text


def load_text_encoder(sd: dict[str, Tensor], metadata: dict[str, str] | None = None) -> TextEncoder:
    """Text encoder (float32) from an exported state dict."""
    cfg = json.loads(metadata["text_config"]) if metadata and "text_config" in metadata else {}
    enc = TextEncoder(**cfg)
    enc.load_state_dict({k: v.float() for k, v in split_state_dict(sd)[1].items()})
    return enc


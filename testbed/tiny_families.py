"""Tiny random models of every image family ComfyUI loads with eps, v or flow sampling, in its own classes.

Why: the pack claims to invert and edit any such model; these builders let tests and benchmarks check
that family by family without downloading weights. Each model is its family's ``comfy.supported_models``
config + ``get_model`` (so the family's own ``model_base`` class, model sampling and extra conds), at a
fraction of the width and depth, seeded random weights, wrapped in a ModelPatcher. Conditionings are
made by hand in the shapes the family's text encoder would give (context tokens x width, pooled vector,
extra per-family inputs); ``tokenizer`` gives the family's real tokenizer where ComfyUI ships its files.

A family missing from this ComfyUI (``available``) is skipped by the tests with the host's version.
Requires ComfyUI to be importable (see tests/host/conftest.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch

from testbed.tiny import TINY_UNET_CONFIG

Conditioning = list


@dataclass(frozen=True)
class Family:
    """One image family: how to build its tiny model and a conditioning of the right shapes."""

    name: str  #: what users call it
    config: str  #: its ``comfy.supported_models`` class
    sampling: str  #: "eps", "v" or "flow" (ComfyUI's EPS, V_PREDICTION, CONST)
    latent: tuple[int, ...]  #: latent shape of the test image (8x8 tokens' worth; pixel-space models 16x16 RGB)
    unet_config: dict[str, Any]
    cond: Callable[..., Conditioning]  #: cond(seed, tokens=None): a CONDITIONING, optionally with another length
    #: the ldm modules the family needs (a family is available only when this ComfyUI has them)
    modules: tuple[str, ...] = ()
    model_type: str | None = None  #: a ``comfy.model_base.ModelType`` name forced on get_model (SD2's v)
    tokenizer: Callable[[], Any] | None = None
    #: the image's patch size in the DiT's attention (its token grid is the latent's size over it); None: a UNet
    patch: tuple[int, int] | None = (2, 2)
    #: the text encoder pads every prompt to one length (CLIP's 77, Flux's 256 T5 tokens): a negative prompt
    #: is as long as the positive; other families' negatives are shorter
    fixed_length_text: bool = False
    notes: str = ""
    extra_init: Callable[[torch.nn.Module, int], None] | None = field(default=None, repr=False)
    #: set on the config after ComfyUI applied its own unet_extra_config (head sizes for a 32-wide model)
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the model's parameter dataclass ("module.Class"): keys an older ComfyUI's lacks are left out
    params: str | None = None

    def available(self) -> bool:
        if not hasattr(comfy.supported_models, self.config):
            return False
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def build(self, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
        return build_model(self, seed)

    def clip(self) -> TokenizerOnlyClip:
        """The family's tokenizer as a CLIP without encoders; a T5 tokenizer stands in where ComfyUI's needs
        files that ship inside the checkpoint (Gemma, GPT-OSS, Ministral)."""
        return TokenizerOnlyClip(self.tokenizer or _llm(STAND_IN_TOKENIZER))

    def random_latent(self, seed: int = 7) -> dict[str, torch.Tensor]:
        """A seeded random LATENT of the family's shape."""
        return {"samples": _rand(seed, *self.latent)}


#: the tokenizer of families whose own needs files from their checkpoints (words map to positions with it)
STAND_IN_TOKENIZER = "pixart_t5.PixArtTokenizer"


class TokenizerOnlyClip:
    """A tokenizer without its encoders: what the attention nodes need of a CLIP (conditionings are hand-made)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.tokenizer = make()

    def tokenize(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return self.tokenizer.tokenize_with_weights(text, **kwargs)


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Seeded values for every parameter: ComfyUI's layers start as ``torch.empty`` garbage.

    Matrices get N(0, 1/fan_in), norm gains 1 (``weight``, ``scale``, ``gamma``, ``g``), other vectors 0.
    Zero gains would make every q/k norm zero and every attention uniform.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif leaf in ("weight", "scale", "gamma", "g"):
                p.fill_(1.0)
            else:
                p.zero_()


def _accepted(params: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys this ComfyUI's parameter dataclass does not know (0.3.75's FluxParams has
    no ``txt_ids_dims``)."""
    if params is None:
        return dict(config)
    module, name = params.rsplit(".", 1)
    names = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    return {k: v for k, v in config.items() if k in names or k == "image_model"}


def build_model(family: Family, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """The family's config class and ``get_model`` at the tiny config, float32, seeded weights."""
    cls = getattr(comfy.supported_models, family.config)
    cfg = cls(_accepted(family.params, family.unet_config))
    cfg.unet_config.update(family.overrides)
    cfg.set_inference_dtype(torch.float32, None)
    if family.model_type is not None:  # what ComfyUI reads from real weights (SD2's v-prediction)
        model_type = comfy.model_base.ModelType[family.model_type]
        cfg.model_type = lambda state_dict, prefix="": model_type
    base = cfg.get_model({})
    init_weights(base.diffusion_model, seed)
    if family.extra_init is not None:
        with torch.no_grad():
            family.extra_init(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def text_cond(tokens: int, width: int, pooled: int | None = None, **extra: Callable[[int, int], Any]
              ) -> Callable[..., Conditioning]:
    """A hand-made CONDITIONING: a (1, tokens, width) context, optionally a pooled vector and extra entries
    (``extra[key](seed, tokens)``); ``make(seed, tokens)`` gives another context length (a shorter negative)."""

    def make(seed: int, n: int | None = None) -> Conditioning:
        n = tokens if n is None else n
        out: dict[str, Any] = {"pooled_output": None if pooled is None else _rand(seed + 1000, 1, pooled)}
        for key, fn in extra.items():
            out[key] = fn(seed, n)
        return [[_rand(seed, 1, n, width), out]]

    return make


def _random_buffers(*names: str, scale: float = 0.1) -> Callable[[torch.nn.Module, int], None]:
    """Seeded values for buffers ComfyUI allocates with torch.empty (position tables)."""

    def fill(model: torch.nn.Module, seed: int) -> None:
        for name in names:
            t = model.get_buffer(name) if name in dict(model.named_buffers()) else model.get_parameter(name)
            t.copy_(_rand(seed + 1, *t.shape) * scale)

    return fill


UNET = {**TINY_UNET_CONFIG, "context_dim": 64}  # testbed/tiny.py's SD1-shaped UNet, 32 wide


def _flux(**over: Any) -> dict[str, Any]:
    """A Flux-shaped DiT at 32 wide: 1 double + 1 single stream block, 2x2 patches, 2 heads of 16."""
    return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 8, "context_in_dim": 16,
            "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
            "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
            "txt_ids_dims": [], **over}


def _chroma(**over: Any) -> dict[str, Any]:
    base = {k: v for k, v in _flux().items() if k != "guidance_embed"}
    return {**base, "image_model": "chroma", "in_channels": 64, "out_channels": 64, "in_dim": 64, "out_dim": 32,
            "hidden_dim": 32, "n_layers": 1, "vec_in_dim": None, **over}


@functools.cache
def _llm(*keys: str) -> Callable[[], Any]:
    """A tokenizer ("module.Class" of comfy.text_encoders, or a full "comfy." path), made once when first asked
    for (some take a second to load); the first of ``keys`` this ComfyUI has (0.3.75 has no Flux.2 Klein)."""
    made: list[Any] = []

    def make() -> Any:
        if made:
            return made[0]
        for key in keys:
            module, name = key.rsplit(".", 1)
            found = getattr(importlib.import_module(module if module.startswith("comfy.") else
                                                    f"comfy.text_encoders.{module}"), name, None)
            if found is not None:
                made.append(found())
                return made[0]
        raise LookupError(f"this ComfyUI has none of the tokenizers {keys}")

    return make


def _mask(seed: int, n: int) -> torch.Tensor:
    """An all-ones text attention mask (what a text encoder gives a prompt without padding)."""
    return torch.ones(1, n, dtype=torch.long)


def _family(name: str, config: str, sampling: str, latent: tuple[int, ...], unet_config: dict[str, Any],
            cond: Callable[..., Conditioning], notes: str, **kw: Any) -> Family:
    return Family(name=name, config=config, sampling=sampling, latent=latent, unet_config=unet_config, cond=cond,
                  notes=notes, **kw)


_FLUX = "comfy.ldm.flux.model.FluxParams"
_HUNYUAN = "comfy.ldm.hunyuan_video.model.HunyuanVideoParams"
_HUNYUAN_IMAGE = {"image_model": "hunyuan_video", "in_channels": 64, "out_channels": 64, "patch_size": [1, 1],
                  "vec_in_dim": None, "context_in_dim": 16, "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2,
                  "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 8], "theta": 256, "qkv_bias": True,
                  "guidance_embed": False, "byt5": False, "meanflow": False, "use_cond_type_embedding": False,
                  "vision_in_dim": None, "meanflow_sum": False}
_LUMINA = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 32, "cap_feat_dim": 16,
           "n_layers": 1, "n_refiner_layers": 1, "qk_norm": True, "n_heads": 2, "n_kv_heads": 2,
           "axes_dims": [4, 6, 6], "axes_lens": [300, 64, 64], "rope_theta": 10000.0, "ffn_dim_multiplier": 2.0,
           "multiple_of": 16}
#: Z-Image's modulation is min(dim, 256) wide against a 256-wide time embedding: it needs dim >= 256
_ZIMAGE = {**_LUMINA, "dim": 256, "axes_dims": [32, 48, 48], "axes_lens": [64, 64, 64], "rope_theta": 256.0,
           "ffn_dim_multiplier": 8 / 3, "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}
_UNET = {"patch": None, "fixed_length_text": True}

FAMILIES_LIST: list[Family] = [
    # --- UNets: cross-attention ----------------------------------------------------------------------------------
    _family("SD1.5", "SD15", "eps", (1, 4, 8, 8), dict(UNET), text_cond(77, 64),
            "UNet 32 wide, 2 levels, a transformer per level; context CLIP-L 77 x 64",
            tokenizer=_llm("comfy.sd1_clip.SD1Tokenizer"), **_UNET),
    _family("SD2.x (v)", "SD20", "v", (1, 4, 8, 8), dict(UNET, use_linear_in_transformer=True), text_cond(77, 64),
            "SD2 UNet (linear projections, float32 attention), v-prediction; context OpenCLIP-H 77 x 64",
            model_type="V_PREDICTION", overrides={"num_head_channels": 16},
            tokenizer=_llm("sd2_clip.SD2Tokenizer"), **_UNET),
    _family("SD2.1 unCLIP", "SD21UnclipL", "v", (1, 4, 8, 8),
            dict(UNET, use_linear_in_transformer=True, adm_in_channels=1536, num_classes="sequential"),
            text_cond(77, 64), "SD2 UNet with the unCLIP image-embedding input (zeros without an image)",
            model_type="V_PREDICTION", overrides={"num_head_channels": 16},
            tokenizer=_llm("sd2_clip.SD2Tokenizer"), **_UNET),
    _family("SDXL", "SDXL", "eps", (1, 4, 8, 8),
            dict(UNET, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                 use_linear_in_transformer=True, transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1]),
            text_cond(77, 2048, pooled=1280),
            "SDXL UNet 32 wide (SSD-1B, Segmind Vega, KOALA: the same classes at other depths); context CLIP-L+G "
            "77 x 2048, pooled 1280 + size embeddings",
            overrides={"num_head_channels": 16}, tokenizer=_llm("comfy.sdxl_clip.SDXLTokenizer"), **_UNET),
    _family("SDXL Refiner", "SDXLRefiner", "eps", (1, 4, 8, 8),
            dict(UNET, context_dim=1280, adm_in_channels=2560, num_classes="sequential",
                 use_linear_in_transformer=True),
            text_cond(77, 1280, pooled=1280),
            "refiner UNet; context CLIP-G 77 x 1280, pooled 1280 + size and aesthetic embeddings",
            overrides={"num_head_channels": 16}, tokenizer=_llm("comfy.sdxl_clip.SDXLTokenizer"), **_UNET),
    _family("SD1.5 InstructPix2Pix", "SD15_instructpix2pix", "eps", (1, 4, 8, 8),
            dict(UNET, in_channels=8, out_channels=4), text_cond(77, 64),
            "SD1.5 UNet with the source image's latent concatenated (zeros here)",
            tokenizer=_llm("comfy.sd1_clip.SD1Tokenizer"), **_UNET),
    _family("SD X4 Upscaler", "SD_X4Upscaler", "v", (1, 4, 8, 8),
            dict(UNET, in_channels=7, out_channels=4, use_linear_in_transformer=True, num_classes=1000),
            text_cond(77, 64), "upscaler UNet: the low-res RGB image concatenated (zeros), its noise level as class",
            overrides={"disable_self_attentions": [True, False]}, tokenizer=_llm("sd2_clip.SD2Tokenizer"), **_UNET),
    _family("Stable Cascade C", "Stable_Cascade_C", "eps", (1, 16, 8, 8),
            {"stable_cascade_stage": "c", "c_in": 16, "c_out": 16, "c_r": 16, "c_cond": 32, "c_hidden": [32, 32],
             "nhead": [2, 2], "blocks": [[1, 1], [1, 1]], "block_repeat": [[1, 1], [1, 1]],
             "level_config": ["CTA", "CTA"], "c_clip_text": 16, "c_clip_text_pooled": 16, "c_clip_img": 768,
             "c_clip_seq": 4, "switch_level": [False]},
            text_cond(77, 16, pooled=16),
            "stage C (the prior) 32 wide, 2 levels, cosine eps schedule; text as clip_text 77 x 16, pooled 16",
            modules=("comfy.ldm.cascade.stage_c",), patch=(1, 1), fixed_length_text=True),
    # --- DiTs with cross-attention ---------------------------------------------------------------------------------
    _family("PixArt Sigma", "PixArtSigma", "eps", (1, 4, 40, 40),
            {"image_model": "pixart_sigma", "patch_size": 4, "in_channels": 4, "hidden_size": 48, "depth": 2,
             "num_heads": 2, "caption_channels": 16, "model_max_length": 32, "micro_condition": False,
             "input_size": 16, "pe_interpolation": 1},
            text_cond(32, 16),
            "PixArt DiT 48 wide, 2 blocks, 4x4 patches of a 40x40 latent (its sin-cos position table divides by "
            "zero below 32 latent pixels a side); context T5 32 x 16 (PixArt Alpha: the same + micro-conditions)",
            modules=("comfy.ldm.pixart.pixartms",), patch=(4, 4), tokenizer=_llm("pixart_t5.PixArtTokenizer")),
    _family("HunyuanDiT", "HunyuanDiT1", "v", (1, 4, 8, 8),
            {"image_model": "hydit1", "input_size": 16, "patch_size": 2, "in_channels": 4, "hidden_size": 32,
             "depth": 2, "num_heads": 2, "text_states_dim": 16, "text_states_dim_t5": 16, "text_len": 77,
             "text_len_t5": 32, "size_cond": False, "use_style_cond": False},
            text_cond(77, 16, conditioning_mt5xl=lambda s, n: _rand(s + 7, 1, 32, 16),
                      attention_mask=lambda s, n: torch.ones(1, n),
                      attention_mask_mt5xl=lambda s, n: torch.ones(1, 32)),
            "HunyuanDiT 32 wide, 2 blocks, v-prediction; context CLIP 77 x 16 + mT5 32 x 16",
            modules=("comfy.ldm.hydit.models",), fixed_length_text=True),
    _family("Anima", "Anima", "flow", (1, 16, 1, 8, 8),
            {"image_model": "anima", "max_img_h": 16, "max_img_w": 16, "max_frames": 1, "in_channels": 16,
             "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 32, "num_blocks": 1,
             "num_heads": 2, "crossattn_emb_channels": 1024, "concat_padding_mask": True, "pos_emb_cls": "rope3d",
             "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "use_adaln_lora": True,
             "adaln_lora_dim": 8, "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
             "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0, "min_fps": 1, "max_fps": 30,
             "rope_enable_fps_modulation": False},
            text_cond(32, 1024),
            "Cosmos-Predict2 DiT 32 wide, 1 block, cross-attention, Wan latent [B, 16, 1, H, W]; context 32 x 1024 "
            "(its LLM adapter is skipped without T5 ids)",
            modules=("comfy.ldm.anima.model",), tokenizer=_llm("anima.AnimaTokenizer")),
    _family("Kandinsky 5 Image", "Kandinsky5Image", "flow", (1, 16, 8, 8),
            {"image_model": "kandinsky5", "in_visual_dim": 16, "out_visual_dim": 16, "in_text_dim": 16,
             "in_text_dim2": 8, "time_dim": 16, "model_dim": 32, "ff_dim": 64, "visual_embed_dim": 64,
             "num_text_blocks": 1, "num_visual_blocks": 1, "axes_dims": (4, 6, 6)},
            text_cond(32, 16, pooled=8),
            "Kandinsky 5 DiT 32 wide, 1 text + 1 visual block (cross-attention); context Qwen2.5-VL 32 x 16, "
            "pooled CLIP-L 8",
            modules=("comfy.ldm.kandinsky5.model",), tokenizer=_llm("kandinsky5.Kandinsky5TokenizerImage")),
    # --- DiTs with joint attention over text and image tokens ------------------------------------------------------
    _family("SD3.5", "SD3", "flow", (1, 16, 8, 8),
            {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "adm_in_channels": 8,
             "context_embedder_config": {"target": "torch.nn.Linear",
                                         "params": {"in_features": 16, "out_features": 128}},
             "pos_embed_max_size": 16, "num_patches": 256, "pos_embed_scaling_factor": None,
             "qk_norm": "rms", "x_block_self_attn_layers": [0]},
            text_cond(154, 16, pooled=8),
            "MMDiT 2 joint blocks, 128 wide, RMS q/k norm and SD3.5's second (image-only) attention in block 0 "
            "(SD3 medium: the same without them); context CLIP-L/G 77 + T5 77 tokens x 16, pooled 8",
            extra_init=_random_buffers("pos_embed"), tokenizer=_llm("sd3_clip.SD3Tokenizer"), fixed_length_text=True),
    _family("AuraFlow", "AuraFlow", "flow", (1, 4, 8, 8),
            {"in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 32, "n_layers": 2, "n_double_layers": 1,
             "n_heads": 2, "global_conddim": 32, "cond_seq_dim": 16, "max_seq": 64},
            text_cond(32, 16),
            "1 double + 1 single MMDiT layer, 32 wide, 8 register tokens before the context; context Pile-T5 32 x 16",
            modules=("comfy.ldm.aura.mmdit",), tokenizer=_llm("aura_t5.AuraT5Tokenizer"), fixed_length_text=True),
    _family("Flux dev", "Flux", "flow", (1, 16, 8, 8), _flux(guidance_embed=True), text_cond(256, 16, pooled=8),
            "Flux 32 wide, 1 double + 1 single stream block, a guidance embedding (guidance-distilled); context "
            "T5 256 x 16, pooled CLIP-L 8",
            params=_FLUX, tokenizer=_llm("flux.FluxTokenizer"), fixed_length_text=True),
    _family("Flux schnell", "FluxSchnell", "flow", (1, 16, 8, 8), _flux(), text_cond(256, 16, pooled=8),
            "Flux dev's shapes without the guidance embedding, FLOW sampling",
            params=_FLUX, tokenizer=_llm("flux.FluxTokenizer"), fixed_length_text=True),
    _family("Flux Fill", "FluxInpaint", "flow", (1, 16, 8, 8), _flux(in_channels=96, guidance_embed=True),
            text_cond(256, 16, pooled=8), "Flux with the masked image and the mask concatenated (96 input channels)",
            params=_FLUX, tokenizer=_llm("flux.FluxTokenizer"), fixed_length_text=True),
    _family("LongCat-Image", "LongCatImage", "flow", (1, 16, 8, 8), _flux(vec_in_dim=None, txt_ids_dims=[1, 2]),
            text_cond(32, 16), "Flux-shaped, no pooled vector, RoPE ids for the text; context Qwen2.5-VL 32 x 16",
            modules=("comfy.text_encoders.longcat_image",), params=_FLUX,
            tokenizer=_llm("longcat_image.LongCatImageTokenizer")),
    _family("Flux.2", "Flux2", "flow", (1, 128, 8, 8),
            _flux(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, patch_size=1,
                  axes_dim=[4, 4, 4, 4], theta=2000, mlp_ratio=3.0, global_modulation=True, mlp_silu_act=True,
                  qkv_bias=False, ops_bias=False, default_ref_method="index", ref_index_scale=10.0,
                  txt_ids_dims=[3], guidance_embed=True),
            text_cond(32, 16),
            "Flux.2 32 wide, 128-channel latent, patch 1, a guidance embedding; context Qwen3 (Klein) 32 x 16, "
            "padded to 512 on the left by the model",
            modules=("comfy.ldm.flux.model",), patch=(1, 1), params=_FLUX,
            tokenizer=_llm("flux.KleinTokenizer", STAND_IN_TOKENIZER)),
    _family("Chroma", "Chroma", "flow", (1, 16, 8, 8), _chroma(), text_cond(32, 16),
            "Chroma 32 wide, 1 double + 1 single stream block, modulations from its approximator; context T5 32 x 16",
            modules=("comfy.ldm.chroma.model",), params="comfy.ldm.chroma.model.ChromaParams",
            tokenizer=_llm("pixart_t5.PixArtTokenizer")),
    _family("Chroma Radiance", "ChromaRadiance", "flow", (1, 3, 16, 16),
            _chroma(image_model="chroma_radiance", in_channels=3, out_channels=3, patch_size=4,
                    nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4, nerf_tile_size=0,
                    nerf_final_head_type="conv", nerf_embedder_dtype=torch.float32, use_x0=False,
                    use_sequential_txt_ids=False),
            text_cond(32, 16), "pixel-space Chroma: 16x16 RGB in 4x4 patches and a NeRF-style head; context T5 32 x 16",
            modules=("comfy.ldm.chroma_radiance.model",), patch=(4, 4),
            params="comfy.ldm.chroma_radiance.model.ChromaRadianceParams",
            tokenizer=_llm("pixart_t5.PixArtTokenizer")),
    _family("HiDream", "HiDream", "flow", (1, 16, 8, 8),
            {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 1,
             "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
             "caption_channels": [16, 16], "text_emb_dim": 8, "num_routed_experts": 2, "num_activated_experts": 1,
             "axes_dims_rope": [8, 4, 4], "max_resolution": [16, 16], "llama_layers": [0, 1]},
            text_cond(32, 16, pooled=8, conditioning_llama3=lambda s, n: _rand(s + 5, 1, 2, 16, 16)),
            "HiDream 32 wide, 1 double + 1 single stream block of 2 experts, [image; text] attention; context "
            "T5 32 x 16, Llama 2 layers x 16 tokens x 16, pooled 8",
            modules=("comfy.ldm.hidream.model",), tokenizer=_llm("hidream.HiDreamTokenizer"), fixed_length_text=True),
    _family("Lumina 2", "Lumina2", "flow", (1, 16, 8, 8), dict(_LUMINA), text_cond(32, 16),
            "NextDiT 32 wide, 1 joint layer + a refiner each for text and image; context Gemma-2 32 x 16 (its "
            "tokenizer ships in the checkpoint: a T5 one stands in)",
            modules=("comfy.ldm.lumina.model",)),
    _family("Z-Image", "ZImage", "flow", (1, 16, 8, 8), dict(_ZIMAGE), text_cond(20, 16),
            "Lumina 2's classes 256 wide with Z-Image's modulation, text and image padded to 32 tokens; context "
            "Qwen3 20 x 16",
            modules=("comfy.ldm.lumina.model",), tokenizer=_llm("z_image.ZImageTokenizer")),
    _family("Z-Image pixel space", "ZImagePixelSpace", "flow", (1, 3, 16, 16),
            {**_ZIMAGE, "image_model": "zimage_pixel", "patch_size": 4, "in_channels": 3, "decoder_in_channels": 48,
             "decoder_hidden_size": 16, "decoder_num_res_blocks": 1, "decoder_max_freqs": 4},
            text_cond(20, 16), "Z-Image on 16x16 RGB in 4x4 patches with its pixel decoder; context Qwen3 20 x 16",
            modules=("comfy.ldm.lumina.model",), patch=(4, 4), tokenizer=_llm("z_image.ZImageTokenizer")),
    _family("Qwen-Image", "QwenImage", "flow", (1, 16, 1, 8, 8),
            {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
             "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 16,
             "axes_dims_rope": [4, 6, 6]},
            text_cond(32, 16), "Qwen-Image MMDiT 32 wide, 1 block, Wan latent [B, 16, 1, H, W]; context Qwen2.5-VL "
                               "32 x 16",
            modules=("comfy.ldm.qwen_image.model",), tokenizer=_llm("qwen_image.QwenImageTokenizer")),
    _family("HunyuanImage 2.1", "HunyuanImage21", "flow", (1, 64, 8, 8), dict(_HUNYUAN_IMAGE), text_cond(32, 16),
            "HunyuanVideo's classes on a 64-channel 32x latent, patch 1, 1 double + 1 single stream block, its "
            "token refiner; context Qwen2.5-VL 32 x 16",
            modules=("comfy.ldm.hunyuan_video.model",), patch=(1, 1), params=_HUNYUAN,
            tokenizer=_llm("hunyuan_image.HunyuanImageTokenizer")),
    _family("HunyuanImage 2.1 Refiner", "HunyuanImage21Refiner", "flow", (1, 64, 1, 8, 8),
            {**_HUNYUAN_IMAGE, "in_channels": 192, "out_channels": 128, "patch_size": [1, 1, 1],
             "axes_dim": [4, 6, 6]},
            text_cond(32, 16),
            "the refiner: latent [B, 64, 1, H, W] taken to 128 channels by its latent format, the image to refine "
            "concatenated (zeros here)",
            modules=("comfy.ldm.hunyuan_video.model",), patch=(1, 1), params=_HUNYUAN,
            tokenizer=_llm("hunyuan_image.HunyuanImageTokenizer")),
    _family("OmniGen2", "Omnigen2", "flow", (1, 16, 8, 8),
            {"image_model": "omnigen2", "patch_size": 2, "in_channels": 16, "hidden_size": 32, "num_layers": 1,
             "num_refiner_layers": 1, "num_attention_heads": 2, "num_kv_heads": 2, "multiple_of": 16,
             "axes_dim_rope": [4, 6, 6], "axes_lens": [64, 64, 64], "text_feat_dim": 16, "timestep_scale": 1000.0},
            text_cond(32, 16, attention_mask=_mask),
            "OmniGen2 32 wide, 1 joint layer + text and image refiners; context Qwen2.5-VL 32 x 16",
            modules=("comfy.ldm.omnigen.omnigen2",), tokenizer=_llm("omnigen2.Omnigen2Tokenizer")),
    _family("Boogu", "Boogu", "flow", (1, 16, 8, 8),
            {"image_model": "boogu", "patch_size": 2, "in_channels": 16, "hidden_size": 32, "num_layers": 1,
             "num_double_stream_layers": 1, "num_refiner_layers": 1, "num_attention_heads": 2, "num_kv_heads": 2,
             "multiple_of": 16, "axes_dim_rope": [4, 6, 6], "axes_lens": [64, 64, 64], "instruction_feat_dim": 16},
            text_cond(48, 16, attention_mask=_mask),
            "Boogu 32 wide, 1 double + 1 single stream layer; context Qwen3-VL 48 x 16 (its system prompt is long)",
            modules=("comfy.ldm.boogu.model",), tokenizer=_llm("boogu.BooguTokenizer")),
    _family("Ideogram 4", "Ideogram4", "flow", (1, 128, 8, 8),
            {"image_model": "ideogram4", "in_channels": 128, "num_layers": 1}, text_cond(32, 64),
            "single-stream DiT 32 wide, 1 layer over [text; image], latent channels holding 2x2 patches; context "
            "32 x 64 (stacked Qwen3-VL layers)",
            modules=("comfy.ldm.ideogram4.model",), patch=(1, 1), tokenizer=_llm("ideogram4.Ideogram4Tokenizer"),
            overrides={"num_attention_heads": 2, "attention_head_dim": 16, "intermediate_size": 64, "adaln_dim": 16,
                       "llm_features_dim": 64, "mrope_section": [2, 3, 3]}),
    _family("Krea 2", "Krea2", "flow", (1, 16, 1, 8, 8),
            {"image_model": "krea2", "features": 32, "channels": 16, "patch": 2, "layers": 1, "heads": 2,
             "kvheads": 2, "txtlayers": 2, "txtdim": 16, "txtheads": 2, "txtkvheads": 2, "multiplier": 2},
            text_cond(32, 32),
            "single-stream DiT 32 wide, 1 block, text fusion over 2 LLM layers, Wan latent [B, 16, 1, H, W]; "
            "context 32 x (2 x 16)",
            modules=("comfy.ldm.krea2.model",), tokenizer=_llm("krea2.Krea2Tokenizer")),
    _family("Lens", "Lens", "flow", (1, 128, 8, 8),
            {"image_model": "lens", "patch_size": 2, "in_channels": 128, "out_channels": 32, "num_layers": 1,
             "attention_head_dim": 16, "num_attention_heads": 2, "enc_hidden_dim": 8, "axes_dims_rope": [4, 6, 6],
             "selected_layer_index": [0, 1]},
            text_cond(32, 16),
            "dual-stream MMDiT 32 wide, 1 block, Flux.2 latent; context 32 x (2 GPT-OSS layers x 8)",
            modules=("comfy.ldm.lens.model",), patch=(1, 1)),
    _family("ERNIE-Image", "ErnieImage", "flow", (1, 128, 8, 8),
            {"image_model": "ernie", "hidden_size": 32, "num_attention_heads": 2, "num_layers": 1,
             "ffn_hidden_size": 64, "in_channels": 128, "out_channels": 128, "patch_size": 1, "text_in_dim": 16,
             "rope_axes_dim": (4, 6, 6)},
            text_cond(32, 16), "ERNIE-Image DiT 32 wide, 1 layer, Flux.2 latent; context Ministral 32 x 16",
            modules=("comfy.ldm.ernie.model",), patch=(1, 1)),
    _family("PixelDiT", "PixelDiTT2I", "flow", (1, 3, 16, 16),
            {"image_model": "pixeldit_t2i", "in_channels": 3, "num_groups": 2, "hidden_size": 32,
             "pixel_hidden_size": 8, "pixel_attn_hidden_size": 16, "pixel_num_groups": 2, "patch_depth": 1,
             "pixel_depth": 1, "patch_size": 4, "txt_embed_dim": 16, "txt_max_length": 32},
            text_cond(32, 16),
            "pixel-space DiT: 16x16 RGB in 4x4 patches, 1 patch + 1 pixel block; context Gemma-2 32 x 16",
            modules=("comfy.ldm.pixeldit.model",), patch=(4, 4)),
]


FAMILIES: dict[str, Family] = {f.name: f for f in FAMILIES_LIST}


def available() -> list[Family]:
    """The families this ComfyUI has."""
    return [f for f in FAMILIES_LIST if f.available()]

"""Load Embedded Toy Model: the pack's own small text-to-image model as MODEL, CLIP and VAE.

The file (``models/toy_model.safetensors``, written by ``scripts/train_toy.py``) holds ComfyUI checkpoint
key names, but ComfyUI's model detection does not know the toy UNet, so the stock checkpoint loader cannot
read it. This node builds the three objects in ComfyUI's own classes from the file's metadata instead
(no change to ComfyUI's detection): ``BaseModel`` + ``ModelPatcher`` for the UNet (eps, SD1 schedule,
``ChromaRadiance`` 3-channel pixel latent), ``comfy.sd.CLIP`` around the toy tokenizer and text encoder,
and ComfyUI's pixel-space ``VAE`` (IMAGE in [0, 1] <-> latent in [-1, 1]). So stock CLIPTextEncode,
KSampler, VAEEncode/VAEDecode and previews work on it unchanged.

Files are read with safetensors only and only from the pack's ``models/`` folder (tests point the
node at another folder with ``set_model_folder``). Loaded models are cached per file (path, mtime, size).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sd
import comfy.supported_models_base
import torch
from comfy_api.latest import io

from ..toyworld import checkpoint, encode_token_weights
from ..toyworld import model as toy
from ..toyworld.text import ToyTokenizer
from .common import CATEGORY, node_id

NODE = "Load Embedded Toy Model"
INPUT = "model_file"
DEFAULT_FILE = "toy_model.safetensors"
EXTENSION = ".safetensors"
PACK_MODELS = Path(__file__).resolve().parents[1] / "models"
#: Largest image side the toy model accepts: it was trained at 32x32, and a model call at 512x512 takes minutes on
#: a CPU (Cancel waits for it); 128 keeps one call in the tens of milliseconds.
MAX_SIDE = 128

_folder_override: Path | None = None


def set_model_folder(folder: str | os.PathLike | None) -> Path | None:
    """Read toy models from ``folder`` instead of the pack's ``models/`` (for tests); None restores it.
    Returns the previous setting, so a caller can put it back."""
    global _folder_override
    previous, _folder_override = _folder_override, None if folder is None else Path(folder)
    return previous


def model_folder() -> Path:
    """The one folder the node reads from."""
    return _folder_override if _folder_override is not None else PACK_MODELS


def list_files() -> list[str]:
    """File names the node offers: the expected ``toy_model.safetensors`` first (even before it is trained,
    so workflows keep their value and the error says how to make it), then other safetensors in the folder."""
    folder = model_folder()
    found = sorted(f.name for f in folder.glob("*" + EXTENSION) if f.is_file()) if folder.is_dir() else []
    return [DEFAULT_FILE, *(f for f in found if f != DEFAULT_FILE)]


def resolve(name: str) -> Path:
    """Absolute path of a listed file name; a name with a path part, or one that leaves the folder, is refused."""
    if (not name or name != os.path.basename(name) or "/" in name or "\\" in name or name in (".", "..")
            or not name.endswith(EXTENSION)):
        raise ValueError(f"{NODE}: input '{INPUT}' ({name!r}) must be one of the listed {EXTENSION} file names "
                         f"in the pack's models folder, without a path")
    root = os.path.realpath(model_folder())
    path = os.path.realpath(os.path.join(root, name))
    if os.path.dirname(path) != root:
        raise ValueError(f"{NODE}: input '{INPUT}' ({name!r}) points outside the pack's models folder")
    if not os.path.isfile(path):
        if name == DEFAULT_FILE:
            raise ValueError(f"{NODE}: input '{INPUT}': {name} is missing from {root}; it ships with the pack: "
                             "reinstall the pack (or git checkout models/toy_model.safetensors), or retrain it "
                             "with scripts/train_toy.py --out runs/toy --steps 1305 --export "
                             "models/toy_model.safetensors (see models/README.md)")
        raise ValueError(f"{NODE}: input '{INPUT}': no file {name!r} in {root}; choose one of {list_files()} "
                         "and refresh the node list (press R)")
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# ComfyUI objects


class ToyConfig(comfy.supported_models_base.BASE):
    """Model config of the toy UNet. Never registered with ComfyUI's detection: only this node builds it."""

    unet_config: dict = {}
    unet_extra_config: dict = {}  # BASE's default forces num_head_channels=64, which breaks the 32-channel level
    latent_format = comfy.latent_formats.ChromaRadiance  # 3 channels, identity process_in/out, RGB previews
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]

    def __init__(self, unet_config: dict, text_config: dict | None = None,
                 sampling_settings: dict | None = None) -> None:
        super().__init__(unet_config)
        self.text_config = dict(text_config or {})
        self.sampling_settings.update(sampling_settings or {})  # BASE.__init__ made it a per-instance copy

    def model_type(self, state_dict: Any = None, prefix: str = "") -> comfy.model_base.ModelType:
        return comfy.model_base.ModelType.EPS

    def clip_target(self, state_dict: Any = None) -> comfy.supported_models_base.ClipTarget:
        """Tokenizer and text-encoder class for ``comfy.sd.CLIP``; the text config travels in ``params``,
        which CLIP passes to the encoder's constructor as keywords."""
        target = comfy.supported_models_base.ClipTarget(ToyTokenizer, ToyClipModel)
        target.params = {"text_config": dict(self.text_config)}
        return target


class ToyClipModel(torch.nn.Module):
    """The text-encoder half of ``comfy.sd.CLIP`` for the toy model (the tokenizer is ``ToyTokenizer``).

    Always float32: ComfyUI's default text-encoder dtype on a CPU is float16, which would change the
    conditioning the model was trained with (and break exact inversion across devices). Frozen, as ComfyUI's
    own text encoders are (``SDClipModel.freeze``): an encoder loaded in inference mode with parameters that
    require grad could not encode outside it.
    """

    def __init__(self, text_config: dict | None = None, device: Any = None, dtype: Any = None,
                 model_options: dict | None = None) -> None:
        super().__init__()
        self.toy = toy.TextEncoder(**(text_config or {})).to(device=device, dtype=torch.float32).eval()
        self.toy.requires_grad_(False)
        self.dtypes = {torch.float32}

    def set_clip_options(self, options: dict) -> None:
        """CLIP layer / projection options: the toy encoder has one output, so nothing to set."""

    def reset_clip_options(self) -> None:
        """See ``set_clip_options``."""

    def encode_token_weights(self, token_weight_pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cond, pooled = encode_token_weights(self.toy, token_weight_pairs)
        device = comfy.model_management.intermediate_device()
        return cond.to(device, torch.float32), pooled.to(device, torch.float32)

    def load_sd(self, sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load ``toy.*`` keys; returns (missing, unexpected) like ``load_state_dict(strict=False)``."""
        prefix = "toy."
        own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        result = self.toy.load_state_dict(own, strict=False)
        unexpected = [k for k in sd if not k.startswith(prefix)] + [prefix + k for k in result.unexpected_keys]
        return [prefix + k for k in result.missing_keys], unexpected


# ----------------------------------------------------------------------------------------------------
# Building from the file (read and checked by toyworld.checkpoint)


@dataclass
class ToyModel:
    """What one file loads into: the three ComfyUI objects and the file's metadata."""

    model: comfy.model_patcher.ModelPatcher
    clip: comfy.sd.CLIP
    vae: comfy.sd.VAE
    metadata: dict[str, str]


def build(path: Path) -> ToyModel:
    """Read ``path`` (safetensors only) and build MODEL, CLIP and VAE in ComfyUI's classes."""
    shown = path.name
    try:
        ckpt = checkpoint.read(path)
    except checkpoint.ToyFileError as err:
        raise ValueError(f"{NODE}: input '{INPUT}' ({shown}) {err}") from err
    unet_config, text_config, unet_sd, text_sd = ckpt.unet_config, ckpt.text_config, ckpt.unet, ckpt.text
    meta = ckpt.metadata

    cfg = ToyConfig(unet_config, text_config, ckpt.schedule)
    cfg.set_inference_dtype(torch.float32, None)
    try:
        base = cfg.get_model({})
        toy.set_norm_groups(base.diffusion_model, ckpt.norm_groups)
        base.diffusion_model.load_state_dict(unet_sd, strict=True)
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{NODE}: input '{INPUT}' ({shown}): the UNet weights do not fit its unet_config "
                         f"({err})") from err
    model = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                             offload_device=comfy.model_management.unet_offload_device())
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "exact_inversion_toy_size",
                               refuse_large_images)

    try:
        clip = comfy.sd.CLIP(cfg.clip_target(), parameters=sum(v.numel() for v in text_sd.values()),
                             model_options={"dtype": torch.float32})
    except TypeError as err:
        raise ValueError(f"{NODE}: input '{INPUT}' ({shown}): invalid text_config {text_config} ({err})") from err
    try:
        missing, unexpected = clip.load_sd({"toy." + k: v for k, v in text_sd.items()})
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{NODE}: input '{INPUT}' ({shown}): the text-encoder weights do not fit its text_config "
                         f"({err})") from err
    if missing or unexpected:
        raise ValueError(f"{NODE}: input '{INPUT}' ({shown}): the text-encoder weights do not fit its text_config "
                         f"(missing {missing}, unexpected {unexpected})")

    # float32 so VAEEncode gives exactly 2 x - 1 (bfloat16, ComfyUI's choice on some GPUs, would round it)
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)}, dtype=torch.float32)
    logging.info("%s: loaded %s (format_version %s, UNet %d and text encoder %d parameters)", NODE, path,
                 meta["format_version"], sum(v.numel() for v in unet_sd.values()),
                 sum(v.numel() for v in text_sd.values()))
    return ToyModel(model=model, clip=clip, vae=vae, metadata=meta)


def refuse_large_images(executor: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """APPLY_MODEL wrapper of the toy MODEL: refuse an image far beyond the training size before the call."""
    height, width = x.shape[-2:]
    if max(height, width) > MAX_SIDE:
        raise ValueError(f"{NODE}: the toy model was trained on 32x32 images and got {width}x{height}; at that size "
                         f"one model call takes minutes on a CPU. Scale the image to 32x32 first (e.g. 'Upscale "
                         f"Image' to 32x32 before VAE Encode), or use an empty latent of at most {MAX_SIDE}x{MAX_SIDE}")
    return executor(x, *args, **kwargs)


_CACHE: dict[str, tuple[tuple[int, int], ToyModel]] = {}
_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def load(name: str) -> ToyModel:
    """The toy model in the listed file ``name``, built once per file version (path, mtime, size)."""
    path = resolve(name)
    key, stamp = str(path), _stamp(path)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        loaded = build(path)
        _CACHE[key] = (stamp, loaded)
        return loaded


def clear_cache() -> None:
    """Forget every loaded model (tests; ComfyUI's own model management frees the weights)."""
    with _LOCK:
        _CACHE.clear()


class ToyModelLoader(io.ComfyNode):
    """Loads the embedded toy model as MODEL, CLIP and VAE for the stock nodes and ours."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("ToyModelLoader"),
            display_name=NODE,
            category=CATEGORY,
            description="Loads the pack's own small text-to-image model of the toy world (one circle, square or "
                        "triangle on a plain background, 32x32 pixels, prompts like 'a red circle on a green "
                        "background'). Works with CLIPTextEncode, KSampler, VAEEncode/VAEDecode and this pack's "
                        "Invert/Edit; use a 32x32 image or EmptyChromaRadianceLatentImage.",
            inputs=[
                io.Combo.Input(INPUT, options=list_files(), default=DEFAULT_FILE,
                               tooltip="A toy model file in the pack's models folder; toy_model.safetensors is "
                                       "the one scripts/train_toy.py exports."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL",
                                tooltip="The toy UNet: eps prediction on the SD1 schedule, in pixel space "
                                        "(3-channel latent in [-1, 1])."),
                io.Clip.Output(display_name="CLIP",
                               tooltip="The toy text encoder; its vocabulary is a, on, background, 8 colours "
                                       "and circle/square/triangle."),
                io.Vae.Output(display_name="VAE",
                              tooltip="Pixel-space VAE: IMAGE in [0, 1] <-> latent in [-1, 1], no compression."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model_file: str) -> Any:
        """Re-run when the file changes (e.g. a new export), not only when the choice does."""
        try:
            path = resolve(model_file)
        except ValueError:
            return model_file  # execute raises the message
        return (model_file, *_stamp(path))

    @classmethod
    def execute(cls, model_file: str) -> io.NodeOutput:
        loaded = load(model_file)
        return io.NodeOutput(loaded.model.clone(), loaded.clip.clone(), loaded.vae)


NODES = [ToyModelLoader]

"""Cross-attention control for a two-branch edit: record the reconstruction branch, inject into the target.

Why: blended guidance (AIDI §3.3) and prompt-to-prompt run a reconstruction branch (source prompt)
next to the target branch (edited prompt). The reconstruction branch's attention tells where the anchor
word is (the mask), and for the first steps the target branch reuses its attention probabilities, so
the object keeps its shape and place while its words change (P2P word swap / refinement).

The guider switches ``phase`` around each model call: "record" (reconstruction branch: outputs are
ComfyUI's own, bit for bit), "inject" (target branch: the positive prompt's probabilities of aligned
tokens come from the reconstruction) or "off".
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .attention_capture import (
    AttentionRecord,
    attend_with,
    attention_probabilities,
    install_text_attention,
    spatial_grid,
    stock_attention,
    text_attention_sites,
)
from .model_adapter import model_name
from .prompt_words import MemoTokenizer, PromptTokens, word_names

SiteKey = tuple[str, str, int, int]  # (layer, block name, block number, transformer index)
JOINT_CHUNK = 256  # image queries per softmax chunk on joint-attention models


def token_alignment(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """For each target context position, the source position whose attention it takes, or -1 (its own).

    Equal runs align one to one; a replaced run of the same length (a word swap: "red" -> "blue") too.
    Inserted tokens, and replaced runs of another length, keep their own attention (P2P refinement).
    """
    out = [-1] * len(target)
    matcher = difflib.SequenceMatcher(None, list(source), list(target), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for k in range(j2 - j1):
                out[j1 + k] = i1 + k
    return out


@dataclass
class AttentionControl:
    """State shared by the patched attention layers and the guider during one edit."""

    anchor_positions: list[int]  # source context positions of the anchor word
    alignment: list[int]  # target position -> source position (-1: own), from token_alignment
    inject: bool = False
    phase: str = "off"
    #: per site, the reconstruction branch's positive-prompt probabilities of this evaluation
    recorded: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    #: per site, this evaluation's anchor map (batch, h, w), mean over heads and anchor tokens
    anchor_maps: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    #: DiTs only: the image's token grid, set per call (see ``token_grid``)
    image_grid: tuple[int, int] | None = None
    #: DiTs only: where the model's attention puts the prompt (see ``text_layout``)
    layout: TextLayout | None = None
    #: DiTs only: tokens of the positive conditioning's context, as encoded (before the model pads it)
    context_tokens: int | None = None
    #: DiTs only: the model pads its image tokens to a multiple of this (Z-Image); set by ``patch_control``
    image_pad_multiple: int = 1
    #: when a list, every anchor map recorded is also kept here with its sigma (Attention Mask)
    history: list[AttentionRecord] | None = None

    def begin_evaluation(self) -> None:
        self.recorded.clear()
        self.anchor_maps.clear()

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any], site: SiteKey,
               prev: Any = None) -> torch.Tensor:
        if self.phase == "record":
            self._record(q, k, extra, site)
        elif self.phase == "inject" and self.inject and site in self.recorded:
            return self._inject(q, k, v, extra, site, prev)
        return prev(q, k, v, extra) if prev is not None else stock_attention(q, k, v, extra)

    def record_joint(self, q: torch.Tensor, k: torch.Tensor, options: dict[str, Any],
                     mask: torch.Tensor | None = None, scale: float | None = None) -> None:
        """Anchor map from one attention call of a DiT (q, k: batch, heads, tokens, dim).

        Where the image queries and the anchor's keys sit comes from ``layout``: a joint call over
        [text; image] or [image; text], or a cross-attention of image queries to the text. Joint calls are
        kept with their length: the longest of an evaluation are the joint ones (shorter calls attend
        within the text or within the image). The image queries' probabilities of the anchor's keys are
        computed in chunks of queries, so the full (tokens x tokens) matrix never exists; only the map is kept.
        """
        if self.image_grid is None or self.layout is None or q.ndim != 4:
            return
        h, w = self.image_grid
        n_img, n_q, n_k = h * w, q.shape[2], k.shape[2]
        padded = -(-n_img // self.image_pad_multiple) * self.image_pad_multiple
        located = self.layout.locate(n_img, n_q, n_k, self.context_tokens, padded)
        if located is None:
            return
        image_start, context_start = located
        keys_at = [context_start + p for p in self.anchor_positions]
        rows = self._positive_rows(q, options)
        if rows is None or max(keys_at) >= n_k:
            return
        queries, keys = q[rows, :, image_start:image_start + n_img].float(), k[rows].float()
        if keys.shape[1] != queries.shape[1]:  # grouped-query attention: fewer key heads
            keys = keys.repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)
        scale = queries.shape[-1] ** -0.5 if scale is None else scale
        bias = _mask_bias(mask, rows, image_start, n_img, n_q)
        parts = []
        for start in range(0, n_img, JOINT_CHUNK):
            scores = queries[:, :, start:start + JOINT_CHUNK] @ keys.transpose(-1, -2) * scale
            if bias is not None:
                scores = scores + (bias if bias.shape[-2] == 1 else bias[..., start:start + JOINT_CHUNK, :])
            probs = torch.softmax(scores, dim=-1)
            parts.append(probs[..., keys_at].sum(-1).mean(1))
        if "block_index" in options:  # Flux and others name their blocks; SD3's MMDiT does not: number the calls
            site = ("joint", str(options.get("block_type", "?")), int(options["block_index"]), n_k)
        else:
            site = ("joint", "call", len(self.anchor_maps), n_k)
        self._keep(site, torch.cat(parts, dim=-1).reshape(-1, h, w), options)

    def _keep(self, site: SiteKey, anchor: torch.Tensor, options: dict[str, Any]) -> None:
        """This evaluation's anchor map of ``site`` (batch, h, w), and its copy in ``history`` when kept."""
        self.anchor_maps[site] = anchor
        if self.history is not None:
            sigmas = options.get("sigmas")
            sigma = float(sigmas.flatten()[0]) if sigmas is not None else float("nan")
            self.history.append(AttentionRecord(site[1:], site[0], sigma, 0, anchor.unsqueeze(1).detach().cpu()))

    def _positive_rows(self, q: torch.Tensor, extra: dict[str, Any]) -> slice | None:
        kinds = list(extra.get("cond_or_uncond", [0]))
        if 0 not in kinds:
            return None
        chunk = q.shape[0] // max(1, len(kinds))
        i = kinds.index(0)
        return slice(i * chunk, (i + 1) * chunk)

    def _record(self, q: torch.Tensor, k: torch.Tensor, extra: dict[str, Any], site: SiteKey) -> None:
        rows = self._positive_rows(q, extra)
        if rows is None:
            return
        probs = attention_probabilities(q[rows], k[rows], extra)  # B, heads, HW, tokens
        if self.inject:
            self.recorded[site] = probs
        h, w = spatial_grid(extra, probs.shape[2])
        anchor = probs[..., self.anchor_positions].sum(-1).mean(1)  # B, HW: sum over the word's tokens
        self._keep(site, anchor.reshape(-1, h, w), extra)

    def _inject(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any], site: SiteKey,
                prev: Any) -> torch.Tensor:
        out = prev(q, k, v, extra) if prev is not None else stock_attention(q, k, v, extra)
        rows = self._positive_rows(q, extra)
        source = self.recorded[site]
        if rows is None or q[rows].shape[0] != source.shape[0]:
            return out
        own = attention_probabilities(q[rows], k[rows], extra)
        index = torch.tensor(self.alignment[:own.shape[-1]] + [-1] * max(0, own.shape[-1] - len(self.alignment)),
                             device=own.device)
        index = torch.where(index < source.shape[-1], index, torch.full_like(index, -1))
        taken = source[..., index.clamp_min(0)]
        mixed = torch.where(index >= 0, taken, own)
        out = out.clone()
        out[rows] = attend_with(mixed, v[rows], extra).to(out.dtype)
        return out

    def anchor_map(self, size: tuple[int, int], resolution: str) -> torch.Tensor | None:
        """(batch, 1, H, W) mean anchor attention of this evaluation over the chosen layers, or None."""
        if not self.anchor_maps:
            return None
        chosen = select_resolution(list(joint_calls(self.anchor_maps).values()), resolution)
        up = [F.interpolate(m.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False) for m in chosen]
        return torch.stack(up).mean(0)


RESOLUTIONS = ["all", "finest", "2nd finest", "3rd finest", "coarsest"]


def select_resolution(maps: list[torch.Tensor], resolution: str) -> list[torch.Tensor]:
    """The maps of one attention resolution (by rank, finest first), or all; refuses a rank the model lacks."""
    if resolution == "all":
        return maps
    sizes = sorted({m.shape[-2] * m.shape[-1] for m in maps}, reverse=True)
    index = len(sizes) - 1 if resolution == "coarsest" else RESOLUTIONS.index(resolution) - 1
    if index >= len(sizes):
        raise ValueError(f"resolution {resolution!r} does not exist: this model has {len(sizes)} attention "
                         "resolutions; pick a coarser one or 'all'")
    return [m for m in maps if m.shape[-2] * m.shape[-1] == sizes[index]]


@dataclass(frozen=True)
class TextLayout:
    """Where a DiT's attention puts the prompt's context tokens, and how its text encoder made them.

    ``order``: "text first" (one joint attention over [text; image]), "image first" ([image; text]) or
    "cross" (image queries attend to text keys in a separate attention). Within the text part the context
    starts after ``registers`` learned tokens (AuraFlow), or is ``right_aligned`` (Flux.2 pads it on the left
    to 512). Words map to context positions with the CLIP's ``token_stream`` (when it tokenizes the prompt
    for several encoders); a chat ``template`` around the prompt is left out of the word search, and its
    tokens before the prompt count in the positions when the text encoder keeps them (``template_in_context``).
    """

    family: str
    order: str
    registers: int = 0
    right_aligned: bool = False
    token_stream: str | None = None
    template: str | None = None  # "qwen chat": <|im_start|>user\n before the prompt, <|im_end|> after it
    template_in_context: bool = False

    def locate(self, n_img: int, n_q: int, n_k: int, context: int | None, image_tokens: int | None = None
               ) -> tuple[int, int] | None:
        """(first image query, key of context token 0) in an attention call, or None: not a text attention.

        ``image_tokens``: the image's tokens with the padding the model adds after them (n_img without). A
        cross-attention whose text is exactly as long as the image is taken for a self-attention and skipped.
        """
        image_tokens = n_img if image_tokens is None else image_tokens
        if self.order == "cross":
            return (0, self.registers) if n_q == n_img and n_k != n_q else None
        if n_q != n_k or n_q <= image_tokens:
            return None
        text = n_q - image_tokens
        start = text - context if self.right_aligned and context is not None and context <= text else self.registers
        return (text, start) if self.order == "text first" else (0, image_tokens + start)


#: ComfyUI's model classes (``comfy.model_base``) whose attention ComfyUI lets a patch see: every attention
#: call passes ``transformer_options``, so ``optimized_attention_override`` gets q and k
TEXT_LAYOUTS: dict[str, TextLayout] = {
    "SD3": TextLayout("SD3", "text first"),
    "AuraFlow": TextLayout("AuraFlow", "text first", registers=8),
    "Flux": TextLayout("Flux", "text first"),
    "Flux2": TextLayout("Flux.2", "text first", right_aligned=True, template="qwen chat", template_in_context=True),
    "LongCatImage": TextLayout("LongCat-Image", "text first", template="qwen chat"),
    "Chroma": TextLayout("Chroma", "text first"),
    "ChromaRadiance": TextLayout("Chroma Radiance", "text first"),
    "HiDream": TextLayout("HiDream", "image first", token_stream="t5xxl"),
    "Lumina2": TextLayout("Lumina 2 / Z-Image", "text first", template="qwen chat", template_in_context=True),
    "ZImagePixelSpace": TextLayout("Z-Image pixel space", "text first", template="qwen chat",
                                   template_in_context=True),
    "QwenImage": TextLayout("Qwen-Image", "text first", template="qwen chat"),
    "HunyuanImage21": TextLayout("HunyuanImage 2.1", "text first", token_stream="qwen25_7b", template="qwen chat"),
    "Omnigen2": TextLayout("OmniGen2", "text first", template="qwen chat", template_in_context=True),
    "Boogu": TextLayout("Boogu", "text first", template="qwen chat", template_in_context=True),
    "Ideogram4": TextLayout("Ideogram 4", "text first", template="qwen chat", template_in_context=True),
    "Krea2": TextLayout("Krea 2", "text first", template="qwen chat"),
    "PixelDiTT2I": TextLayout("PixelDiT", "text first"),
    "Kandinsky5": TextLayout("Kandinsky 5", "cross", token_stream="qwen25_7b", template="qwen chat"),
    "Kandinsky5Image": TextLayout("Kandinsky 5 Image", "cross", token_stream="qwen25_7b", template="qwen chat"),
    "Anima": TextLayout("Anima", "cross", token_stream="t5xxl"),
}

#: model classes whose text attention the pack cannot read, and why
UNSUPPORTED_TEXT_ATTENTION: dict[str, str] = {
    "PixArt": "its attention layers take no transformer options, so no patch can see their queries and keys",
    "HunyuanDiT": "its attention layers take no transformer options, so no patch can see their queries and keys",
    "ErnieImage": "its attention layers take no transformer options, so no patch can see their queries and keys",
    "StableCascade_C": "its text enters as extra keys of the image attention at every resolution, which the "
                       "pack does not map",
    "StableCascade_B": "it has no text attention (its text is a pooled vector)",
    "HunyuanImage21Refiner": "its text encoder cuts its prompt template by a rule the pack does not mirror",
    "Lens": "its text encoder cuts a fixed 97-token prompt template (LENS_TXT_OFFSET) that the pack cannot map "
            "words through",
}


def supported_families() -> str:
    """The families whose text attention the pack can read, for error messages."""
    dits = sorted({layout.family for layout in TEXT_LAYOUTS.values()})
    return "UNet cross-attention (SD1.x, SD2.x, SDXL and their variants) and the DiTs " + ", ".join(dits)


def text_layout(model_patcher: Any, node: str, input_name: str = "model") -> TextLayout | None:
    """The DiT's text layout; None for a UNet (its cross-attention layers are patched one by one).

    Raises a ValueError naming ``node``, the input, the family and what is supported when the pack cannot read
    the model's text attention.
    """
    base = model_patcher.model
    is_unet = all(hasattr(base.diffusion_model, a) for a in ("input_blocks", "middle_block", "output_blocks"))
    if text_attention_sites_of(base.diffusion_model):
        return None
    layout = TEXT_LAYOUTS.get(type(base).__name__)
    if layout is not None:
        blocks = getattr(base.diffusion_model, "double_blocks", None)
        if blocks is not None and len(blocks) and getattr(blocks[0], "flipped_img_txt", False):
            layout = dataclasses.replace(layout, order="image first")  # ComfyUI 0.3.75's HunyuanVideo blocks
        return layout
    if is_unet:
        why = "its UNet has no text (cross-)attention layers, so no word of the prompt can be found in it"
    else:
        why = UNSUPPORTED_TEXT_ATTENTION.get(type(base).__name__, "the pack does not know where its attention puts "
                                                                "the prompt's tokens")
    raise ValueError(f"{node}: input '{input_name}': the model ({model_name(base)}) is not supported: {why}. "
                     f"Connect a model with text attention the pack reads: {supported_families()}")


def text_attention_sites_of(diffusion_model: Any) -> list[tuple[str, str, int, int]]:
    """A UNet's text-attention sites; none for a model without UNet blocks."""
    if not all(hasattr(diffusion_model, a) for a in ("input_blocks", "middle_block", "output_blocks")):
        return []
    return text_attention_sites(diffusion_model)


#: DiTs whose latent channels already hold 2x2 patches (their ``patch_size`` is the VAE's packing)
PACKED_LATENT_MODELS = {"Ideogram4Transformer2DModel", "LensTransformer2DModel"}


def token_grid(diffusion_model: Any, latent_shape: Sequence[int]) -> tuple[int, int]:
    """The image's token grid in a DiT's attention: the latent's height and width over the patch size."""
    patch: Any = getattr(diffusion_model, "patch_size", None)
    if patch is None:
        patch = getattr(diffusion_model, "patch", None)  # Krea 2
    if patch is None:
        patch = getattr(diffusion_model, "patch_spatial", 1)  # Cosmos-Predict2 DiTs (Anima)
    if type(diffusion_model).__name__ in PACKED_LATENT_MODELS:
        patch = 1
    ph, pw = (int(patch[-2]), int(patch[-1])) if isinstance(patch, (list, tuple)) else (int(patch), int(patch))
    return -(-int(latent_shape[-2]) // ph), -(-int(latent_shape[-1]) // pw)


def joint_calls(maps: dict[SiteKey, torch.Tensor]) -> dict[SiteKey, torch.Tensor]:
    """The maps of a DiT's joint attention: of the calls recorded with their length (site[3]), the longest.

    Calls within the text (refiners, text fusion) or within the image are shorter than the joint ones.
    Cross-attention and UNet maps pass unchanged.
    """
    joint = {site: m for site, m in maps.items() if site[0] == "joint"}
    if not joint:
        return maps
    longest = max(site[3] for site in joint)
    return {site: m for site, m in maps.items() if site[0] != "joint" or site[3] == longest}


def context_length(conditioning: Any) -> int | None:
    """Tokens of a CONDITIONING's first context (the text encoder's output, before a model pads it)."""
    try:
        return int(conditioning[0][0].shape[1])
    except (TypeError, IndexError, AttributeError):
        return None


def context_length_of(guider: Any) -> int | None:
    """Tokens of the guider's positive context (its first conditioning), as the text encoder made it."""
    conds = (getattr(guider, "original_conds", None) or {}).get("positive") or []
    context = conds[0].get("cross_attn") if conds and isinstance(conds[0], dict) else None
    return int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim >= 2 else None


QWEN_USER_TURN = [151644, 872, 198]  # <|im_start|> user \n


def _template_end(ids: list[int], template: str | None) -> int:
    """Tokens of the chat template before the prompt: up to the first ``<|im_start|>user\\n``.

    Where the text encoder cuts them (Qwen-Image, HunyuanImage 2.1, LongCat, Kandinsky 5, Krea 2) this is
    ComfyUI's own cut (its second ``<|im_start|>``, and the ``user\\n`` after it); a row without the turn
    (a Gemma or Mistral tokenizer) has none.
    """
    if template == "qwen chat":
        n = len(QWEN_USER_TURN)
        for i in range(len(ids) - n + 1):
            if ids[i:i + n] == QWEN_USER_TURN:
                return i + n
    return 0


class ContextTokens:
    """A CLIP's tokenization for the word search on a DiT: one token stream (the one its context holds),
    without the chat template around the prompt (the template of an empty prompt may differ: Boogu's).
    ``spaced_word`` is tokenized after a space, as byte-level BPE (Qwen, Llama) sees a word inside a sentence."""

    def __init__(self, clip: Any, layout: TextLayout, spaced_word: str | None = None) -> None:
        self.clip, self.layout, self.spaced_word = clip, layout, spaced_word

    def tokenize(self, text: str, **kwargs: Any) -> dict[str, Any]:
        if self.spaced_word is not None and text == self.spaced_word:
            text = " " + text
        tokens = self.clip.tokenize(text, **kwargs)
        stream = self.layout.token_stream
        if stream is not None and stream in tokens:
            tokens = {stream: tokens[stream]}
        if self.layout.template is None:
            return tokens
        out = {}
        for key, chunks in tokens.items():
            first = list(chunks[0]) if chunks else []
            ids = [int(pair[0]) for pair in first]
            out[key] = [first[_template_end(ids, self.layout.template):], *chunks[1:]]
        return out


def context_positions(clip: Any, prompt: str, word: str, layout: TextLayout | None) -> list[int]:
    """Context positions of ``word`` in ``prompt`` as the model's text attention sees them (see
    ``words_context_positions``). Raises ValueError when the word is not in the prompt."""
    return _positions(clip, prompt, [word.strip()], layout, lambda: None)[word.strip()]


def words_context_positions(clip: Any, prompt: str, words: str, layout: TextLayout | None,
                            check: Callable[[], None] = lambda: None) -> dict[str, list[int]]:
    """``words`` is comma separated ("dog, collar"); each maps to its context positions. ``check`` runs before
    each word (Cancel): a list of thousands of words must stop when the user asks."""
    return _positions(clip, prompt, word_names(words), layout, check)


def _positions(clip: Any, prompt: str, names: list[str], layout: TextLayout | None,
               check: Callable[[], None]) -> dict[str, list[int]]:
    """UNets: ``prompt_words`` on the CLIP. DiTs: the same on ``ContextTokens`` (a word not found is retried after
    a space, for byte-level BPE), shifted by the template tokens the text encoder keeps before the prompt.
    The prompt is tokenized once for all the words."""
    memo = MemoTokenizer(clip)
    tokenizer = memo if layout is None else ContextTokens(memo, layout)
    prompt_tokens = PromptTokens(tokenizer, prompt)
    shift = 0
    if layout is not None and layout.template_in_context:
        tokens = memo.tokenize(prompt)
        row = tokens.get(layout.token_stream) if layout.token_stream in tokens else next(iter(tokens.values()))
        shift = _template_end([int(pair[0]) for pair in row[0]], layout.template) if row else 0
    out: dict[str, list[int]] = {}
    for word in names:
        check()
        try:
            found = prompt_tokens.find(tokenizer, word)
        except ValueError as err:
            if layout is None:
                raise
            try:
                found = prompt_tokens.find(ContextTokens(memo, layout, spaced_word=word), word)
            except ValueError:
                raise err from None
        out[word] = [p + shift for p in found]
    return out


def joint_records(records: list[AttentionRecord]) -> list[AttentionRecord]:
    """Recorded maps of a DiT's joint attention only: of the calls kept with their key count (block[2]), the
    longest (see ``joint_calls``)."""
    joint = [r for r in records if r.layer == "joint"]
    if not joint:
        return records
    longest = max(r.block[2] for r in joint)
    return [r for r in records if r.layer != "joint" or r.block[2] == longest]


def _mask_bias(mask: torch.Tensor | None, rows: slice, image_start: int, n_img: int, n_q: int
               ) -> torch.Tensor | None:
    """An attention call's mask as an additive bias for the image queries' rows (batch, 1|heads, q, keys)."""
    if mask is None:
        return None
    m = mask
    if m.ndim == 2:
        m = m[:, None, None, :]
    elif m.ndim == 3:
        m = m[:, None]
    if m.shape[0] > 1:
        m = m[rows]
    if m.shape[-2] == n_q:
        m = m[..., image_start:image_start + n_img, :]
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, float("-inf"))
    return m.float()


def patch_control(model: Any, control: AttentionControl) -> Any:
    """A clone of ``model`` whose text-attention layers run through ``control`` (chaining existing patches)."""
    m = model.clone()
    install_control(m.model_options, m.model.diffusion_model, control)
    return m


def install_control(model_options: dict[str, Any], diffusion_model: Any, control: AttentionControl) -> None:
    """``control`` on every text-attention layer, written into ``model_options`` (a clone's, or a run's own)."""
    if control.layout is not None:
        control.image_pad_multiple = int(getattr(diffusion_model, "pad_tokens_multiple", None) or 1)
        _install_joint(model_options, control)
        return

    def attend(q: Any, k: Any, v: Any, extra: Any, site: SiteKey, prev: Any) -> Any:
        return control.attend(q, k, v, extra, site, prev)

    install_text_attention(model_options, diffusion_model, attend)


def _install_joint(model_options: dict[str, Any], control: AttentionControl) -> None:
    """DiTs: ComfyUI's ``optimized_attention_override`` (a transformer option) sees every attention call that
    passes the transformer options (Flux's with its block in them); recording reads q and k and leaves the
    call (and its output) alone. An override another pack set is chained."""
    options = model_options.setdefault("transformer_options", {})
    prev = options.get("optimized_attention_override")

    def override(func: Any, *args: Any, **kwargs: Any) -> Any:
        if control.phase == "record":
            q, k = args[0], args[1]
            if not kwargs.get("skip_reshape", False):  # (batch, tokens, heads*dim) -> (batch, heads, tokens, dim)
                heads = int(args[3] if len(args) > 3 else kwargs["heads"])
                q = q.reshape(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
                k = k.reshape(k.shape[0], k.shape[1], -1, q.shape[-1]).transpose(1, 2)
            mask = args[4] if len(args) > 4 else kwargs.get("mask")
            control.record_joint(q, k, kwargs.get("transformer_options") or {}, mask=mask, scale=kwargs.get("scale"))
        return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)

    options["optimized_attention_override"] = override

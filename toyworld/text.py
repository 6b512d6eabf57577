"""The toy world's text side: a 17-word vocabulary and a CLIP-like tokenizer over it.

Encoding follows SD1's CLIP layout at a tiny scale: ``<bos> word ... <eos> <pad> ...`` in a context
of 16 positions (14 words at most per section; longer prompts are split into several sections whose
encodings are concatenated, as ComfyUI does for CLIP's 77-token chunks). The empty prompt is
``<bos> <eos> <pad>...``. ``a red circle on a green background`` -> ``[1, 3, 6, 14, 4, 3, 7, 5, 2, 0, ...]``.

``ToyTokenizer`` has the interface ``comfy.sd.CLIP`` expects of a tokenizer (constructor keywords
``embedding_directory`` and ``tokenizer_data``, ``tokenize_with_weights``, ``untokenize``,
``state_dict``), and ``encode_token_weights`` is the matching half of the text-encoder wrapper, so the
loader node can build a stock CLIP object around both without this module importing ComfyUI.
Prompt weights use ComfyUI's syntax: ``(red:1.5)``, and ``(red)`` for x1.1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .world import COLOURS, SHAPES

PAD, BOS, EOS = 0, 1, 2
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "a", "on", "background", *COLOURS, *SHAPES)
WORD_IDS: dict[str, int] = {w: i for i, w in enumerate(VOCAB) if i > EOS}
CONTEXT_LENGTH = 16
MAX_WORDS = CONTEXT_LENGTH - 2  # per section, between <bos> and <eos>
TOKENIZER_KEY = "toy"  # key of the token dict, as SD1Tokenizer uses "l"

_LEXEME = re.compile(r"\\[()]|\(|\)|:\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?=\))|[A-Za-z]+|[^\sA-Za-z()]")


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """Words of a prompt with their weights; punctuation is dropped, ``(words:w)`` and ``(words)`` weight.

    Raises ValueError naming the vocabulary when a word is not in it.
    """
    out: list[tuple[str, float]] = []
    groups: list[list] = []  # [start index in out, explicit weight or None]
    for lex in _LEXEME.findall(text):
        if lex == "(":
            groups.append([len(out), None])
        elif lex == ")":
            if groups:
                start, w = groups.pop()
                factor = 1.1 if w is None else w
                out[start:] = [(word, wt * factor) for word, wt in out[start:]]
        elif lex.startswith(":") and len(lex) > 1:  # ":1.5" right before ")"
            if groups:
                groups[-1][1] = float(lex[1:].strip())
        elif lex[0].isalpha():
            word = lex.lower()
            if word not in WORD_IDS:
                raise ValueError(f"prompt: unknown word {lex!r} in {text!r}; the toy model knows only "
                                 f"{', '.join(WORD_IDS)} (e.g. 'a red circle on a green background')")
            out.append((word, 1.0))
        # anything else (commas, full stops, escaped brackets) carries no token
    return out


def _sections(words: Sequence[tuple[str, float]]) -> list[list[tuple[int, float, int]]]:
    """Split words into CLIP-like sections of (token, weight, word id); word ids count from 1, specials are 0."""
    sections = []
    for start in range(0, max(len(words), 1), MAX_WORDS):
        chunk = words[start:start + MAX_WORDS]
        sec = [(BOS, 1.0, 0)]
        sec += [(WORD_IDS[w], wt, start + k + 1) for k, (w, wt) in enumerate(chunk)]
        sec.append((EOS, 1.0, 0))
        sec += [(PAD, 1.0, 0)] * (CONTEXT_LENGTH - len(sec))
        sections.append(sec)
    return sections


def tokenize(text: str) -> list[int]:
    """Token ids of a one-section prompt (at most 14 words), padded to the context length."""
    words = parse_prompt(text)
    if len(words) > MAX_WORDS:
        raise ValueError(f"prompt: {len(words)} words, at most {MAX_WORDS} fit one context of {CONTEXT_LENGTH}")
    return [t for t, _, _ in _sections(words)[0]]


def encode_batch(texts: Sequence[str]) -> Tensor:
    """(B, 16) long token ids of one-section prompts (the training and evaluation path)."""
    return torch.tensor([tokenize(t) for t in texts], dtype=torch.long).view(len(texts), CONTEXT_LENGTH)


EMPTY: tuple[int, ...] = tuple(tokenize(""))


def word_positions(prompt: str, word: str) -> list[int]:
    """Indices of ``word`` in the prompt's encoded context (all sections concatenated, 16 per section).

    These are the key positions of the cross-attention maps, e.g. ``word_positions("a red circle on a
    green background", "a") == [1, 5]``.
    """
    w = word.strip().lower()
    if w not in WORD_IDS:
        raise ValueError(f"word: {word!r} is not in the toy vocabulary ({', '.join(WORD_IDS)})")
    tok = WORD_IDS[w]
    flat = [t for sec in _sections(parse_prompt(prompt)) for t, _, _ in sec]
    return [i for i, t in enumerate(flat) if t == tok]


class ToyTokenizer:
    """Tokenizer with the interface ``comfy.sd.CLIP`` uses (shaped like ``comfy.sd1_clip.SD1Tokenizer``).

    ``tokenize_with_weights`` returns ``{"toy": sections}``, each section a list of 16 ``(token, weight)``
    pairs, or ``(token, weight, word_id)`` triples with ``return_word_ids``.
    """

    key = TOKENIZER_KEY

    def __init__(self, embedding_directory: str | None = None, tokenizer_data: dict | None = None) -> None:
        self.embedding_directory = embedding_directory  # unused: the toy model has no textual inversion
        self.tokenizer_data = dict(tokenizer_data or {})

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs) -> dict[str, list[list]]:
        """Prompt -> {"toy": [[(token, weight[, word_id]), ...] x 16] per section}."""
        words = parse_prompt(text) if not kwargs.get("disable_weights") else [
            (w, 1.0) for w, _ in parse_prompt(text)]
        sections = _sections(words)
        if not return_word_ids:
            sections = [[(t, w) for t, w, _ in sec] for sec in sections]
        return {self.key: sections}

    def untokenize(self, token_weight_pair: Sequence[tuple]) -> list[tuple[tuple, str]]:
        """Pairs -> [((token, weight), word)], as SDTokenizer.untokenize."""
        return [(p, VOCAB[p[0]]) for p in token_weight_pair]

    def state_dict(self) -> dict:
        return {}


def encode_token_weights(encoder: Callable[[Tensor], Tensor], token_weight_pairs: dict | list) -> tuple[Tensor, Tensor]:
    """Encode tokenizer output to (cond (1, 16 * sections, C), pooled (1, C)).

    ``encoder`` maps (N, 16) ids to (N, 16, C) states. A token of weight w becomes
    ``empty + w * (state - empty)``, with ``empty`` the encoding of the empty prompt at that position
    (the same rule ComfyUI applies to CLIP); pooled is the first section's state at its ``<eos>``.
    """
    sections = token_weight_pairs[TOKENIZER_KEY] if isinstance(token_weight_pairs, dict) else token_weight_pairs
    if len(sections) == 0:
        sections = [[(t, 1.0) for t in EMPTY]]
    ids = torch.tensor([[int(p[0]) for p in sec] for sec in sections], dtype=torch.long)
    weights = torch.tensor([[float(p[1]) for p in sec] for sec in sections], dtype=torch.float32)
    weighted = bool((weights != 1.0).any())
    batch = torch.cat([ids, torch.tensor([EMPTY])]) if weighted else ids
    device = next((p.device for p in getattr(encoder, "parameters", lambda: iter(()))()), torch.device("cpu"))
    out = encoder(batch.to(device))
    z = out[: ids.shape[0]]
    if weighted:
        empty = out[-1:]
        w = weights.to(z.device, z.dtype).unsqueeze(-1)
        z = empty + w * (z - empty)
    eos = int((ids[0] == EOS).nonzero()[0])
    pooled = out[0:1, eos]
    return z.reshape(1, -1, z.shape[-1]), pooled

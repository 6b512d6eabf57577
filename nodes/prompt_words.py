"""Words of a prompt -> positions in the text context, with the CLIP object's own tokenizer.

Why: attention maps are indexed by context position, but users think in words ("dog"). Asking the
CLIP object (SD1's, SDXL's two, or the embedded toy model's tokenizer) keeps the mapping right for
prompt weights, multi-token words and 77-token chunks, without knowing the tokenizer's internals.
"""

from __future__ import annotations

from typing import Any


def _token_rows(clip: Any, text: str) -> list[list[int]]:
    """Token ids per context chunk of ``text`` for the tokenizer whose positions the model sees.

    SDXL tokenizes twice ("g" and "l") with the same layout; "l" is taken when present. SD3's context
    starts with that CLIP part too. Flux's context is T5's alone ("t5xxl" beside an "l" used only for the
    pooled vector), so T5 is taken when there is no "g".
    """
    tokens = clip.tokenize(text)
    if "t5xxl" in tokens and "g" not in tokens:
        key = "t5xxl"
    else:
        key = "l" if "l" in tokens else sorted(tokens)[0]
    return [[int(pair[0]) for pair in chunk] for chunk in tokens[key]]


def token_row(clip: Any, text: str) -> list[int]:
    """Token ids of ``text`` at their context positions (chunks concatenated), as the attention sees them."""
    return [t for row in _token_rows(clip, text) for t in row]


def word_token_positions(clip: Any, prompt: str, word: str) -> list[int]:
    """Context positions (chunks concatenated) of every token of every occurrence of ``word`` in ``prompt``.

    Raises ValueError naming the word and the prompt when it does not occur.
    """
    special = {t for row in _token_rows(clip, "") for t in row}  # start, end and padding tokens
    pieces = [t for row in _token_rows(clip, word.strip()) for t in row if t not in special]
    if not word.strip() or not pieces:
        raise ValueError(f"word {word!r} has no tokens of its own; give a word of the prompt")
    flat = token_row(clip, prompt)
    n = len(pieces)
    found = [i + k for i in range(len(flat) - n + 1) if flat[i:i + n] == pieces for k in range(n)]
    if not found:
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r}; give one of its words")
    return found


def words_token_positions(clip: Any, prompt: str, words: str) -> dict[str, list[int]]:
    """``words`` is comma separated ("dog, collar"); each maps to its positions (see word_token_positions)."""
    names = [w.strip() for w in words.split(",") if w.strip()]
    if not names:
        raise ValueError("no words given; list one or more words of the prompt, separated by commas")
    return {w: word_token_positions(clip, prompt, w) for w in names}

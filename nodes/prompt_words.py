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


class MemoTokenizer:
    """A CLIP's ``tokenize``, memoised: a long prompt is tokenized once however many words are looked up in it."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip
        self._memo: dict[str, dict[str, Any]] = {}

    def tokenize(self, text: str, **kwargs: Any) -> dict[str, Any]:
        if kwargs:
            return self.clip.tokenize(text, **kwargs)
        if text not in self._memo:
            self._memo[text] = self.clip.tokenize(text)
        return self._memo[text]


class PromptTokens:
    """A prompt's tokens at their context positions, indexed by token id, so each word is found without
    scanning the prompt again (a 10,000-word prompt and a 5,000-word list stay fast)."""

    def __init__(self, clip: Any, prompt: str) -> None:
        self.prompt = prompt
        self.special = {t for row in _token_rows(clip, "") for t in row}  # start, end and padding tokens
        self.flat = token_row(clip, prompt)
        self.index: dict[int, list[int]] = {}
        for i, t in enumerate(self.flat):
            self.index.setdefault(t, []).append(i)

    def find(self, clip: Any, word: str) -> list[int]:
        """Context positions (chunks concatenated) of every token of every occurrence of ``word``."""
        pieces = [t for row in _token_rows(clip, word.strip()) for t in row if t not in self.special]
        if not word.strip() or not pieces:
            raise ValueError(f"word {word!r} has no tokens of its own; give a word of the prompt")
        n = len(pieces)
        found = [i + k for i in self.index.get(pieces[0], []) if self.flat[i:i + n] == pieces for k in range(n)]
        if not found:
            shown = self.prompt if len(self.prompt) <= 200 else self.prompt[:200] + "..."
            raise ValueError(f"word {word!r} is not in the prompt {shown!r}; give one of its words")
        return found


def word_names(words: str) -> list[str]:
    """The comma-separated words of ``words`` ("dog, collar"), or a ValueError saying what to give."""
    names = [w.strip() for w in words.split(",") if w.strip()]
    if not names:
        raise ValueError("no words given; list one or more words of the prompt, separated by commas")
    return names


def word_token_positions(clip: Any, prompt: str, word: str) -> list[int]:
    """Context positions (chunks concatenated) of every token of every occurrence of ``word`` in ``prompt``.

    Raises ValueError naming the word and the prompt when it does not occur.
    """
    return PromptTokens(clip, prompt).find(clip, word)

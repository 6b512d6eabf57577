"""Words -> context positions with the CLIP object's own tokenizer (SD1's BPE and the toy model's)."""

from __future__ import annotations

import importlib

import pytest
from test_toy_model import load_random_toy, loader_module

from testbed import comfyhost
from testbed.tiny import make_clip
from toyworld import text as T
from toyworld import world as W


@pytest.fixture(scope="module")
def words(host):
    return importlib.import_module(loader_module().__name__.rsplit(".", 1)[0] + ".prompt_words")


@pytest.fixture(scope="module")
def sd1_clip(host):
    return make_clip(0)


def test_sd1_positions_count_the_start_token(words, sd1_clip):
    assert words.word_token_positions(sd1_clip, "a photo of a dog", "dog") == [5]
    assert words.word_token_positions(sd1_clip, "a photo of a dog", "a") == [1, 4]
    assert words.word_token_positions(sd1_clip, "a (dog:1.3) on the grass", "dog") == [2]  # weights don't shift


def test_sd1_multi_token_word_gives_all_its_tokens(words, sd1_clip):
    pos = words.word_token_positions(sd1_clip, "a photo of an axolotl", "axolotl")
    assert len(pos) > 1 and pos == list(range(pos[0], pos[0] + len(pos))) and pos[0] == 5


def test_sd1_second_chunk_positions_are_offset_by_the_chunk(words, sd1_clip):
    prompt = " ".join(["cat"] * 80) + " dog"
    dog = sd1_clip.tokenize("dog")["l"][0][1][0]  # after the start token
    rows = [[t for t, *_ in row] for row in sd1_clip.tokenize(prompt)["l"]]
    assert len(rows) == 2 and dog not in rows[0] and rows[1].count(dog) == 1
    assert words.word_token_positions(sd1_clip, prompt, "dog") == [77 + rows[1].index(dog)]


def test_toy_positions_match_the_toy_vocabulary(words, node_classes, tmp_path):
    clip = load_random_toy(node_classes, tmp_path, seed=0)[1]
    for caption in W.held_out(6).captions:
        for word in caption.split():
            assert words.word_token_positions(clip, caption, word) == T.word_positions(caption, word), (caption, word)


def test_missing_or_empty_words_are_clear_errors(words, sd1_clip):
    with pytest.raises(ValueError, match=r"word 'cat' is not in the prompt 'a photo of a dog'"):
        words.word_token_positions(sd1_clip, "a photo of a dog", "cat")
    with pytest.raises(ValueError, match="no tokens of its own"):
        words.word_token_positions(sd1_clip, "a photo of a dog", "  ")
    control = comfyhost.pack_module("nodes.attention_control")
    with pytest.raises(ValueError, match="no words given"):
        control.words_context_positions(sd1_clip, "a photo of a dog", " , ", None)
    assert control.words_context_positions(sd1_clip, "a photo of a dog", "dog, photo", None) == {"dog": [5],
                                                                                                "photo": [2]}


def test_a_long_prompt_is_tokenized_once_for_many_words_and_cancel_is_checked_per_word(sd1_clip):
    """10,000 words of prompt and 5,000 words to find: once tokenized, each word is a lookup (this ran for
    minutes when the prompt was tokenized again for every word), and Cancel is asked before every word."""
    control = comfyhost.pack_module("nodes.attention_control")
    calls = []

    class Counting:
        def tokenize(self, text, **kwargs):
            calls.append(text)
            return sd1_clip.tokenize(text, **kwargs)

    prompt = " ".join(["a photo of a dog on the grass"] * 1250)  # 10,000 words
    asked = []
    found = control.words_context_positions(Counting(), prompt, ", ".join(["dog", "grass"] * 2500), None,
                                            check=lambda: asked.append(1))
    assert len(found["dog"]) == 1250 and len(asked) == 5000
    assert calls.count(prompt) == 1 and len(calls) <= 4  # the prompt, "", and each distinct word once

    def cancel():
        raise InterruptedError

    with pytest.raises(InterruptedError):
        control.words_context_positions(Counting(), prompt, "dog, grass", None, check=cancel)

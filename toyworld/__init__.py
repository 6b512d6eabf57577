"""The embedded toy world: a seeded renderer with exact masks, a deterministic judge, the tokenizer and
the toy model's definition. Pure torch: nothing here imports ComfyUI at module level (``model.build_unet``
imports it when called)."""

from . import judge, model, text, world
from .judge import Judgement, accuracy, agreement
from .text import ToyTokenizer, encode_batch, encode_token_weights, tokenize, word_positions
from .world import COLOURS, PALETTE, SHAPES, Batch, Scene, caption, held_out, random_batch, render

__all__ = [
    "COLOURS",
    "PALETTE",
    "SHAPES",
    "Batch",
    "Judgement",
    "Scene",
    "ToyTokenizer",
    "accuracy",
    "agreement",
    "caption",
    "encode_batch",
    "encode_token_weights",
    "held_out",
    "judge",
    "model",
    "random_batch",
    "render",
    "text",
    "tokenize",
    "word_positions",
    "world",
]

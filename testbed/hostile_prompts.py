"""Named hostile or clumsy prompts for the server layer (tests/server/test_hostile_prompts.py).

Why a table: the issue asks that every node of the pack answers bad input with a ValueError-style
message that names the node, the input and the fix, over HTTP, and keeps serving. Each ``Case`` here is
one such input, with a readable id, the API prompt that carries it and what a clear answer is:

- ``Refusal``: the prompt is queued and fails in the pack; its ``execution_error`` message must start
  with the node's display name, quote the input, say what to do, and carry no raw Python error. Where
  the pack already answers, the message seen today is pinned (``exact``); where it does not, the
  expectation is what a fix must satisfy (node, input, key words), since its wording does not exist yet.
- ``Validation``: ComfyUI's own /prompt validation refuses it (HTTP 400, ``node_errors``); then
  ComfyUI's message must name the value and the bound, and the details the input.

Graphs use the pack's embedded toy model (32x32 pixel-space images, a few steps: fractions of a second)
and, where a second model or a 4-channel SD1-shaped one is needed, the tinypack's tiny random UNet.
Pure data and plain functions: no ComfyUI import, so the test module can build everything up front.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Graph = dict[str, dict[str, Any]]

SOURCE = "a red circle on a green background"
TARGET = "a yellow circle on a green background"
OTHER = "a blue square on a red background"
#: 10,000 words of the toy vocabulary (the source prompt repeated): the toy tokenizer makes ~715 sections of it
LONG_PROMPT = " ".join((SOURCE.split() * 1429)[:10_000])
NAN, INF = math.nan, math.inf

#: Fragments of raw Python errors: a message carrying one did not come from a check of the pack.
RAW_MARKERS = (
    "Out of range float values", "maximum recursion depth", "[Errno", "Invalid learning rate", "Traceback",
    "TypeError", "KeyError", "AttributeError", "IndexError", "RuntimeError", "ZeroDivisionError", "OverflowError",
    "AssertionError", "NoneType", "object has no attribute", "not subscriptable", "index out of range",
    "unsupported operand", "cannot reshape", "must match the size", "Expected ", "division by zero",
)
#: Words that tell the user what to do (a message must contain one: "the fix").
FIX_WORDS = (
    "use ", "set ", "connect", "choose", "give", "type ", "save ", "tick", "encode", "leave ", "lower", "scale ",
    "pick", "must", "refresh", "select", "remove", "rename", "enter", "at most", "at least", "expected", "only ",
    "compare",
)
#: The longest message a hostile input may produce: a 10,000-word prompt or 2,100 folders must not be echoed.
MAX_MESSAGE = 1200

#: Display names of the pack's nodes, as messages name them.
INVERT, EDIT, SAVE, LOAD = "Invert", "Edit from Inversion", "Save Inversion", "Load Inversion"
MASK, BLENDED, NTI, CHECK = "Attention Mask", "Blended Guidance Guider", "Null-text Inversion", "Round-trip Check"
EDICT_NODE, BDIA_NODE, AIDI_NODE, REX_NODE = "EDICT Solver", "BDIA Solver", "AIDI Solver", "Rex Solver"
TOY = "Load Embedded Toy Model"


# --- expectations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A clear refusal by the pack at execution time (see the module docstring)."""

    node: str  # display name the message starts with
    inputs: tuple[str, ...] = ()  # the message quotes at least one of these ('p', 'guider', ...); () = none needed
    words: tuple[tuple[str, ...], ...] = ()  # each group: the message contains at least one (case-insensitive)
    exact: str | None = None  # today's message, pinned where the pack already answers clearly
    or_success: bool = False  # a clumsy but valid input: a success with finite results also passes
    #: a host whose /prompt validation checks it first (ComfyUI 0.28 checks V3 combos, 0.3.75 does not) may
    #: answer with this validation error instead
    validated: Validation | None = None


@dataclass(frozen=True)
class Validation:
    """ComfyUI's /prompt validation refuses the prompt: HTTP 400, node_errors[node_id] with this message."""

    node_id: str
    input_name: str
    message: str  # e.g. "Value inf bigger than max of 1.0"


Expectation = Refusal | Validation


@dataclass(frozen=True)
class Context:
    """Where a case runs: the server's base folder and the folder around it (which must stay untouched)."""

    base: Path
    outer: Path

    @property
    def input(self) -> Path:
        return self.base / "input"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Context], Graph]
    expect: Expectation
    setup: Callable[[Context], None] | None = None  # files it needs in input/ (or around the base, for links)
    skip: str | None = None


# --- graph pieces ---------------------------------------------------------------------------------------------


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def edict(p: float = 0.93) -> dict[str, Any]:
    return node("ExactInversion_EDICTSolver", p=p, p_rule="fixed", state_dtype="float64")


def toy_base(steps: int = 3, cfg: float = 1.0, denoise: float = 1.0, solver: dict | None = None,
             source: str = SOURCE) -> Graph:
    """Toy model, the example image encoded, source/target/empty prompts, a guider, a grid and a solver."""
    return {
        "toy": node("ExactInversion_ToyModelLoader", model_file="toy_model.safetensors"),
        "image": node("LoadImage", image="toy_example.png"),
        "source": node("CLIPTextEncode", text=source, clip=["toy", 1]),
        "target": node("CLIPTextEncode", text=TARGET, clip=["toy", 1]),
        "empty": node("CLIPTextEncode", text="", clip=["toy", 1]),
        "latent": node("VAEEncode", pixels=["image", 0], vae=["toy", 2]),
        "guider": node("CFGGuider", model=["toy", 0], positive=["source", 0], negative=["empty", 0], cfg=cfg),
        "sigmas": node("BasicScheduler", model=["toy", 0], scheduler="normal", steps=steps, denoise=denoise),
        "solver": solver or edict(),
    }


def invert(graph: Graph, latent: str = "latent", sigmas: str = "sigmas", guider: str = "guider") -> Graph:
    graph["invert"] = node("ExactInversion_Invert", guider=[guider, 0], sampler=["solver", 0], sigmas=[sigmas, 0],
                           latent=[latent, 0])
    return graph


def edit_check(graph: Graph, guider: str = "guider", inversion: str = "invert") -> Graph:
    """Edit the inversion and report the round trip (a NaN result shows as 'nan' in the report)."""
    graph["edit"] = node("ExactInversion_Edit", guider=[guider, 0], inversion=[inversion, 0])
    graph["check"] = node("ExactInversion_RoundTripCheck", inversion=[inversion, 0], result_latent=["edit", 0])
    return graph


def invert_edit(steps: int = 3, cfg: float = 1.0, denoise: float = 1.0, solver: dict | None = None) -> Graph:
    return edit_check(invert(toy_base(steps, cfg, denoise, solver)))


def valid_prompt(k: int) -> Graph:
    """The cheap valid prompt run after every case: EDICT on the toy model, 3 steps, a denoise that differs
    per call so ComfyUI's cache cannot answer it (Invert and Edit really run)."""
    return invert_edit(steps=3, denoise=round(1.0 - 0.001 * (k % 500), 4))


def attention_mask(prompt: str = SOURCE, words: str = "red", start: float = 0.0, end: float = 1.0,
                   resolution: str = "all", steps: int = 3, mask_guider: str = "guider", source: str = SOURCE) -> Graph:
    """Invert with EDICT, then an Attention Mask; the mask goes to an image compared with itself, so a NaN
    mask shows as 'nan' in the Round-trip Check's report."""
    graph = invert(toy_base(steps, source=source))
    graph["mask"] = node("ExactInversion_AttentionMask", guider=[mask_guider, 0], inversion=["invert", 0],
                         clip=["toy", 1], prompt=prompt, words=words, resolution=resolution, start=start, end=end)
    graph["mask_image"] = node("MaskToImage", mask=["mask", 0])
    graph["check"] = node("ExactInversion_RoundTripCheck", original_image=["mask_image", 0],
                          result_image=["mask_image", 0])
    return graph


BLENDED_DEFAULTS: dict[str, Any] = {
    "source_prompt": SOURCE, "target_prompt": TARGET, "anchor": "red", "anchor_role": "edit region", "cfg": 1.0,
    "target_cfg": 4.0, "threshold": 0.6, "sharpness": 5.0, "resolution": "all", "injection": 0.6,
    "blended_guidance": True, "local_blend": True, "eta": 0.0, "seed": 0,
}


def blended(steps: int = 3, into: str = "edit", **options: Any) -> Graph:
    """Invert with EDICT, then edit through a Blended Guidance Guider (``into``: 'edit', 'invert' or 'sampler')."""
    graph = toy_base(steps)
    graph["blend"] = node("ExactInversion_BlendedGuidance", model=["toy", 0], source_positive=["source", 0],
                          target_positive=["target", 0], negative=["empty", 0], clip=["toy", 1],
                          **{**BLENDED_DEFAULTS, **options})
    if into == "invert":
        return edit_check(invert(graph, guider="blend"))
    if into == "sampler":
        graph["noise"] = node("DisableNoise")
        graph["sample"] = node("SamplerCustomAdvanced", noise=["noise", 0], guider=["blend", 0],
                               sampler=["solver", 0], sigmas=["sigmas", 0], latent_image=["latent", 0])
        graph["check"] = node("ExactInversion_RoundTripCheck", original_latent=["latent", 0],
                              result_latent=["sample", 0])
        return graph
    invert(graph)
    graph["edit"] = node("ExactInversion_Edit", guider=["blend", 0], inversion=["invert", 0])
    graph["check"] = node("ExactInversion_RoundTripCheck", original_latent=["latent", 0], result_latent=["edit", 0])
    return graph


def without_attention(graph: Graph) -> Graph:
    """The blended guider's model swapped for the tinypack's UNet without transformer blocks."""
    graph["plain"] = node("ExactInversionTest_TinyCheckpointLoader", seed=0, attention=False)
    graph["blend"]["inputs"]["model"] = ["plain", 0]
    return graph


NTI_DEFAULTS: dict[str, Any] = {
    "method": "nti", "inner_steps": 2, "learning_rate": 0.01, "early_stop": 1e-5, "early_stop_schedule": "growing",
    "starts": 2, "hops": 0, "start_scale": 0.01, "seed": 0,
}


def null_text(steps: int = 3, cfg: float = 4.0, solver: dict | None = None, **options: Any) -> Graph:
    """Null-text Inversion (DDIM 'next' pivot) at cfg 4, then an Edit at the same cfg and a round-trip report."""
    graph = toy_base(steps, cfg=cfg, solver=solver or node("ExactInversion_DDIMSolver", inversion_label="next",
                                                             state_dtype="float64"))
    graph["invert"] = node("ExactInversion_NullTextInversion", guider=["guider", 0], sampler=["solver", 0],
                           sigmas=["sigmas", 0], latent=["latent", 0], **{**NTI_DEFAULTS, **options})
    return edit_check(graph)


def tiny_base(seed: int = 0, steps: int = 3, prefix: str = "") -> Graph:
    """The tinypack's SD1-shaped random model (4-channel latents), an empty 64x64 latent, DDIM; node ids
    prefixed with ``prefix`` so it can sit beside a toy graph."""
    p = prefix
    return {
        p + "tiny": node("ExactInversionTest_TinyCheckpointLoader", seed=seed),
        p + "latent": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        p + "text": node("CLIPTextEncode", text="a cat", clip=[p + "tiny", 1]),
        p + "guider": node("CFGGuider", model=[p + "tiny", 0], positive=[p + "text", 0], negative=[p + "text", 0],
                           cfg=1.0),
        p + "sigmas": node("BasicScheduler", model=[p + "tiny", 0], scheduler="normal", steps=steps, denoise=1.0),
        p + "solver": node("ExactInversion_DDIMSolver", inversion_label="current", state_dtype="float64"),
    }


def save_load(prefix: Any = "hostile/ok", file_name: Any = None, **load: Any) -> Graph:
    """Invert (toy, EDICT), save, load (by Save's output, or by ``file_name``), edit, report."""
    graph = invert(toy_base())
    graph["save"] = node("ExactInversion_SaveInversion", inversion=["invert", 0], filename_prefix=prefix)
    graph["load"] = node("ExactInversion_LoadInversion", file="(none)", allow_mismatch=False,
                         file_name=["save", 0] if file_name is None else file_name, **load)
    return edit_check(graph, inversion="load")


def save_only(prefix: Any) -> Graph:
    graph = invert(toy_base())
    graph["save"] = node("ExactInversion_SaveInversion", inversion=["invert", 0], filename_prefix=prefix)
    return graph


def load_only(file_name: Any, combo: str = "(none)") -> Graph:
    """Load Inversion alone with a literal name (no inversion runs), then Edit and a report."""
    graph = toy_base()
    graph["load"] = node("ExactInversion_LoadInversion", file=combo, allow_mismatch=False, file_name=file_name)
    return edit_check(graph, inversion="load")


def with_node(graph: Graph, node_id: str, **inputs: Any) -> Graph:
    graph[node_id] = {**graph[node_id], "inputs": {**graph[node_id]["inputs"], **inputs}}
    return graph


# --- files a case needs ---------------------------------------------------------------------------------------


def write_latent(path: Path, shape: tuple[int, ...], fill: float = 0.0) -> None:
    """A ComfyUI .latent file (safetensors, 'latent_tensor', format version 0: no rescaling on load),
    written by hand so the test needs no torch: float32 values ``fill`` (NaN allowed)."""
    count = math.prod(shape)
    data = struct.pack(f"<{count}f", *([fill] * count))
    header = {"latent_tensor": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, len(data)]},
              "latent_format_version_0": {"dtype": "F32", "shape": [], "data_offsets": [len(data), len(data) + 4]}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data + struct.pack("<f", 0.0))


def latent_file(name: str, shape: tuple[int, ...], fill: float = 0.0) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        write_latent(ctx.input / name, shape, fill)
    return setup


def load_latent(name: str) -> Graph:
    """Invert a latent from a LoadLatent file (any shape or value the file holds)."""
    graph = toy_base()
    graph["file_latent"] = node("LoadLatent", latent=name)
    return edit_check(invert(graph, latent="file_latent"))


def garbage_file(ctx: Context) -> None:
    (ctx.input / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}\xff" + bytes(range(64)))


def folder_named_file(ctx: Context) -> None:
    (ctx.input / "folder.safetensors").mkdir(exist_ok=True)


def link_outside(ctx: Context) -> None:
    secret = ctx.outer / "secret.safetensors"
    if not secret.exists():
        secret.write_bytes(b"not yours")
    link = ctx.input / "link_outside.safetensors"
    if not link.is_symlink():
        link.symlink_to(secret)


# --- the cases ------------------------------------------------------------------------------------------------

#: every float input of every pack node: (node display name, the graph with the value, node id, input name,
#: min, max of its widget)
FLOAT_INPUTS: list[tuple[str, Callable[[float], Graph], str, str, float, float]] = [
    (EDICT_NODE, lambda v: invert_edit(solver=edict(v)), "solver", "p", 0.5, 1.0),
    (BDIA_NODE, lambda v: invert_edit(solver=node("ExactInversion_BDIASolver", gamma=v, state_dtype="float64")),
     "solver", "gamma", 0.5, 1.0),
    (AIDI_NODE, lambda v: invert_edit(solver=node("ExactInversion_AIDISolver", variant="A", max_iter=3, tol=v,
                                                  window=3, state_dtype="float64")), "solver", "tol", 0.0, 0.01),
    (REX_NODE, lambda v: invert_edit(solver=node("ExactInversion_RexSolver", tableau="euler", prediction="data",
                                                 zeta=v, state_dtype="float64")), "solver", "zeta", 0.9, 1.0),
    (MASK, lambda v: attention_mask(start=v), "mask", "start", 0.0, 1.0),
    (MASK, lambda v: attention_mask(end=v), "mask", "end", 0.0, 1.0),
    (BLENDED, lambda v: blended(cfg=v), "blend", "cfg", 0.0, 30.0),
    (BLENDED, lambda v: blended(target_cfg=v), "blend", "target_cfg", 0.0, 30.0),
    (BLENDED, lambda v: blended(threshold=v), "blend", "threshold", 0.01, 0.99),
    (BLENDED, lambda v: blended(sharpness=v), "blend", "sharpness", 0.1, 100.0),
    (BLENDED, lambda v: blended(injection=v), "blend", "injection", 0.0, 1.0),
    (BLENDED, lambda v: blended(eta=v), "blend", "eta", 0.0, 1.0),
    (NTI, lambda v: null_text(learning_rate=v), "invert", "learning_rate", 1e-5, 1.0),
    (NTI, lambda v: null_text(early_stop=v), "invert", "early_stop", 0.0, 1.0),
    (NTI, lambda v: null_text(method="bias_correction", start_scale=v), "invert", "start_scale", 0.0, 1.0),
]

_SLUG = {EDICT_NODE: "edict", BDIA_NODE: "bdia", AIDI_NODE: "aidi", REX_NODE: "rex", MASK: "mask", BLENDED: "blended",
         NTI: "nulltext"}


def _non_finite_cases() -> list[Case]:
    cases = []
    for display, build, node_id, name, lo, hi in FLOAT_INPUTS:
        slug = f"{_SLUG[display]}-{name.replace('_', '-')}"
        cases.append(Case(f"{slug}-nan", lambda ctx, b=build: b(NAN),
                          Refusal(display, (name,), words=(("nan", "finite", "number"),))))
        cases.append(Case(f"{slug}-inf", lambda ctx, b=build: b(INF),
                          Validation(node_id, name, f"Value inf bigger than max of {hi}")))
        cases.append(Case(f"{slug}-minus-inf", lambda ctx, b=build: b(-INF),
                          Validation(node_id, name, f"Value -inf smaller than min of {lo}")))
    return cases


def _guider_cfg_cases() -> list[Case]:
    """The stock CFGGuider's cfg, NaN, feeding each pack node that runs the model through a guider."""
    nan_words = (("cfg",), ("nan", "finite", "number"))

    def nan_edit(ctx: Context) -> Graph:
        graph = invert(toy_base())
        graph["bad_guider"] = node("CFGGuider", model=["toy", 0], positive=["target", 0], negative=["empty", 0],
                                   cfg=NAN)
        return edit_check(graph, guider="bad_guider")

    def nan_mask(ctx: Context) -> Graph:
        graph = attention_mask(mask_guider="bad_guider")
        graph["bad_guider"] = node("CFGGuider", model=["toy", 0], positive=["source", 0], negative=["empty", 0],
                                   cfg=NAN)
        return graph

    return [
        Case("guider-cfg-nan-into-invert", lambda ctx: invert_edit(cfg=NAN), Refusal(INVERT, ("guider",), nan_words)),
        Case("guider-cfg-nan-into-edit", nan_edit, Refusal(EDIT, ("guider",), nan_words)),
        Case("guider-cfg-nan-into-nulltext", lambda ctx: null_text(cfg=NAN), Refusal(NTI, ("guider",), nan_words)),
        Case("guider-cfg-nan-into-attention-mask", nan_mask, Refusal(MASK, ("guider",), nan_words)),
        Case("guider-cfg-inf", lambda ctx: invert_edit(cfg=INF),
             Validation("guider", "cfg", "Value inf bigger than max of 100.0")),
    ]


def _type_and_range_cases() -> list[Case]:
    def literal(node_id: str, **inputs: Any) -> Callable[[Context], Graph]:
        return lambda ctx: with_node(invert_edit(), node_id, **inputs)

    return [
        Case("edict-p-as-text", literal("solver", p="abc"),
             Validation("solver", "p", "Failed to convert an input value to a FLOAT value")),
        Case("bdia-gamma-as-text-nan",
             lambda ctx: invert_edit(solver=node("ExactInversion_BDIASolver", gamma="nan", state_dtype="float64")),
             Refusal(BDIA_NODE, ("gamma",), (("nan", "finite", "number"),))),
        Case("aidi-max-iter-huge",
             lambda ctx: invert_edit(solver=node("ExactInversion_AIDISolver", variant="A", max_iter=10**30,
                                                 tol=1e-8, window=3, state_dtype="float64")),
             Validation("solver", "max_iter", f"Value {10**30} bigger than max of 50")),
        Case("aidi-max-iter-infinity",
             lambda ctx: invert_edit(solver=node("ExactInversion_AIDISolver", variant="A", max_iter=INF,
                                                 tol=1e-8, window=3, state_dtype="float64")),
             Validation("solver", "max_iter", "Failed to convert an input value to a INT value")),
        Case("nulltext-inner-steps-nan", lambda ctx: null_text(inner_steps=NAN),
             Validation("invert", "inner_steps", "Failed to convert an input value to a INT value")),
        Case("scheduler-steps-negative", literal("sigmas", steps=-5),
             Validation("sigmas", "steps", "Value -5 smaller than min of 1")),
        Case("blended-seed-huge", lambda ctx: blended(seed=2**64),
             Validation("blend", "seed", f"Value {2**64} bigger than max of {2**64 - 1}")),
        Case("solver-state-dtype-float16", literal("solver", state_dtype="float16"),
             Refusal(EDICT_NODE, ("state_dtype",), exact="EDICT Solver: input 'state_dtype' must be one of "
                                                         "auto, float64, float32, got 'float16'",
                     validated=Validation("solver", "state_dtype", "Value not in list"))),
        Case("invert-guider-as-number", lambda ctx: with_node(invert_edit(), "invert", guider=5),
             Refusal(INVERT, ("guider",), (("guider",),))),
        Case("invert-latent-as-text", lambda ctx: with_node(invert_edit(), "invert", latent="abc"),
             Refusal(INVERT, ("latent",), (("latent",),))),
        Case("invert-sigmas-as-text", lambda ctx: with_node(invert_edit(), "invert", sigmas="abc"),
             Refusal(INVERT, ("sigmas",), (("sigmas",),))),
        Case("edit-inversion-as-text", lambda ctx: with_node(invert_edit(), "edit", inversion="abc"),
             Refusal(EDIT, ("inversion",), (("invert",),))),
        Case("edit-guider-as-text", lambda ctx: with_node(invert_edit(), "edit", guider="abc"),
             Refusal(EDIT, ("guider",), (("guider",),))),
        Case("save-inversion-as-text", lambda ctx: with_node(save_only("hostile/x"), "save", inversion="abc"),
             Refusal(SAVE, ("inversion",), (("invert",),))),
        Case("roundtrip-check-inversion-as-text",
             lambda ctx: with_node(invert_edit(), "check", inversion="abc"),
             Refusal(CHECK, ("inversion",), (("invert",),))),
        Case("mask-inversion-as-text", lambda ctx: with_node(attention_mask(), "mask", inversion="abc"),
             Refusal(MASK, ("inversion",), (("invert",),))),
        Case("mask-clip-as-number", lambda ctx: with_node(attention_mask(), "mask", clip=5),
             Refusal(MASK, ("clip",), (("clip",),))),
        Case("mask-guider-as-text", lambda ctx: with_node(attention_mask(), "mask", guider="abc"),
             Refusal(MASK, ("guider",), (("guider",),))),
        Case("blended-model-as-text", lambda ctx: with_node(blended(), "blend", model="abc"),
             Refusal(BLENDED, ("model",), (("model",),))),
        Case("blended-clip-as-number", lambda ctx: with_node(blended(), "blend", clip=5),
             Refusal(BLENDED, ("clip",), (("clip",),))),
        Case("blended-conditioning-as-text", lambda ctx: with_node(blended(), "blend", target_positive="abc"),
             Refusal(BLENDED, ("target_positive",), (("conditioning", "prompt"),))),
        Case("nulltext-latent-as-text", lambda ctx: with_node(null_text(), "invert", latent="abc"),
             Refusal(NTI, ("latent",), (("latent",),))),
        Case("invert-sampler-linked-to-sigmas", lambda ctx: with_node(invert_edit(), "invert", sampler=["sigmas", 0]),
             Validation("invert", "sampler", "Return type mismatch between linked nodes")),
    ]


def _prompt_cases() -> list[Case]:
    def long_mask(ctx: Context) -> Graph:
        return attention_mask(prompt=LONG_PROMPT, words="red", source=LONG_PROMPT, steps=1)

    return [
        Case("mask-empty-prompt", lambda ctx: attention_mask(prompt=""),
             Refusal(MASK, ("words", "prompt"), (("not in the prompt", "empty"),))),
        Case("mask-empty-words", lambda ctx: attention_mask(words=""), Refusal(MASK, ("words",), (("word",),))),
        Case("mask-words-only-commas", lambda ctx: attention_mask(words=" , ,, "),
             Refusal(MASK, ("words",), (("word",),))),
        Case("mask-word-not-in-prompt", lambda ctx: attention_mask(words="blue"),
             Refusal(MASK, ("words",), (("not in the prompt",),))),
        Case("mask-word-unknown-to-model", lambda ctx: attention_mask(words="dog"),
             Refusal(MASK, ("words",), (("unknown word", "not in the prompt"),))),
        Case("mask-prompt-differs-from-guider", lambda ctx: attention_mask(prompt=OTHER, words="blue"),
             Refusal(MASK, ("prompt",), (("guider", "conditioning", "encoded"),))),
        Case("mask-10000-word-prompt", long_mask,
             Refusal(MASK, ("prompt",), (("long", "words", "tokens"),), or_success=True)),
        Case("mask-start-after-end", lambda ctx: attention_mask(start=0.8, end=0.2),
             Refusal(MASK, ("start", "end"), (("start < end", "before"),))),
        Case("mask-resolution-bogus", lambda ctx: attention_mask(resolution="huge"),
             Refusal(MASK, ("resolution",), (("must be one of",),),
                     validated=Validation("mask", "resolution", "Value not in list"))),
        Case("blended-empty-source-prompt", lambda ctx: blended(source_prompt=""),
             Refusal(BLENDED, ("anchor", "source_prompt"), (("not in the prompt", "empty"),))),
        Case("blended-empty-target-prompt", lambda ctx: blended(target_prompt=""),
             Refusal(BLENDED, ("target_prompt",), (("empty",),))),
        Case("blended-anchor-not-in-prompt", lambda ctx: blended(anchor="blue"),
             Refusal(BLENDED, ("anchor",), (("not in the prompt",),))),
        Case("blended-anchor-unknown-to-model", lambda ctx: blended(anchor="dog"),
             Refusal(BLENDED, ("anchor",), (("unknown word", "not in the prompt"),))),
        Case("blended-empty-anchor", lambda ctx: blended(anchor=""),
             Refusal(BLENDED, ("anchor",), (("word",),))),
        Case("blended-source-prompt-differs-from-conditioning", lambda ctx: blended(source_prompt=OTHER,
                                                                                    anchor="blue"),
             Refusal(BLENDED, ("source_prompt",), (("source_positive", "conditioning", "encoded"),))),
        Case("blended-target-prompt-10000-words-differs", lambda ctx: blended(target_prompt=LONG_PROMPT),
             Refusal(BLENDED, ("target_prompt",), (("target_positive", "conditioning", "long", "words"),))),
        Case("blended-on-model-without-cross-attention", lambda ctx: without_attention(blended()),
             Refusal(BLENDED, ("model",), (("attention",),))),
    ]


def _solver_and_guider_cases() -> list[Case]:
    def stock(name: str) -> dict[str, Any]:
        return node("KSamplerSelect", sampler_name=name)

    def nti_basic_guider(ctx: Context) -> Graph:
        graph = null_text()
        graph["basic"] = node("BasicGuider", model=["toy", 0], conditioning=["source", 0])
        return with_node(graph, "invert", guider=["basic", 0])

    def nti_edit_basic_guider(ctx: Context) -> Graph:
        graph = null_text()
        graph["basic"] = node("BasicGuider", model=["toy", 0], conditioning=["target", 0])
        return with_node(graph, "edit", guider=["basic", 0])

    sampler_words = (("solver",),)
    return [
        Case("invert-stock-sampler-euler", lambda ctx: invert_edit(solver=stock("euler")),
             Refusal(INVERT, ("sampler",), sampler_words)),
        Case("invert-stock-sampler-ddim", lambda ctx: invert_edit(solver=stock("ddim")),
             Refusal(INVERT, ("sampler",), sampler_words)),
        Case("nulltext-stock-sampler-dpmpp-2m", lambda ctx: null_text(solver=stock("dpmpp_2m")),
             Refusal(NTI, ("sampler",), sampler_words)),
        Case("bdia-gamma-0.5-at-50-steps", lambda ctx: invert_edit(steps=50, solver=node(
            "ExactInversion_BDIASolver", gamma=0.5, state_dtype="float64")),
             Refusal(INVERT, ("sampler", "gamma"), (("gamma",),))),
        Case("blended-guider-into-invert", lambda ctx: blended(into="invert"),
             Refusal(BLENDED, (), (("Edit from Inversion",),))),
        Case("blended-guider-into-sampler-custom-advanced", lambda ctx: blended(into="sampler"),
             Refusal(BLENDED, (), (("Edit from Inversion",),))),
        Case("nulltext-cfg-1", lambda ctx: null_text(cfg=1.0), Refusal(NTI, ("guider",), (("cfg",),))),
        Case("nulltext-basic-guider", nti_basic_guider, Refusal(NTI, ("guider",), (("CFGGuider",),))),
        Case("edit-nulltext-inversion-with-basic-guider", nti_edit_basic_guider,
             Refusal(EDIT, ("inversion", "guider"), (("CFGGuider",),))),
    ]


def _latent_and_sigma_cases() -> list[Case]:
    def four_channels(ctx: Context) -> Graph:
        graph = toy_base()
        graph["empty_latent"] = node("EmptyLatentImage", width=32, height=32, batch_size=1)
        return edit_check(invert(graph, latent="empty_latent"))

    def video_latent(ctx: Context) -> Graph:
        graph = toy_base()
        graph["video"] = node("EmptyHunyuanLatentVideo", width=32, height=32, length=5, batch_size=1)
        return edit_check(invert(graph, latent="video"))

    def huge_image(ctx: Context) -> Graph:
        graph = toy_base()
        graph["big"] = node("EmptyImage", width=512, height=512, batch_size=1, color=0)
        graph["big_latent"] = node("VAEEncode", pixels=["big", 0], vae=["toy", 2])
        return edit_check(invert(graph, latent="big_latent"))

    def sigmas_via(class_type: str, **inputs: Any) -> Callable[[Context], Graph]:
        def build(ctx: Context) -> Graph:
            graph = toy_base()
            graph["bad_sigmas"] = node(class_type, sigmas=["sigmas", 0], **inputs)
            return edit_check(invert(graph, sigmas="bad_sigmas"))
        return build

    def empty_sigmas(ctx: Context) -> Graph:
        return with_node(invert_edit(), "sigmas", denoise=0.0)

    def edit_other_channels(ctx: Context) -> Graph:
        return edit_check({**invert(toy_base()), **tiny_base(prefix="t_")}, guider="t_guider")

    def edit_sigmas_mismatch(ctx: Context) -> Graph:
        graph = invert_edit()
        graph["other_sigmas"] = node("BasicScheduler", model=["toy", 0], scheduler="normal", steps=5, denoise=1.0)
        return with_node(graph, "edit", sigmas=["other_sigmas", 0])

    def check_nothing(ctx: Context) -> Graph:
        graph = invert_edit()
        graph["check"] = node("ExactInversion_RoundTripCheck")
        return graph

    def check_shapes(ctx: Context) -> Graph:
        graph = invert_edit()
        graph["other_latent"] = node("EmptyLatentImage", width=64, height=64, batch_size=1)
        graph["check"] = node("ExactInversion_RoundTripCheck", original_latent=["latent", 0],
                              result_latent=["other_latent", 0])
        return graph

    strictly = "Invert: input 'sigmas': must be strictly decreasing (noisy -> clean, as schedulers output them). " \
               "Do not flip them for inversion: Invert walks the grid backwards itself."
    return [
        Case("invert-latent-4-channels-into-toy", four_channels,
             Refusal(INVERT, ("latent",), (("channels",),))),
        Case("invert-latent-5d-video", video_latent, Refusal(INVERT, ("latent",), (("shape",),))),
        Case("invert-latent-empty-batch", lambda ctx: load_latent("empty_batch.latent"),
             Refusal(INVERT, ("latent",), (("empty", "no image", "[0, 3, 32, 32]"),)),
             setup=latent_file("empty_batch.latent", (0, 3, 32, 32))),
        Case("invert-latent-5d-file", lambda ctx: load_latent("five_d.latent"),
             Refusal(INVERT, ("latent",), (("shape",),)), setup=latent_file("five_d.latent", (1, 3, 2, 32, 32))),
        Case("invert-latent-nan-file", lambda ctx: load_latent("nan.latent"),
             Refusal(INVERT, ("latent",), (("nan",),)), setup=latent_file("nan.latent", (1, 3, 32, 32), NAN)),
        Case("invert-latent-zero-size-file", lambda ctx: load_latent("zero_size.latent"),
             Refusal(INVERT, ("latent",), (("empty", "0x0", "[1, 3, 0, 0]"),)),
             setup=latent_file("zero_size.latent", (1, 3, 0, 0))),
        Case("invert-512px-image-into-toy", huge_image, Refusal(TOY, (), (("32x32",),))),
        Case("edit-toy-inversion-with-4-channel-model", edit_other_channels,
             Refusal(EDIT, ("inversion",), (("channels",),))),
        Case("edit-sigmas-of-another-grid", edit_sigmas_mismatch, Refusal(EDIT, ("sigmas",), (("grid",),))),
        Case("roundtrip-check-nothing-connected", check_nothing, Refusal(CHECK, (), (("connect",),))),
        Case("roundtrip-check-shapes-differ", check_shapes, Refusal(CHECK, (), (("shape",),))),
        Case("invert-sigmas-flipped", sigmas_via("FlipSigmas"), Refusal(INVERT, ("sigmas",), exact=strictly)),
        Case("invert-sigmas-empty-denoise-0", empty_sigmas, Refusal(INVERT, ("sigmas",), (("step",),))),
        Case("invert-sigmas-single-level", sigmas_via("SplitSigmas", step=0),
             Refusal(INVERT, ("sigmas",), (("step",),))),
        Case("nulltext-sigmas-flipped", lambda ctx: _relinked(null_text(), "FlipSigmas"),
             Refusal(NTI, ("sigmas",), (("decreasing",),))),
    ]


def _relinked(graph: Graph, class_type: str) -> Graph:
    graph["bad_sigmas"] = node(class_type, sigmas=["sigmas", 0])
    return with_node(graph, "invert", sigmas=["bad_sigmas", 0])


def _file_cases() -> list[Case]:
    def outside(ctx: Context) -> str:
        return str(ctx.outer / "escaped")

    name_words = (("name", "prefix"),)
    long_words = (("long", "name", "prefix"),)
    return [
        Case("save-prefix-dotdot", lambda ctx: save_only("../../../escaped"), Refusal(SAVE, ("filename_prefix",),
                                                                                    name_words)),
        Case("save-prefix-backslash-dotdot", lambda ctx: save_only("..\\..\\..\\escaped"),
             Refusal(SAVE, ("filename_prefix",), name_words)),
        Case("save-prefix-absolute", lambda ctx: save_only(outside(ctx)),
             Refusal(SAVE, ("filename_prefix",), name_words)),
        Case("save-prefix-nul-byte", lambda ctx: save_only("inv\x00ersion"),
             Refusal(SAVE, ("filename_prefix",), name_words)),
        Case("save-prefix-300-chars", lambda ctx: save_only("a" * 300), Refusal(SAVE, ("filename_prefix",),
                                                                               long_words)),
        Case("save-prefix-2100-folders", lambda ctx: save_only("a/" * 2100 + "x"),
             Refusal(SAVE, ("filename_prefix",), long_words)),
        Case("save-prefix-empty", lambda ctx: save_only(""), Refusal(SAVE, ("filename_prefix",), name_words)),
        Case("save-prefix-object", lambda ctx: save_only({"a": 1}), Refusal(SAVE, ("filename_prefix",), name_words)),
        Case("load-name-dotdot", lambda ctx: load_only("../../../escaped.safetensors [output]"),
             Refusal(LOAD, ("file_name",), name_words)),
        Case("load-name-absolute", lambda ctx: load_only(f"{ctx.outer}/secret.safetensors [input]"),
             Refusal(LOAD, ("file_name",), name_words)),
        Case("load-name-nul-byte", lambda ctx: load_only("a\x00b.safetensors [input]"),
             Refusal(LOAD, ("file_name",), name_words)),
        Case("load-name-300-chars", lambda ctx: load_only("a" * 300 + ".safetensors [input]"),
             Refusal(LOAD, ("file_name",), (("no file", "long"),))),
        Case("load-name-2100-folders", lambda ctx: load_only("a/" * 2100 + "x.safetensors [input]"),
             Refusal(LOAD, ("file_name",), (("no file", "long"),))),
        Case("load-name-missing-file", lambda ctx: load_only("nothere.safetensors [input]"),
             Refusal(LOAD, ("file_name",), (("no file",),))),
        Case("load-name-without-folder-tag", lambda ctx: load_only("nothere.safetensors"),
             Refusal(LOAD, ("file_name",), (("as listed",),))),
        Case("load-name-not-safetensors", lambda ctx: load_only("example.png [input]"),
             Refusal(LOAD, ("file_name",), (("safetensors",),))),
        Case("load-garbage-file", lambda ctx: load_only("garbage.safetensors [input]"),
             Refusal(LOAD, ("file_name",), (("safetensors", "Save Inversion"),)), setup=garbage_file),
        Case("load-folder-named-safetensors", lambda ctx: load_only("folder.safetensors [input]"),
             Refusal(LOAD, ("file_name",), (("regular file", "folder"),)), setup=folder_named_file),
        Case("load-link-to-outside", lambda ctx: load_only("link_outside.safetensors [input]"),
             Refusal(LOAD, ("file_name",), (("outside",),)), setup=link_outside),
        Case("load-combo-not-in-list", lambda ctx: _fix_load_combo(with_node(load_only("x"), "load",
                                                                             file="nothere.safetensors [input]")),
             Refusal(LOAD, ("file",), (("no file",),), validated=Validation("load", "file", "Value not in list"))),
        Case("toy-model-file-dotdot", lambda ctx: with_node(invert_edit(), "toy", model_file="../../etc/passwd"),
             Refusal(TOY, ("model_file",), (("listed",),),
                     validated=Validation("toy", "model_file", "Value not in list"))),
        Case("load-inversion-edited-with-another-model", _other_model, Refusal(EDIT, ("guider",), (("model",),))),
        Case("load-inversion-latent-of-another-shape", _load_other_shape, Refusal(LOAD, ("latent",), (("shape",),))),
    ]


def _other_model(ctx: Context) -> Graph:
    """Save a tiny-model inversion, reload it and edit it with the tiny model of another seed."""
    graph = invert(tiny_base(seed=0))
    graph["save"] = node("ExactInversion_SaveInversion", inversion=["invert", 0], filename_prefix="hostile/other")
    graph["load"] = node("ExactInversion_LoadInversion", file="(none)", allow_mismatch=False, file_name=["save", 0])
    graph["other"] = node("ExactInversionTest_TinyCheckpointLoader", seed=1)
    graph["other_text"] = node("CLIPTextEncode", text="a cat", clip=["other", 1])
    graph["other_guider"] = node("CFGGuider", model=["other", 0], positive=["other_text", 0],
                                 negative=["other_text", 0], cfg=1.0)
    return edit_check(graph, guider="other_guider", inversion="load")


def _load_other_shape(ctx: Context) -> Graph:
    graph = save_load("hostile/shape")
    graph["other_latent"] = node("EmptyLatentImage", width=64, height=64, batch_size=1)
    return with_node(graph, "load", latent=["other_latent", 0])


def _fix_load_combo(graph: Graph) -> Graph:
    graph["load"]["inputs"].pop("file_name", None)
    return graph


#: Today's message of every case the pack already answers clearly (ComfyUI 0.3.75 and 0.28.2 alike): pinned, so a
#: change of wording is a decision. Not pinned: messages holding a server path or a model fingerprint.
PINNED: dict[str, str] = {
    "edict-p-nan": "EDICT Solver: input 'p' must be in (0, 1], got nan",
    "bdia-gamma-nan": "BDIA Solver: input 'gamma' must be in (0, 1], got nan",
    "aidi-tol-nan": "AIDI Solver: input 'tol' must be >= 0, got nan",
    "mask-start-nan": "Attention Mask: inputs 'start' and 'end' must be finite numbers (got nan, 1.0); they are "
        "fractions of the reconstruction's steps, e.g. 0 and 1",
    "mask-end-nan": "Attention Mask: inputs 'start' and 'end' must be finite numbers (got 0.0, nan); they are "
        "fractions of the reconstruction's steps, e.g. 0 and 1",
    "blended-threshold-nan": "Blended Guidance Guider: input 'threshold' is nan; give a finite number",
    "blended-injection-nan": "Blended Guidance Guider: input 'injection' is nan; give a finite number",
    "blended-eta-nan": "Blended Guidance Guider: input 'eta' is nan; give a finite number",
    "bdia-gamma-as-text-nan": "BDIA Solver: input 'gamma' must be in (0, 1], got nan",
    "invert-guider-as-number": "Invert: input 'guider' is not a GUIDER; connect e.g. a CFGGuider or BasicGuider",
    "invert-sigmas-as-text": "Invert: input 'sigmas': expected a 1-D SIGMAS tensor, got str",
    "edit-inversion-as-text": "Edit from Inversion: input 'inversion' must come from Invert or Load Inversion",
    "edit-guider-as-text": "Edit from Inversion: input 'guider' is not a GUIDER; connect e.g. a CFGGuider or "
        "BasicGuider",
    "save-inversion-as-text": "Save Inversion: input 'inversion' must come from Invert or Load Inversion",
    "roundtrip-check-inversion-as-text": "Round-trip Check: input 'inversion' must come from Invert or Load Inversion",
    "mask-inversion-as-text": "Attention Mask: input 'inversion' must come from Invert or Load Inversion",
    "mask-guider-as-text": "Attention Mask: input 'guider' is not a GUIDER; connect the guider you gave Invert",
    "blended-clip-as-number": "Blended Guidance Guider: input 'clip' is not a CLIP; connect the CLIP that encoded the "
        "prompts",
    "mask-empty-prompt": "Attention Mask: input 'prompt' is empty; type the source prompt's text, as in its CLIP Text "
        "Encode",
    "mask-empty-words": "Attention Mask: input 'words': no words given; list one or more words of the prompt, "
        "separated by commas",
    "mask-words-only-commas": "Attention Mask: input 'words': no words given; list one or more words of the prompt, "
        "separated by commas",
    "mask-word-not-in-prompt": "Attention Mask: input 'words': word 'blue' is not in the prompt 'a red circle on a "
        "green background'; give one of its words",
    "mask-word-unknown-to-model": "Attention Mask: input 'words': prompt: unknown word 'dog' in 'dog'; the toy model "
        "knows only a, on, background, red, green, blue, yellow, purple, orange, white, black, circle, square, "
        "triangle (e.g. 'a red circle on a green background')",
    "mask-start-after-end": "Attention Mask: inputs 'start' and 'end' must satisfy 0 <= start < end <= 1 (got 0.8, "
        "0.2); they are fractions of the reconstruction's steps",
    "mask-resolution-bogus": "Attention Mask: input 'resolution' must be one of ['all', 'finest', '2nd finest', '3rd "
        "finest', 'coarsest'], got 'huge'",
    "blended-empty-source-prompt": "Blended Guidance Guider: input 'source_prompt' is empty; type the source prompt's "
        "text",
    "blended-empty-target-prompt": "Blended Guidance Guider: input 'target_prompt' is empty; type the edited prompt's "
        "text",
    "blended-anchor-not-in-prompt": "Blended Guidance Guider: input 'anchor': word 'blue' is not in the prompt 'a red "
        "circle on a green background'; give one of its words",
    "blended-anchor-unknown-to-model": "Blended Guidance Guider: input 'anchor': prompt: unknown word 'dog' in 'dog'; "
        "the toy model knows only a, on, background, red, green, blue, yellow, purple, orange, white, black, circle, "
        "square, triangle (e.g. 'a red circle on a green background')",
    "blended-empty-anchor": "Blended Guidance Guider: input 'anchor': word '' has no tokens of its own; give a word "
        "of the prompt",
    "invert-stock-sampler-euler": "Invert: input 'sampler' must come from an Exact Inversion solver node (e.g. 'DDIM "
        "Solver'); got KSAMPLER. Stock samplers such as euler cannot be inverted.",
    "invert-stock-sampler-ddim": "Invert: input 'sampler' must come from an Exact Inversion solver node (e.g. 'DDIM "
        "Solver'); got KSAMPLER. Stock samplers such as euler cannot be inverted.",
    "nulltext-stock-sampler-dpmpp-2m": "Null-text Inversion: input 'sampler' must come from an Exact Inversion solver "
        "node (e.g. 'DDIM Solver'); got KSAMPLER. Stock samplers such as euler cannot be inverted.",
    "bdia-gamma-0.5-at-50-steps": "Invert: input 'sampler' cannot invert on this grid: gamma = 0.5 with 50 steps "
        "cannot invert: BDIA inversion's parasitic mode grows like gamma^-N = 1.1e+15 (more than 1e+06), so the "
        "inverted pair is mostly amplified error. Use gamma >= 0.76 at 50 steps (1.0 is the default), gamma_rule "
        "'scaled', or fewer steps.",
    "blended-guider-into-invert": "Blended Guidance Guider: this guider edits an inversion; connect it to 'Edit from "
        "Inversion' (it cannot drive SamplerCustomAdvanced or Invert)",
    "blended-guider-into-sampler-custom-advanced": "Blended Guidance Guider: this guider edits an inversion; connect "
        "it to 'Edit from Inversion' (it cannot drive SamplerCustomAdvanced or Invert)",
    "nulltext-cfg-1": "Null-text Inversion: input 'guider' has cfg 1, where null-text optimisation has nothing to "
        "correct; set the cfg you will edit at (e.g. 7.5)",
    "nulltext-basic-guider": "Null-text Inversion: input 'guider' must be a CFGGuider (source prompt as positive, the "
        "empty prompt as negative, and the cfg you will edit at)",
    "edit-nulltext-inversion-with-basic-guider": "Edit from Inversion: input 'inversion' carries per-step "
        "unconditional embeddings (nti), which replace a guider's negative prompt; connect a CFGGuider (any negative) "
        "instead of Guider_Basic",
    "invert-latent-4-channels-into-toy": "Invert: input 'latent' has 4 channels but the model expects 3; encode the "
        "image with this model's VAE",
    "invert-latent-5d-video": "Invert: input 'latent' must be an image latent of shape [batch, channels, height, "
        "width] (or [batch, channels, 1, height, width]); got shape [1, 16, 2, 4, 4]; videos of several frames are "
        "not supported: invert one frame",
    "invert-latent-5d-file": "Invert: input 'latent' must be an image latent of shape [batch, channels, height, "
        "width] (or [batch, channels, 1, height, width]); got shape [1, 3, 2, 32, 32]; videos of several frames are "
        "not supported: invert one frame",
    "invert-latent-empty-batch": "Invert: input 'latent' must be an image latent of shape [batch, channels, height, "
        "width] (or [batch, channels, 1, height, width]); got shape [0, 3, 32, 32]",
    "invert-latent-zero-size-file": "Invert: input 'latent' must be an image latent of shape [batch, channels, "
        "height, width] (or [batch, channels, 1, height, width]); got shape [1, 3, 0, 0]",
    "invert-latent-nan-file": "Invert: input 'latent' contains NaN or infinite values; check the VAE encode and the "
        "nodes before it",
    "invert-512px-image-into-toy": "Load Embedded Toy Model: the toy model was trained on 32x32 images and got "
        "512x512; at that size one model call takes minutes on a CPU. Scale the image to 32x32 first (e.g. 'Upscale "
        "Image' to 32x32 before VAE Encode), or use an empty latent of at most 128x128",
    "edit-toy-inversion-with-4-channel-model": "Edit from Inversion: input 'inversion' has 3 channels but the model "
        "expects 4; encode the image with this model's VAE",
    "edit-sigmas-of-another-grid": "Edit from Inversion: input 'sigmas' (5 steps, sigma 14.61 -> 0) does not match "
        "the inversion's grid (3 steps, sigma 14.61 -> 0). Connect the SIGMAS used by Invert, or leave it unconnected.",
    "roundtrip-check-nothing-connected": 'Round-trip Check: connect one pair: inversion and result_latent, '
        'original_latent and result_latent, or original_image and result_image',
    "roundtrip-check-shapes-differ": 'Round-trip Check: the original and the result differ in shape ([1, 3, 32, 32] '
        'vs [1, 4, 8, 8]); compare the input of Invert with the output of Edit',
    "invert-sigmas-empty-denoise-0": "Invert: input 'sigmas': needs at least 2 values (1 step); got 0. Give the "
        "scheduler at least 1 step.",
    "invert-sigmas-single-level": "Invert: input 'sigmas': needs at least 2 values (1 step); got 1. Give the "
        "scheduler at least 1 step.",
    "nulltext-sigmas-flipped": "Null-text Inversion: input 'sigmas': must be strictly decreasing (noisy -> clean, as "
        "schedulers output them). Do not flip them for inversion: Invert walks the grid backwards itself.",
    "save-prefix-dotdot": "Save Inversion: input 'filename_prefix' ('../../../escaped') is not a valid file name "
        "prefix: use letters, digits, spaces, '.', '-' and '_', with '/' between subfolders; no '..', no absolute "
        "paths",
    "save-prefix-backslash-dotdot": "Save Inversion: input 'filename_prefix' ('..\\\\..\\\\..\\\\escaped') is not a "
        "valid file name prefix: use letters, digits, spaces, '.', '-' and '_', with '/' between subfolders; no '..', "
        "no absolute paths",
    "save-prefix-nul-byte": "Save Inversion: input 'filename_prefix' ('inv\\x00ersion') is not a valid file name "
        "prefix: use letters, digits, spaces, '.', '-' and '_', with '/' between subfolders; no '..', no absolute "
        "paths",
    "save-prefix-300-chars": "Save Inversion: input 'filename_prefix' "
        "('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..., 300 characters) is too "
        "long: use at most 16 subfolders and at most 200 characters per name",
    "save-prefix-2100-folders": "Save Inversion: input 'filename_prefix' "
        "('a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a..., 4201 characters) is "
        "too long: use at most 16 subfolders and at most 200 characters per name",
    "save-prefix-empty": "Save Inversion: input 'filename_prefix' ('') is not a valid file name prefix: use letters, "
        "digits, spaces, '.', '-' and '_', with '/' between subfolders; no '..', no absolute paths",
    "save-prefix-object": 'Save Inversion: input \'filename_prefix\' ("{\'a\': 1}") is not a valid file name prefix: '
        'use letters, digits, spaces, \'.\', \'-\' and \'_\', with \'/\' between subfolders; no \'..\', no absolute '
        'paths',
    "load-name-dotdot": "Load Inversion: input 'file_name' ('../../../escaped.safetensors') is not a valid file name: "
        "it must be a path inside the folder; no '..', no absolute paths",
    "load-name-nul-byte": "Load Inversion: input 'file_name' ('a\\x00b.safetensors') is not a valid file name: it "
        "must be a path inside the folder; no '..', no absolute paths",
    "load-name-300-chars": "Load Inversion: input 'file_name': no file "
        "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa... in ComfyUI's input "
        "folder; save one with Save Inversion, or refresh the node (press R) to update the list",
    "load-name-2100-folders": "Load Inversion: input 'file_name': no file "
        "'a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a... in ComfyUI's input "
        "folder; save one with Save Inversion, or refresh the node (press R) to update the list",
    "load-name-missing-file": "Load Inversion: input 'file_name': no file 'nothere.safetensors' in ComfyUI's input "
        "folder; save one with Save Inversion, or refresh the node (press R) to update the list",
    "load-name-without-folder-tag": "Load Inversion: input 'file_name' ('nothere.safetensors') must name a file as "
        "listed, e.g. 'inversions/inversion_00001_.safetensors [output]' or 'my_file.safetensors [input]'",
    "load-name-not-safetensors": "Load Inversion: input 'file_name' ('example.png [input]') is not a .safetensors "
        "file; choose a .safetensors file saved by Save Inversion",
    "load-garbage-file": "Load Inversion: input 'file_name' (garbage.safetensors) is not a readable safetensors file "
        "('Error while deserializing header: invalid UTF-8 in header: invalid utf-8 sequence of 1 bytes from index "
        "7'); choose a file written by Save Inversion",
    "load-folder-named-safetensors": "Load Inversion: input 'file_name' ('folder.safetensors') is not a regular file "
        "(a folder, pipe or device); choose a file written by Save Inversion (fix or delete a broken link), and "
        "refresh the node (press R)",
    "load-link-to-outside": "Load Inversion: input 'file_name' points outside ComfyUI's input folder; choose a file "
        "inside it",
    "load-combo-not-in-list": "Load Inversion: input 'file': no file 'nothere.safetensors' in ComfyUI's input folder; "
        "save one with Save Inversion, or refresh the node (press R) to update the list",
    "toy-model-file-dotdot": "Load Embedded Toy Model: input 'model_file' ('../../etc/passwd') must be one of the "
        "listed .safetensors file names in the pack's models folder, without a path",
    "load-inversion-latent-of-another-shape": "Load Inversion: input 'latent' has shape [1, 4, 8, 8] but the file was "
        "inverted from [1, 3, 32, 32]. Use the matching inputs, or tick allow_mismatch",
}


def all_cases() -> list[Case]:
    cases = [*_non_finite_cases(), *_guider_cfg_cases(), *_type_and_range_cases(), *_prompt_cases(),
             *_solver_and_guider_cases(), *_latent_and_sigma_cases(), *_file_cases()]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert set(PINNED) <= set(ids), sorted(set(PINNED) - set(ids))
    return [dataclasses.replace(c, expect=dataclasses.replace(c.expect, exact=PINNED[c.id]))
            if c.id in PINNED and isinstance(c.expect, Refusal) else c for c in cases]


# --- judging --------------------------------------------------------------------------------------------------


def execution_error(entry: dict[str, Any]) -> dict[str, Any] | None:
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return errors[0] if errors else None


def output_texts(entry: dict[str, Any]) -> list[str]:
    """The 'text' lines the output nodes showed (e.g. Round-trip Check's report)."""
    return [t for out in (entry.get("outputs") or {}).values() for t in out.get("text", []) if isinstance(t, str)]


def finite_success(entry: dict[str, Any]) -> bool:
    """A success whose reports show no NaN or infinity (a NaN result makes Round-trip Check print 'nan')."""
    texts = " ".join(output_texts(entry)).lower()
    return entry["status"]["status_str"] == "success" and "nan" not in texts and " inf" not in texts.replace(
        "inf db", "")


#: A stated valid range also tells the fix ("0..1", "in (0, 1]", "between 0 and 1", "<= 1").
_RANGE = re.compile(r"\d\s*\.\.\s*\d|\bin [(\[]|between \S+ and|<=|>=")


def refusal_problems(message: str, expect: Refusal) -> list[str]:
    """What is unclear about a refusal message (empty: it is clear)."""
    problems = []
    text = message.strip()
    if expect.exact is not None and text != expect.exact:
        problems.append(f"differs from the pinned message {expect.exact!r}")
    if not text.startswith(f"{expect.node}: "):
        problems.append(f"does not start with the node's name '{expect.node}: '")
    if expect.inputs and not any(f"'{name}'" in text for name in expect.inputs):
        problems.append(f"quotes none of the inputs {list(expect.inputs)}")
    lower = text.lower()
    advice = text.removeprefix(f"{expect.node}: ").lower()  # the node's own name ("Invert") is no advice
    for group in expect.words:
        if not any(w.lower() in lower for w in group):
            problems.append(f"mentions none of {list(group)}")
    if not any(w in advice for w in FIX_WORDS) and not _RANGE.search(advice):
        problems.append("says nothing the user can do (no fix)")
    raw = [m for m in RAW_MARKERS if m in text]
    if raw:
        problems.append(f"carries raw Python error text {raw}")
    if len(text) > MAX_MESSAGE:
        problems.append(f"is {len(text)} characters long (hostile input echoed?)")
    return problems


def validation_problems(status: int, body: Any, expect: Validation, class_type: str) -> list[str]:
    """What is wrong with a /prompt answer that should be ComfyUI's validation error."""
    if status != 400 or not isinstance(body, dict):
        return [f"/prompt answered {status} {str(body)[:300]}, not a 400 validation error"]
    errors = (body.get("node_errors") or {}).get(expect.node_id)
    if not errors:
        return [f"no node_errors for node {expect.node_id!r}: {str(body)[:500]}"]
    problems = []
    if errors.get("class_type") != class_type:
        problems.append(f"node_errors names class {errors.get('class_type')!r}, not {class_type!r}")
    found = [e for e in errors.get("errors", []) if e.get("message") == expect.message
             and str(e.get("details", "")).split(",")[0].split(":")[0].strip() == expect.input_name]
    if not found:
        problems.append(f"no error {expect.message!r} for input {expect.input_name!r}: {errors.get('errors')}")
    return problems


def describe_entry(entry: dict[str, Any]) -> str:
    """One line for a failure: the status, the error's node, type and message, or the output reports."""
    err = execution_error(entry)
    if err is not None:
        return (f"{entry['status']['status_str']} at node {err.get('node_id')} ({err.get('node_type')}): "
                f"{err.get('exception_type')}: {str(err.get('exception_message', '')).strip()[:600]!r}")
    return f"{entry['status']['status_str']}; outputs: {output_texts(entry)[:4]}"


# --- the folders around the server ----------------------------------------------------------------------------

#: Folders of the base where ComfyUI and the pack may write; everything else must stay as it was.
WRITABLE = ("input", "output", "temp", "user")
#: Files that change by themselves (the server's log).
VOLATILE = ("server.log",)


def tree_state(ctx: Context) -> dict[str, tuple[str, int, int]]:
    """(kind, size, mtime) of every entry under the folder around the base, outside the base's writable
    folders; links are recorded, never followed (custom_nodes/ holds links to the packs)."""
    state: dict[str, tuple[str, int, int]] = {}
    skip = {ctx.base / name for name in WRITABLE}
    for root, dirs, files in os.walk(ctx.outer):
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        for name in [*dirs, *files]:
            path = Path(root, name)
            rel = str(path.relative_to(ctx.outer))
            if path.parent == ctx.base and name in VOLATILE:
                continue
            st = os.lstat(path)
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            state[rel] = (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns if kind == "file" else 0)
    return state


def tree_changes(before: dict[str, tuple[str, int, int]], after: dict[str, tuple[str, int, int]]) -> list[str]:
    """New, removed and modified entries outside the writable folders (empty: nothing changed)."""
    out = [f"new: {p}" for p in sorted(set(after) - set(before))]
    out += [f"removed: {p}" for p in sorted(set(before) - set(after))]
    out += [f"changed: {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return out

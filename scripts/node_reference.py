"""Write docs/nodes.md and the front end's per-node help pages (js/docs/) from ComfyUI's own /object_info.

Starts ComfyUI's main.py --cpu with only this pack in custom_nodes (testbed/comfy_server.py),
reads /object_info and renders every ExactInversion_* node: inputs, outputs, defaults, ranges and
tooltips, exactly as the front end gets them, plus the per-node "when to use" prose and pictures of
GUIDES below (the one place they are written). The output is deterministic (no ports, no dates).

The help pages are what ComfyUI's front end shows for a custom node: it fetches
/extensions/<pack folder>/docs/<node id>/<locale>.md, then /extensions/<pack folder>/docs/<node id>.md,
and resolves relative image links against /extensions/<pack folder>/docs/. So js/docs/ (js/ is the pack's
WEB_DIRECTORY) holds one <node id>.md per node and img/ with crops of docs/ pictures; the script owns that
folder and removes any other file in it.

    scripts/py scripts/node_reference.py            # (re)write docs/nodes.md and js/docs/ (also: make docs)
    scripts/py scripts/node_reference.py --check    # exit 1 if any of them is out of date
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "nodes.md"
HELP_DIR = REPO / "js" / "docs"  # served at /extensions/<pack folder>/docs/
PREFIX = "ExactInversion_"  # our node ids; the test pack's are ExactInversionTest_*
MAX_OPTIONS = 12  # longer combo lists show their first MAX_OPTIONS - 2 entries and a count
COMMAND = "scripts/py scripts/node_reference.py"
REFERENCE_URL = "https://github.com/exact-inversion/comfyui-exact-inversion/blob/main/docs/nodes.md"
MAX_PICTURE_BYTES = 60_000  # each help picture; the pack ships them to every user

Node = dict[str, Any]


class Picture(NamedTuple):  # NamedTuple, not a dataclass: tests load this file without registering a module
    """A help-page picture: a crop (left, top, right, bottom in pixels; None = whole) of a committed picture."""

    source: str  # repo-relative; docs/ui/ is redrawn by `make screenshots`: if a layout moves, re-check its crop
    name: str  # file name under js/docs/img/
    caption: str  # alt text and the caption under it
    crop: tuple[int, int, int, int] | None = None


class Guide(NamedTuple):
    """What /object_info cannot say about a node: when to reach for it, and an optional picture."""

    when: str
    picture: Picture | None = None


#: One entry per node of ours, keyed by node id. Both docs/nodes.md and the help pages read it; a node
#: without an entry (or an entry without a node) stops the generator, so a new node cannot go undocumented.
GUIDES: dict[str, Guide] = {
    "ExactInversion_DDIMSolver": Guide(
        "For a quick, cheap inversion at cfg 1 when an approximate reconstruction is enough, as the baseline "
        "the exact solvers are compared with, or as the solver of Null-text Inversion (with inversion_label "
        "'next', as the paper). When the image must come back exactly, use EDICT or BDIA."),
    "ExactInversion_EDICTSolver": Guide(
        "When the reconstruction must be exact at any cfg and twice DDIM's model evaluations are affordable. "
        "p 0.93 is tuned for 50 steps: at fewer steps (about 25) set p_rule to 'scaled', which made edits read "
        "right far more often on the embedded toy model."),
    "ExactInversion_BDIASolver": Guide(
        "The first choice for exact inversion: exact at DDIM's cost (one model evaluation per step). For edits "
        "use gamma 0.8 with gamma_rule 'scaled' (0.8 at 25 steps, adjusted to other step counts), as the example "
        "workflows do; gamma 1 inverts most stably but leaves "
        "noise in edits at few steps. While you change gamma the node shows how much an inversion amplifies its "
        "error at 25 and 50 steps, and whether Invert will warn or refuse.",
        Picture("docs/ui/bdia_hint.png", "bdia_hint.png",
                "BDIA Solver at gamma 0.70: the hint under the widgets says 25 steps warn, 50 steps are refused.",
                (503, 227, 739, 384))),
    "ExactInversion_AIDISolver": Guide(
        "When a single inverted latent (no coupled pair) should reconstruct better than DDIM's at cfg 1, for "
        "a few extra model evaluations per inversion step. It is not exact; at high cfg use EDICT or BDIA, or "
        "Null-text Inversion."),
    "ExactInversion_EESSolver": Guide(
        "When you want an ordinary one-latent Runge-Kutta sampler whose round trip is near exact: it also "
        "samples well in SamplerCustomAdvanced. EES(2,7) shrinks the round-trip defect further for one more "
        "model evaluation per step."),
    "ExactInversion_BELMSolver": Guide(
        "When you want exactness at DDIM's cost with nothing to tune, on any grid. At about 25 steps its edits "
        "are weak (like BDIA at gamma 1): for edits at few steps prefer BDIA at gamma 0.8 or Rex."),
    "ExactInversion_RexSolver": Guide(
        "When an exact solver should keep as much of the image as possible in an edit and twice DDIM's model "
        "evaluations are fine: Rex (euler) kept the most background of the plain edits on the embedded toy "
        "model. Higher-order tableaux sample more accurately at more evaluations per step."),
    "ExactInversion_RFSolver": Guide(
        "On rectified-flow models (Flux, SD3.5 and others) for a second-order inversion that comes far closer "
        "than DDIM's at 2 model evaluations per step. When the image must come back exactly, use EDICT or "
        "BDIA."),
    "ExactInversion_FireFlowSolver": Guide(
        "On rectified-flow models when RF-Solver's kind of step is wanted at DDIM's cost (one model evaluation "
        "per step). Not exact: use EDICT or BDIA for that."),
    "ExactInversion_SolverRecipe": Guide(
        "When you want a good solver without tuning it, or one choice of solver in a subgraph or blueprint: "
        "pick it by name at the settings measured best for edits at about 25 steps (BDIA at gamma 0.8 by "
        "default). To change a solver's parameters, use that solver's own node."),
    "ExactInversion_Invert": Guide(
        "The first step of every edit: encode the image (VAEEncode), give it a guider with the source prompt "
        "(cfg 1 is usual), one of this pack's solver nodes and a scheduler's sigmas, then feed the INVERSION to "
        "Edit from Inversion (and Save Inversion to keep it). A denoise below 1 on the scheduler inverts only "
        "part of the way, for milder edits."),
    "ExactInversion_Edit": Guide(
        "After Invert or Load Inversion. With the guider you gave Invert it rebuilds the image (check it with "
        "Round-trip Check); with a guider of the edited prompt it makes the edit; with the Blended Guidance "
        "Guider the edit stays where the anchor word is. The node warns when the guider's model, source prompt "
        "or cfg are not the inversion's.",
        Picture("docs/demo_grid.png", "edit.png",
                "An EDICT inversion of a red circle: input, reconstruction and the edit to a yellow circle with "
                "the Blended Guidance Guider (local blend).",
                (0, 0, 468, 144))),
    "ExactInversion_RoundTripCheck": Guide(
        "To see that an inversion is exact before you edit, or to compare solvers: connect the inversion (or "
        "the original latent) and the latent that Edit made with the same guider, or two decoded images. An "
        "exact solver shows a relative error near the float32 rounding of the latent (about 1e-8).",
        Picture("docs/ui/round_trip_check.png", "round_trip_check.png",
                "Round-trip Check after a run: its report and the original | result | error figure.",
                (503, 153, 739, 456))),
    "ExactInversion_SaveInversion": Guide(
        "When you will edit the same image more than once, or later: inverting is the expensive part, so save "
        "the inversion once and start every edit from Load Inversion."),
    "ExactInversion_LoadInversion": Guide(
        "To edit from an inversion saved earlier without inverting again. Connect the image's latent and the "
        "sigmas to have the file checked against the graph; tick allow_mismatch only if an inexact round trip "
        "is acceptable."),
    "ExactInversion_ToyModelLoader": Guide(
        "To try the pack's workflows without downloading a checkpoint, or to see what each node does on images "
        "small enough to run on a CPU in seconds: the example workflows in the Templates browser use it."),
    "ExactInversion_AttentionMask": Guide(
        "To see where a word of the source prompt is before you edit (and so pick the anchor for the Blended "
        "Guidance Guider), or to get a MASK from an inversion for stock nodes: inpainting, compositing, "
        "ThresholdMask. Click the prompt's words under the node to fill in words.",
        Picture("docs/ui/attention_mask.png", "attention_mask.png",
                "Attention Mask for 'red' in 'a red circle on a green background', with its word chips and mask.",
                (503, 114, 739, 474))),
    "ExactInversion_BlendedGuidance": Guide(
        "When a plain edit changes too much: to change one object (its word as anchor, role 'edit region') or "
        "everything but it ('keep region') while the rest stays as the inversion rebuilds it. Give it the "
        "source conditioning and cfg you gave Invert; turn on local_blend to keep the rest exactly with EDICT "
        "or BDIA. It costs about 1.7 times a plain edit. Click a word under the prompt to set the anchor.",
        Picture("docs/blended_grid.png", "blended_guidance.png",
                "An EDICT inversion edited red to yellow: input, the mask of 'red', a plain edit, the blended edit.")),
    "ExactInversion_NullTextInversion": Guide(
        "When you edit at a high cfg (5 to 8) with DDIM-like solvers: an inversion at that cfg no longer "
        "rebuilds the image (about 21 dB on the embedded toy model, 35 dB after 'nti'). 'npi' costs nothing and "
        "works with every solver (exact with EDICT or BDIA); 'nti' and 'bias_correction' optimise and take "
        "longer.",
        Picture("docs/null_text_grid.png", "null_text_inversion.png",
                "The same edit at cfg 7.5 from a plain DDIM inversion (top) and from a null-text inversion.")),
}


def our_nodes(info: dict[str, Node]) -> dict[str, Node]:
    """The pack's nodes of an /object_info answer, in registration order (the pack's own order)."""
    return {name: node for name, node in info.items() if name.startswith(PREFIX)}


def _code(value: str) -> str:
    fence = "``" if "`" in value else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _value(value: Any) -> str:
    """A default, bound or option as code: JSON spelling (true, 1e-08, "text")."""
    return _code(value if isinstance(value, str) and value else json.dumps(value))


def _cell(text: str | None) -> str:
    """Text safe inside a Markdown table cell."""
    return (text or "").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """(type, options) of one input spec; old-style combos are a bare list of choices."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list):
        return "COMBO", {**opts, "options": kind}
    return str(kind), opts


def _options(choices: list[Any]) -> str:
    if len(choices) > MAX_OPTIONS:
        shown = ", ".join(_value(c) for c in choices[: MAX_OPTIONS - 2])
        return f"{shown}, … ({len(choices) - MAX_OPTIONS + 2} more)"
    return ", ".join(_value(c) for c in choices)


def _details(opts: dict[str, Any]) -> str:
    """The range / options column: bounds and step, combo choices, and widget flags."""
    parts = []
    if "min" in opts or "max" in opts:
        parts.append(f"{_value(opts.get('min', '-inf'))} to {_value(opts.get('max', 'inf'))}")
    if "step" in opts:
        parts.append(f"step {_value(opts['step'])}")
    if "options" in opts:
        parts.append(_options(opts["options"]))
    for flag, label in (("multiselect", "multiselect"), ("multiline", "multiline"),
                        ("forceInput", "socket only"), ("control_after_generate", "control after generate")):
        if opts.get(flag):
            parts.append(label)
    return "; ".join(parts)


def _slug(text: str, seen: dict[str, int]) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return f"{slug}-{count}" if count else slug


def _inputs(node: Node) -> list[str]:
    order = node.get("input_order", {})
    rows = []
    for section in ("required", "optional"):
        specs = node.get("input", {}).get(section, {})
        for name in order.get(section) or list(specs):
            kind, opts = _spec(specs[name])
            default = _value(opts["default"]) if "default" in opts else ""
            rows.append(f"| {_code(name)} | {_code(kind)} | {_cell(default)} | {_cell(_details(opts))} | "
                        f"{'yes' if section == 'optional' else 'no'} | {_cell(opts.get('tooltip'))} |")
    if not rows:
        return ["No inputs."]
    return ["| Input | Type | Default | Range / options | Optional | Tooltip |",
            "| --- | --- | --- | --- | --- | --- |", *rows]


def _outputs(node: Node) -> list[str]:
    types = node.get("output", [])
    names = node.get("output_name") or types
    tooltips = node.get("output_tooltips") or []
    lists = node.get("output_is_list") or []
    rows = []
    for i, kind in enumerate(types):
        kind = "COMBO" if isinstance(kind, list) else str(kind)
        if i < len(lists) and lists[i]:
            kind += " (list)"
        tip = tooltips[i] if i < len(tooltips) else None
        rows.append(f"| {_code(str(names[i]))} | {_code(kind)} | {_cell(tip)} |")
    if not rows:
        return ["No outputs."]
    return ["| Output | Type | Tooltip |", "| --- | --- | --- |", *rows]


def guides(nodes: dict[str, Node]) -> dict[str, Guide]:
    """GUIDES for these nodes; raises when a node has no entry or an entry names no node (says the fix)."""
    missing = [name for name in nodes if name not in GUIDES]
    stale = [name for name in GUIDES if name not in nodes]
    if missing or stale:
        raise ValueError(f"GUIDES in scripts/node_reference.py: add 'when to use' for {missing or 'none'}; "
                         f"remove {stale or 'none'} (no such node)")
    return {name: GUIDES[name] for name in nodes}


def _anchors(nodes: dict[str, Node]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Nodes by category, and each category's and node's heading anchor in docs/nodes.md."""
    categories: dict[str, list[str]] = {}
    for name, node in nodes.items():
        categories.setdefault(node.get("category", ""), []).append(name)
    seen: dict[str, int] = {}
    for heading in ("Node reference", "Contents"):
        _slug(heading, seen)
    anchors = {}
    for category in sorted(categories):
        anchors[category] = _slug(category, seen)
        for name in categories[category]:
            anchors[name] = _slug(nodes[name].get("display_name") or name, seen)
    return categories, anchors


def render(info: dict[str, Node]) -> str:
    """The Markdown reference of our nodes in an /object_info answer (pure: same input, same text)."""
    nodes = our_nodes(info)
    when = guides(nodes)
    categories, anchors = _anchors(nodes)

    lines = ["# Node reference", "",
             f"Generated by `{COMMAND}` (`make docs`) from ComfyUI's `/object_info`; do not edit by hand. "
             f"{len(nodes)} nodes, in the order the pack registers them. The front end shows the same text, with "
             "pictures, as each node's help page (`js/docs/`).", "", "## Contents", ""]
    for category in sorted(categories):
        lines.append(f"- [{category}](#{anchors[category]})")
        for name in categories[category]:
            lines.append(f"  - [{nodes[name].get('display_name') or name}](#{anchors[name]}) ({_code(name)})")

    for category in sorted(categories):
        lines += ["", f"## {category}"]
        for name in categories[category]:
            node = nodes[name]
            lines += ["", f"### {node.get('display_name') or name}", "",
                      f"- Node id (class_type): {_code(name)}",
                      f"- Category: {_code(category)}",
                      f"- Output node: {'yes' if node.get('output_node') else 'no'}"]
            lines += [f"- {flag.capitalize()}: yes" for flag in ("deprecated", "experimental") if node.get(flag)]
            if node.get("description"):
                lines += ["", node["description"].strip()]
            lines += ["", f"**When to use.** {when[name].when}"]
            lines += ["", *_inputs(node)]
            hidden = node.get("input", {}).get("hidden", {})
            if hidden:
                lines += ["", "Hidden inputs (filled in by ComfyUI): " + ", ".join(_code(h) for h in hidden) + "."]
            lines += ["", *_outputs(node)]
    return "\n".join(lines) + "\n"


def _prose(text: str | None) -> str:
    """Text for a Markdown paragraph or list item on one line; '<' escaped, so '<prefix>' is not read as HTML
    (the front end's sanitiser would drop it)."""
    return " ".join((text or "").split()).replace("<", "&lt;")


def _help_inputs(node: Node) -> list[str]:
    """One list item per input: a narrow side panel reads a list better than docs/nodes.md's six columns."""
    order = node.get("input_order", {})
    items = []
    for section in ("required", "optional"):
        specs = node.get("input", {}).get(section, {})
        for name in order.get(section) or list(specs):
            kind, opts = _spec(specs[name])
            facts = [_code(kind)]
            if "default" in opts:
                facts.append(f"default {_value(opts['default'])}")
            if "options" in opts:
                facts.append(f"one of {_options(opts['options'])}")
            facts += [part for part in _details({k: v for k, v in opts.items() if k != "options"}).split("; ") if part]
            if section == "optional":
                facts.append("optional")
            facts = [fact.replace("<", "&lt;") for fact in facts]
            tip = f" — {_prose(opts['tooltip'])}" if opts.get("tooltip") else ""
            items.append(f"- **{_code(name)}** ({'; '.join(facts)}){tip}")
    return items or ["No inputs."]


def _help_outputs(node: Node) -> list[str]:
    types = node.get("output", [])
    names = node.get("output_name") or types
    tooltips = node.get("output_tooltips") or []
    lists = node.get("output_is_list") or []
    items = []
    for i, kind in enumerate(types):
        kind = "COMBO" if isinstance(kind, list) else str(kind)
        if i < len(lists) and lists[i]:
            kind += " (list)"
        tip = f" — {_prose(tooltips[i])}" if i < len(tooltips) and tooltips[i] else ""
        items.append(f"- **{_code(str(names[i]))}** ({_code(kind)}){tip}")
    return items or ["No outputs."]


def render_help(info: dict[str, Node]) -> dict[str, str]:
    """The front end's help page of each node of ours: {'<node id>.md': Markdown} (pure, like render).

    Image links are relative (img/...): the front end resolves them against the docs folder it fetched from."""
    nodes = our_nodes(info)
    when = guides(nodes)
    _, anchors = _anchors(nodes)
    pages = {}
    for name, node in nodes.items():
        guide = when[name]
        lines = [f"# {node.get('display_name') or name}", ""]
        if node.get("description"):
            lines += [_prose(node["description"]), ""]
        if guide.picture:
            picture = guide.picture
            lines += [f"![{picture.caption}](img/{picture.name})", "", f"*{picture.caption}*", ""]
        lines += ["## When to use", "", _prose(guide.when), "",
                  "## Inputs", "", *_help_inputs(node), "",
                  "## Outputs", "", *_help_outputs(node), "",
                  "---", "",
                  f"Node id {_code(name)}, category {_code(node.get('category', ''))}. All of the pack's nodes: "
                  f"[node reference]({REFERENCE_URL}#{anchors[name]}). Generated by `{COMMAND}` from the node's "
                  "definition."]
        pages[f"{name}.md"] = "\n".join(lines) + "\n"
    return pages


def render_pictures(info: dict[str, Node]) -> dict[str, bytes]:
    """The help pages' pictures as PNG files: {'img/<name>': bytes}, cropped from the committed docs/ pictures."""
    from PIL import Image  # ComfyUI's environment has Pillow; rendering the Markdown alone does not need it

    pictures = {}
    for guide in guides(our_nodes(info)).values():
        picture = guide.picture
        if picture is None:
            continue
        if '"' in picture.caption or "]" in picture.caption:
            raise ValueError(f"{picture.name}: the caption is also the alt text, which the front end does not "
                             "escape; leave out '\"' and ']'")
        with Image.open(REPO / picture.source) as source:
            image = source.convert("RGB")
        if picture.crop:
            image = image.crop(picture.crop)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=True)
        data = buffer.getvalue()
        if len(data) > MAX_PICTURE_BYTES:
            raise ValueError(f"{picture.name} is {len(data)} bytes, over {MAX_PICTURE_BYTES}: crop it smaller")
        pictures[f"img/{picture.name}"] = data
    return pictures


def help_files(info: dict[str, Node]) -> dict[str, bytes]:
    """Everything js/docs/ should hold, by path relative to it."""
    files = {path: text.encode() for path, text in render_help(info).items()}
    files.update(render_pictures(info))
    return files


def _pixels(data: bytes) -> tuple[Any, ...]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.mode, image.size, image.tobytes()


def same_file(path: str, expected: bytes, actual: bytes) -> bool:
    """Whether a js/docs file is what the generator writes: PNGs by their pixels (another zlib or Pillow may
    compress them differently), everything else byte for byte."""
    if path.endswith(".png"):
        return _pixels(expected) == _pixels(actual)
    return expected == actual


def stale_help(folder: Path, files: dict[str, bytes]) -> list[str]:
    """What differs between a js/docs folder and the generated files: missing, changed and extra paths."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
    problems = [f"missing: {path}" for path in sorted(set(files) - present)]
    problems += [f"changed: {path}" for path in sorted(set(files) & present)
                 if not same_file(path, files[path], (folder / path).read_bytes())]
    problems += [f"extra (not generated): {path}" for path in sorted(present - set(files))]
    return problems


def write_help(folder: Path, files: dict[str, bytes]) -> None:
    """Write the generated files (a PNG only when its pixels changed) and remove every other file there."""
    for path, data in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.is_file() and same_file(path, data, target.read_bytes())):
            target.write_bytes(data)
    for extra in sorted(folder.rglob("*"), reverse=True):  # files before the folders that hold them
        relative = extra.relative_to(folder).as_posix()
        if extra.is_file() and relative not in files:
            extra.unlink()
        elif extra.is_dir() and not any(extra.iterdir()):
            extra.rmdir()


def fetch_object_info() -> dict[str, Node]:
    """Start ComfyUI with only this pack (no test pack) and return its /object_info."""
    sys.path.insert(0, str(REPO))
    from testbed.comfy_server import comfy_server, get_json

    with comfy_server(test_pack=False) as server:
        return get_json(server["url"] + "/object_info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file (default: docs/nodes.md)")
    parser.add_argument("--help-dir", type=Path, default=HELP_DIR, help="help pages folder (default: js/docs)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a file is out of date")
    args = parser.parse_args(argv)

    info = fetch_object_info()
    text = render(info)
    files = help_files(info)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        stale = stale_help(args.help_dir, files)
        if current == text and not stale:
            print(f"{args.out} and {args.help_dir} are up to date")
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.out), "generated", lineterm="")
        print("\n".join([*diff, *(f"{args.help_dir}: {problem}" for problem in stale)]), file=sys.stderr)
        print(f"out of date: run `{COMMAND}` (or make docs)", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    write_help(args.help_dir, files)
    print(f"wrote {args.out} ({len(our_nodes(info))} nodes) and {args.help_dir} ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

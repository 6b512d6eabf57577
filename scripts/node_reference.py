"""Write docs/nodes.md, the reference of the pack's nodes, from ComfyUI's own /object_info.

Starts ComfyUI's main.py --cpu with only this pack in custom_nodes (testbed/comfy_server.py),
reads /object_info and renders every ExactInversion_* node: inputs, outputs, defaults, ranges and
tooltips, exactly as the front end gets them. The output is deterministic (no ports, no dates).

    scripts/py scripts/node_reference.py            # (re)write docs/nodes.md (also: make docs)
    scripts/py scripts/node_reference.py --check    # exit 1 if docs/nodes.md is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "nodes.md"
PREFIX = "ExactInversion_"  # our node ids; the test pack's are ExactInversionTest_*
MAX_OPTIONS = 12  # longer combo lists show their first MAX_OPTIONS - 2 entries and a count
COMMAND = "scripts/py scripts/node_reference.py"

Node = dict[str, Any]


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


def render(info: dict[str, Node]) -> str:
    """The Markdown reference of our nodes in an /object_info answer (pure: same input, same text)."""
    nodes = our_nodes(info)
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

    lines = ["# Node reference", "",
             f"Generated by `{COMMAND}` (`make docs`) from ComfyUI's `/object_info`; do not edit by hand. "
             f"{len(nodes)} nodes, in the order the pack registers them.", "", "## Contents", ""]
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
            lines += ["", *_inputs(node)]
            hidden = node.get("input", {}).get("hidden", {})
            if hidden:
                lines += ["", "Hidden inputs (filled in by ComfyUI): " + ", ".join(_code(h) for h in hidden) + "."]
            lines += ["", *_outputs(node)]
    return "\n".join(lines) + "\n"


def fetch_object_info() -> dict[str, Node]:
    """Start ComfyUI with only this pack (no test pack) and return its /object_info."""
    sys.path.insert(0, str(REPO))
    from testbed.comfy_server import comfy_server, get_json

    with comfy_server(test_pack=False) as server:
        return get_json(server["url"] + "/object_info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file (default: docs/nodes.md)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is out of date")
    args = parser.parse_args(argv)

    info = fetch_object_info()
    text = render(info)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current == text:
            print(f"{args.out} is up to date")
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.out), "generated", lineterm="")
        print("\n".join(diff), file=sys.stderr)
        print(f"{args.out} is out of date: run `{COMMAND}` (or make docs)", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(our_nodes(info))} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert a workflow saved by ComfyUI's front end (UI format) into the API format /prompt runs.

The UI format stores widget values positionally (``widgets_values``); the API format names every
input. The mapping needs each node's input definitions, in the shape of ``/object_info`` (or of
``INPUT_TYPES()`` in-process): widget inputs take values in order, seed-like INT inputs carry one
extra "control after generate" value, and extra UI-only widgets (e.g. LoadImage's upload button)
come last and are ignored.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
#: solver nodes whose round trip is exact: a Round-trip Check they feed must report <= 1e-5 relative
EXACT_SOLVERS = {"ExactInversion_EDICTSolver", "ExactInversion_BDIASolver", "ExactInversion_BELMSolver",
                 "ExactInversion_RexSolver"}


def _is_widget(spec: Any) -> bool:
    """Widget-typed inputs have a widget (and a slot in widgets_values) unless declared socket-only."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def _has_control_widget(name: str, spec: Any) -> bool:
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return kind == "INT" and name in ("seed", "noise_seed")


def ordered_inputs(input_types: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, spec) of required then optional inputs, in definition order."""
    out: list[tuple[str, Any]] = []
    for section in ("required", "optional"):
        out.extend(input_types.get(section, {}).items())
    return out


def ui_to_api(workflow: dict[str, Any], input_types: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """API-format prompt of a UI-format workflow; ``input_types[class_type]`` is INPUT_TYPES()."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        class_type = node["type"]
        if class_type in SKIPPED_NODE_TYPES or node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        if class_type not in input_types:
            raise KeyError(f"node {node['id']}: unknown node type {class_type!r} (missing custom node?)")
        linked = {inp["name"]: inp["link"] for inp in node.get("inputs", []) if inp.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        for name, spec in ordered_inputs(input_types[class_type]):
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
                if _is_widget(spec) and values:  # a widget converted to an input keeps its slot
                    values.pop(0)
                    if _has_control_widget(name, spec) and values:
                        values.pop(0)
                continue
            if not _is_widget(spec):
                continue
            if not values:
                raise ValueError(f"node {node['id']} ({class_type}): no widget value for input {name!r}")
            inputs[name] = values.pop(0)
            if _has_control_widget(name, spec) and values:
                values.pop(0)
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs,
                                   "_meta": {"title": node.get("title", class_type)}}
    return prompt


def comfy_input_types(class_types: set[str]) -> dict[str, dict[str, Any]]:
    """INPUT_TYPES() of node classes from an in-process ComfyUI (after nodes are loaded)."""
    import nodes

    return {c: nodes.NODE_CLASS_MAPPINGS[c].INPUT_TYPES() for c in class_types if c in nodes.NODE_CLASS_MAPPINGS}


# Stock loaders that need model files, and the test-only tinypack nodes with the same outputs.
TINY_LOADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "CheckpointLoaderSimple": ("ExactInversionTest_TinyCheckpointLoader", {"seed": 0}),  # MODEL, CLIP, VAE
    "ControlNetLoader": ("ExactInversionTest_TinyControlNetLoader", {"seed": 0}),  # CONTROL_NET
}


def swap_nodes(prompt: dict[str, Any], replacements: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Replace nodes by class type: ``{stock: (replacement, inputs)}``; links to them stay as they are,
    so a replacement must have the same outputs in the same order."""
    out = {}
    for node_id, node in prompt.items():
        if node["class_type"] in replacements:
            loader, inputs = replacements[node["class_type"]]
            node = {**node, "class_type": loader, "inputs": dict(inputs)}
        out[node_id] = node
    return out


def swap_loaders(prompt: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Every stock checkpoint and ControlNet loader replaced by the tiny test loaders (weights from ``seed``),
    so a workflow written for real model files runs without any."""
    replacements = {stock: (tiny, {**inputs, "seed": seed}) for stock, (tiny, inputs) in TINY_LOADERS.items()}
    return swap_nodes(prompt, replacements)


def swap_checkpoint_loader(prompt: dict[str, Any], loader: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Replace every CheckpointLoaderSimple with ``loader`` (same outputs: MODEL, CLIP, VAE)."""
    return swap_nodes(prompt, {"CheckpointLoaderSimple": (loader, inputs)})


def upstream_solvers(prompt: dict, node_id: str) -> set[str]:
    """Solver node types that feed ``node_id`` (through any chain of links)."""
    seen, todo, found = set(), [node_id], set()
    while todo:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = prompt[nid]
        if node["class_type"].endswith("Solver"):
            found.add(node["class_type"])
        todo += [v[0] for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2 and v[0] in prompt]
    return found

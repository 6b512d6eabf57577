"""Write the workflow files in workflows/ (front-end UI format) from compact graph descriptions.

Node inputs and outputs are read from the real ComfyUI's node definitions, so the files match
what the front end would save. Run: scripts/py scripts/make_workflows.py
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Ref = tuple["Node | Port", int]

#: Height (canvas px, without the title) to leave for a node: its widgets plus what a run adds (image
#: previews, our report panel; the word picker's chips). Rows are spaced by their tallest node, so the
#: front end never has to grow a node over its neighbour below. Measured in the front end at width 320.
NODE_HEIGHTS = {"ExactInversion_BlendedGuidance": 600, "ExactInversion_AttentionMask": 460,
                "ExactInversion_NullTextInversion": 440, "ExactInversion_RoundTripCheck": 330,
                "ExactInversion_Invert": 170, "LoadImage": 330, "SaveImage": 250, "MaskPreview": 200,
                "PreviewImage": 250}
DEFAULT_HEIGHT = 160
ROW_GAP = 60  # title bar and space between rows


def widget_values(class_type: str, spec: dict[str, Any], named: dict[str, Any], linked: set[str]) -> list[Any]:
    """The front end's ``widgets_values`` list of a node from named values, in the schema's order.

    Unnamed widgets take their default; a seed's "control after generate" widget follows it ('fixed' unless
    ``<name>:control`` is given) and an image upload widget follows the file name, as the front end saves them.
    """
    rest = dict(named)
    values: list[Any] = []
    for name, sp in [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]:
        kind = sp[0] if isinstance(sp, (list, tuple)) else sp
        opts = sp[1] if isinstance(sp, (list, tuple)) and len(sp) > 1 and isinstance(sp[1], dict) else {}
        is_widget = not isinstance(kind, str) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
        if not is_widget or name in linked or _socket_only(sp):
            continue
        if name in rest:
            values.append(rest.pop(name))
        elif "default" in opts:
            values.append(opts["default"])
        else:
            raise KeyError(f"{class_type}: widget {name!r} has no default; name its value")
        if opts.get("control_after_generate"):
            values.append(rest.pop(f"{name}:control", "fixed"))
        if opts.get("image_upload"):
            values.append("image")
    if rest:
        raise KeyError(f"{class_type} has no widgets {sorted(rest)}")
    return values


def _socket_only(spec: Any) -> bool:
    """A widget-typed input declared forceInput: the front end shows a socket and no widget."""
    return isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) \
        and bool(spec[1].get("forceInput"))


class Node:
    def __init__(self, graph: Graph, node_id: int, class_type: str, widgets: dict[str, Any], col: int, row: int,
                 title: str | None, links: dict[str, Ref]) -> None:
        self.graph, self.id, self.type, self.widgets = graph, node_id, class_type, widgets
        self.col, self.row, self.title, self.links = col, row, title, links

    def out(self, slot: int = 0) -> Ref:
        return (self, slot)

    def widget_links(self) -> dict[str, Any]:
        """Widgets fed by a blueprint's widget (a Port with a value): their values, which the file still holds."""
        return {name: src.value for name, (src, _) in self.links.items() if isinstance(src, Port) and src.is_widget}


class Port:
    """An input of a blueprint (subgraph): a socket (MODEL, IMAGE, ...) or a widget (STRING, INT, FLOAT, COMBO)
    shown on the blueprint's node, linked inside to the node inputs that use it. Its links start at the
    subgraph's input node, id -10, slot ``index``."""

    id = -10
    WIDGET_KINDS = ("STRING", "INT", "FLOAT", "COMBO")

    def __init__(self, index: int, name: str, kind: str, value: Any = None, label: str | None = None) -> None:
        self.index, self.name, self.kind, self.value, self.label = index, name, kind, value, label

    @property
    def is_widget(self) -> bool:
        return self.kind in self.WIDGET_KINDS

    def out(self) -> Ref:
        return (self, self.index)


class Graph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, class_type: str, widgets: dict[str, Any] | None = None, col: int = 0, row: int = 0,
            title: str | None = None, **links: Ref) -> Node:
        """A node with named widget values (the rest at the node's defaults) and ``input=(node, slot)`` links."""
        node = Node(self, len(self.nodes) + 1, class_type, widgets or {}, col, row, title, links)
        self.nodes.append(node)
        return node

    def to_ui(self, widget_inputs: bool = False) -> dict[str, Any]:
        """The graph in the front end's format. ``widget_inputs``: list every widget as an input slot too, after
        the sockets, as front ends from 1.16 save nodes; a link's slot then counts them (blueprints need it:
        their inputs link to widgets). The workflows keep the older, shorter form, which both front ends read."""
        import nodes as comfy_nodes

        defs = {n.type: comfy_nodes.NODE_CLASS_MAPPINGS[n.type] for n in self.nodes}
        link_rows: list[list[Any]] = []
        out_links: dict[tuple[int, int], list[int]] = {}
        in_links: dict[tuple[int, str], int] = {}
        for node in self.nodes:
            spec = defs[node.type].INPUT_TYPES()
            all_inputs = {**spec.get("required", {}), **spec.get("optional", {})}
            for name, (src, slot) in node.links.items():
                if name not in all_inputs:
                    raise KeyError(f"{node.type} has no input {name!r}")
                link_id = len(link_rows) + 1
                kind = src.kind if isinstance(src, Port) else defs[src.type].RETURN_TYPES[slot]
                link_rows.append([link_id, src.id, slot, node.id, None, kind])
                out_links.setdefault((src.id, slot), []).append(link_id)
                in_links[(node.id, name)] = link_id
        row_height: dict[int, int] = {}
        for node in self.nodes:
            row_height[node.row] = max(row_height.get(node.row, 0), NODE_HEIGHTS.get(node.type, DEFAULT_HEIGHT))
        row_top = {row: 40 + sum(row_height.get(r, DEFAULT_HEIGHT) + ROW_GAP for r in range(row))
                   for row in row_height}
        ui_nodes = []
        for order, node in enumerate(self.nodes):
            cls = defs[node.type]
            spec = cls.INPUT_TYPES()
            inputs = []
            for name, sp in [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]:
                kind = sp[0] if isinstance(sp, (list, tuple)) else sp
                if (node.id, name) in in_links:
                    inputs.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO",
                                   "link": in_links[(node.id, name)]})
                    if name in node.widget_links():  # a blueprint's widget drives this widget
                        inputs[-1]["widget"] = {"name": name}
                elif isinstance(kind, str) and (kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                                                or _socket_only(sp)):
                    inputs.append({"name": name, "type": kind, "link": None})
                elif widget_inputs:
                    inputs.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO",
                                   "widget": {"name": name}, "link": None})
            if widget_inputs:  # the front ends' slot order: sockets first, then the widgets (1.32 matches by slot)
                inputs.sort(key=lambda inp: "widget" in inp)
            for slot_index, inp in enumerate(inputs):
                if inp["link"] is not None:
                    link_rows[inp["link"] - 1][4] = slot_index
            names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
            outputs = [{"name": names[i], "type": t, "links": out_links.get((node.id, i), []), "slot_index": i}
                       for i, t in enumerate(cls.RETURN_TYPES)]
            ui = {"id": node.id, "type": node.type, "pos": [40 + node.col * 360, row_top[node.row]],
                  "size": [320, NODE_HEIGHTS.get(node.type, DEFAULT_HEIGHT)], "flags": {}, "order": order,
                  "mode": 0, "inputs": inputs,
                  "outputs": outputs, "properties": {"Node name for S&R": node.type},
                  "widgets_values": widget_values(node.type, spec, {**node.widgets, **node.widget_links()},
                                                  set(node.links) - set(node.widget_links()))}
            if node.title:
                ui["title"] = node.title
            ui_nodes.append(ui)
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([n.type for n in self.nodes]))),
                "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(link_rows),
                "nodes": ui_nodes, "links": link_rows, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def _checkpoint_and_image(g: Graph) -> tuple[Node, Node]:
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, 0, 0)
    image = g.add("LoadImage", {"image": "example.png"}, 0, 1)
    return ckpt, image


def _prompts_and_latent(g: Graph, ckpt: Node, image: Node) -> tuple[Node, Node, Node, Node]:
    """Source, target and negative prompts, and the encoded image (column 1)."""
    src = g.add("CLIPTextEncode", {"text": "a photo of a dog on the grass"}, 1, 0, "Source prompt", clip=ckpt.out(1))
    tgt = g.add("CLIPTextEncode", {"text": "a photo of a cat on the grass"}, 1, 1, "Target prompt", clip=ckpt.out(1))
    neg = g.add("CLIPTextEncode", {"text": ""}, 1, 2, "Negative prompt", clip=ckpt.out(1))
    enc = g.add("VAEEncode", {}, 1, 3, pixels=image.out(0), vae=ckpt.out(2))
    return src, tgt, neg, enc


def _guiders_grid_solver(g: Graph, ckpt: Node, source: tuple[Ref, Ref], target: tuple[Ref, Ref], col: int,
                         solver_type: str, solver_widgets: dict[str, Any]) -> tuple[Node, Node, Node, Node]:
    """Source guider (cfg 1), target guider (cfg 3), 20-step normal grid and the solver, in one column."""
    g_src = g.add("CFGGuider", {"cfg": 1.0}, col, 0, "Source guider (inversion)", model=ckpt.out(0), positive=source[0],
                  negative=source[1])
    g_tgt = g.add("CFGGuider", {"cfg": 3.0}, col, 1, "Target guider (edit)", model=ckpt.out(0), positive=target[0],
                  negative=target[1])
    sigmas = g.add("BasicScheduler", {"scheduler": "normal", "steps": 20, "denoise": 1.0}, col, 2, model=ckpt.out(0))
    solver = g.add(solver_type, solver_widgets, col, 3)
    return g_src, g_tgt, sigmas, solver


def _edit_reconstruct_save(g: Graph, ckpt: Node, g_src: Node, g_tgt: Node, sigmas: Node, inversion: Ref,
                           check: dict[str, Ref], col: int, prefix: str, suffix: str = "") -> None:
    """Edit (target) and Reconstruct (source) from ``inversion``, a round-trip check, decode and save."""
    edit = g.add("ExactInversion_Edit", {}, col, 0, "Edit" + suffix, guider=g_tgt.out(0), inversion=inversion,
                 sigmas=sigmas.out(0))
    recon = g.add("ExactInversion_Edit", {}, col, 1, "Reconstruct" + suffix, guider=g_src.out(0),
                  inversion=inversion)
    g.add("ExactInversion_RoundTripCheck", {}, col + 1, 2, **check, result_latent=recon.out(0))
    dec_e = g.add("VAEDecode", {}, col + 1, 0, samples=edit.out(0), vae=ckpt.out(2))
    dec_r = g.add("VAEDecode", {}, col + 1, 1, samples=recon.out(0), vae=ckpt.out(2))
    g.add("SaveImage", {"filename_prefix": f"{prefix}/edit"}, col + 2, 0, images=dec_e.out(0))
    g.add("SaveImage", {"filename_prefix": f"{prefix}/reconstruction"}, col + 2, 1, images=dec_r.out(0))


def sd15_invert_edit(solver_type: str = "ExactInversion_DDIMSolver", prefix: str = "exact_inversion") -> Graph:
    """LoadImage -> VAEEncode -> Invert (source prompt, cfg 1) -> Edit (target prompt) -> SaveImage,
    plus a reconstruction with the source guider and a round-trip check."""
    g = Graph()
    ckpt, image = _checkpoint_and_image(g)
    src, tgt, neg, enc = _prompts_and_latent(g, ckpt, image)
    g_src, g_tgt, sigmas, solver = _guiders_grid_solver(g, ckpt, (src.out(0), neg.out(0)), (tgt.out(0), neg.out(0)),
                                                        2, solver_type, SOLVER_WIDGETS[solver_type])
    inv = g.add("ExactInversion_Invert", {}, 3, 0, guider=g_src.out(0), sampler=solver.out(0),
                sigmas=sigmas.out(0), latent=enc.out(0))
    _edit_reconstruct_save(g, ckpt, g_src, g_tgt, sigmas, inv.out(0), {"original_latent": enc.out(0)}, 4, prefix)
    return g


def controlnet_invert_edit(solver_type: str = "ExactInversion_EDICTSolver",
                           prefix: str = "exact_inversion/controlnet") -> Graph:
    """Like sd15_invert_edit, with a Canny ControlNet on both guiders: the edges of the input image
    control the inversion (source prompt) and the edit (target prompt), positive and negative alike.
    The reconstruction uses the controlled source guider, so an exact solver still gives back the
    encoded latent."""
    g = Graph()
    ckpt, image = _checkpoint_and_image(g)
    cnet = g.add("ControlNetLoader", {"control_net_name": "control_v11p_sd15_canny.safetensors"}, 0, 2)
    edges = g.add("Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, 0, 3, "Hint (Canny edges of the input)",
                  image=image.out(0))
    src, tgt, neg, enc = _prompts_and_latent(g, ckpt, image)
    c_src = g.add("ControlNetApplyAdvanced", CONTROLNET_FULL, 2, 0, "ControlNet on the source prompts",
                  positive=src.out(0), negative=neg.out(0), control_net=cnet.out(0), image=edges.out(0))
    c_tgt = g.add("ControlNetApplyAdvanced", CONTROLNET_FULL, 2, 1, "ControlNet on the target prompts",
                  positive=tgt.out(0), negative=neg.out(0), control_net=cnet.out(0), image=edges.out(0))
    g_src, g_tgt, sigmas, solver = _guiders_grid_solver(g, ckpt, (c_src.out(0), c_src.out(1)),
                                                        (c_tgt.out(0), c_tgt.out(1)), 3, solver_type,
                                                        SOLVER_WIDGETS[solver_type])
    inv = g.add("ExactInversion_Invert", {}, 4, 0, guider=g_src.out(0), sampler=solver.out(0),
                sigmas=sigmas.out(0), latent=enc.out(0))
    _edit_reconstruct_save(g, ckpt, g_src, g_tgt, sigmas, inv.out(0), {"original_latent": enc.out(0)}, 5, prefix)
    return g


#: RF-Edit's Flux-dev settings (algorithms.md 10.3): distilled guidance 1 to invert, 5 to edit; its 25 steps for
#: RF-Solver, FireFlow's headline 8 (2 + 7 evaluations each way)
FLUX_GUIDANCE_INVERT, FLUX_GUIDANCE_EDIT = 1.0, 5.0
FLUX_STEPS = {"ExactInversion_RFSolver": 25, "ExactInversion_FireFlowSolver": 8}


def flux_invert_edit(solver_type: str, prefix: str) -> Graph:
    """A Flux-dev inversion and edit as Flux users run them: the all-in-one checkpoint, distilled guidance
    (FluxGuidance) through one-pass BasicGuiders, the 'simple' schedule, and RF-Solver or FireFlow."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": "flux1-dev-fp8.safetensors"}, 0, 0)
    image = g.add("LoadImage", {"image": "example.png"}, 0, 1)
    src = g.add("CLIPTextEncode", {"text": "a photo of a dog on the grass"}, 1, 0, "Source prompt", clip=ckpt.out(1))
    tgt = g.add("CLIPTextEncode", {"text": "a photo of a cat on the grass"}, 1, 1, "Target prompt", clip=ckpt.out(1))
    enc = g.add("VAEEncode", {}, 1, 3, pixels=image.out(0), vae=ckpt.out(2))
    f_src = g.add("FluxGuidance", {"guidance": FLUX_GUIDANCE_INVERT}, 2, 0, "Inversion guidance",
                  conditioning=src.out(0))
    f_tgt = g.add("FluxGuidance", {"guidance": FLUX_GUIDANCE_EDIT}, 2, 1, "Edit guidance", conditioning=tgt.out(0))
    g_src = g.add("BasicGuider", {}, 3, 0, "Source guider (inversion)", model=ckpt.out(0), conditioning=f_src.out(0))
    g_tgt = g.add("BasicGuider", {}, 3, 1, "Target guider (edit)", model=ckpt.out(0), conditioning=f_tgt.out(0))
    sigmas = g.add("BasicScheduler", {"scheduler": "simple", "steps": FLUX_STEPS[solver_type], "denoise": 1.0}, 3, 2,
                   model=ckpt.out(0))
    solver = g.add(solver_type, SOLVER_WIDGETS[solver_type], 3, 3)
    inv = g.add("ExactInversion_Invert", {}, 4, 0, guider=g_src.out(0), sampler=solver.out(0), sigmas=sigmas.out(0),
                latent=enc.out(0))
    _edit_reconstruct_save(g, ckpt, g_src, g_tgt, sigmas, inv.out(0), {"original_latent": enc.out(0)}, 5, prefix)
    return g


def save_load_edit(prefix: str = "exact_inversion/save_load") -> Graph:
    """Invert with BDIA, save the inversion, load it back and edit from the loaded file.

    Save Inversion's 'file' output feeds Load Inversion's 'file_name', so one run saves before it
    loads; later, pick the file in Load Inversion's list and delete the invert half. Load Inversion
    checks the file against the encoded latent and the grid; Edit checks the model.
    """
    g = Graph()
    ckpt, image = _checkpoint_and_image(g)
    src, tgt, neg, enc = _prompts_and_latent(g, ckpt, image)
    g_src, g_tgt, sigmas, solver = _guiders_grid_solver(g, ckpt, (src.out(0), neg.out(0)), (tgt.out(0), neg.out(0)),
                                                        2, "ExactInversion_BDIASolver",
                                                        SOLVER_WIDGETS["ExactInversion_BDIASolver"])
    inv = g.add("ExactInversion_Invert", {}, 3, 0, guider=g_src.out(0), sampler=solver.out(0),
                sigmas=sigmas.out(0), latent=enc.out(0))
    saved = g.add("ExactInversion_SaveInversion", {"filename_prefix": "example"}, 3, 1, inversion=inv.out(0))
    loaded = g.add("ExactInversion_LoadInversion", {"file": "(none)", "allow_mismatch": False}, 4, 1,
                   file_name=saved.out(0),
                   latent=enc.out(0), sigmas=sigmas.out(0))
    _edit_reconstruct_save(g, ckpt, g_src, g_tgt, sigmas, loaded.out(0), {"inversion": loaded.out(0)}, 5, prefix,
                           " (from the file)")
    return g


#: (label, solver node, widgets) of every solver family, as in the per-solver SD workflows
SOLVERS = [
    ("DDIM", "ExactInversion_DDIMSolver", {"inversion_label": "current", "state_dtype": "auto"}),
    ("EDICT", "ExactInversion_EDICTSolver", {"p": 0.93, "p_rule": "fixed", "state_dtype": "auto"}),
    ("BDIA", "ExactInversion_BDIASolver", {"gamma": 1.0, "state_dtype": "auto"}),
    ("AIDI", "ExactInversion_AIDISolver", {"variant": "A", "max_iter": 6, "tol": 1e-8, "window": 3,
                                           "state_dtype": "auto"}),
    ("EES", "ExactInversion_EESSolver", {"scheme": "EES(2,5)", "state_dtype": "auto"}),
]
#: the solvers added after the five families of the toy grid: each has its SD workflow, no row in the toy grid
NEWER_SOLVERS = [
    ("BELM", "ExactInversion_BELMSolver", {"state_dtype": "auto"}),
    ("Rex", "ExactInversion_RexSolver", {"tableau": "euler", "prediction": "data", "zeta": 0.999,
                                         "state_dtype": "auto"}),
    ("RF-Solver", "ExactInversion_RFSolver", {"state_dtype": "auto"}),
    ("FireFlow", "ExactInversion_FireFlowSolver", {"state_dtype": "auto"}),
]
SOLVER_WIDGETS = {node_type: widgets for _, node_type, widgets in SOLVERS + NEWER_SOLVERS}
#: the toy workflow's exact solvers at 25 steps: EDICT's p scaled by its rule (0.93^(50/25)) and BDIA's gamma 0.8;
#: with p 0.93 fixed / gamma 1 the toy edits come out noisy (bench/edit_quality.py). gamma 0.8 was measured best
#: at 25 steps (24 images: every edit reads right, 22 dB of background kept, exact); the authors' 0.5 for few
#: steps amplifies the inversion by 3.4e7 there and is refused by bdia_guard. BDIA's gamma_rule "scaled" keeps that
#: setting's amplification if a user changes the step count (0.57 at 10 steps, 0.89 at 50).
TOY_SOLVER_WIDGETS = {"EDICT": {"p": 0.93, "p_rule": "scaled", "state_dtype": "auto"},
                      "BDIA": {"gamma": 0.8, "state_dtype": "auto", "gamma_rule": "scaled"}}
TOY_SOURCE = "a red circle on a green background"
TOY_TARGET = "a yellow circle on a green background"
TOY_IMAGE = "toy_example.png"
TOY_STEPS = 25
TOY_GRID = {"scheduler": "normal", "steps": TOY_STEPS, "denoise": 1.0}
TOY_CFG_EDIT = 4.0
#: a ControlNet at full strength over the whole grid
CONTROLNET_FULL = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}


def toy_invert_edit(prefix: str = "exact_inversion/toy") -> Graph:
    """Every solver side by side on the embedded toy model: one held-out image, inverted with its caption
    (cfg 1), reconstructed and edited to the target caption (cfg 4). One row per solver; titles start with
    the solver's label (the demo reads them)."""
    g = Graph()
    loader = g.add("ExactInversion_ToyModelLoader", {"model_file": "toy_model.safetensors"}, 0, 0)
    image = g.add("LoadImage", {"image": TOY_IMAGE}, 0, 1, "Held-out toy image")
    src = g.add("CLIPTextEncode", {"text": TOY_SOURCE}, 1, 0, "Source prompt (the image's caption)", clip=loader.out(1))
    tgt = g.add("CLIPTextEncode", {"text": TOY_TARGET}, 1, 1, "Target prompt", clip=loader.out(1))
    neg = g.add("CLIPTextEncode", {"text": ""}, 1, 2, "Negative prompt", clip=loader.out(1))
    enc = g.add("VAEEncode", {}, 1, 3, pixels=image.out(0), vae=loader.out(2))
    g_src = g.add("CFGGuider", {"cfg": 1.0}, 2, 0, "Source guider (inversion)", model=loader.out(0),
                  positive=src.out(0),
                  negative=neg.out(0))
    g_tgt = g.add("CFGGuider", {"cfg": TOY_CFG_EDIT}, 2, 1, "Target guider (edit)", model=loader.out(0),
                  positive=tgt.out(0), negative=neg.out(0))
    sigmas = g.add("BasicScheduler", TOY_GRID, 2, 2, model=loader.out(0))
    for row, (label, node_type, widgets) in enumerate(SOLVERS):
        solver = g.add(node_type, TOY_SOLVER_WIDGETS.get(label, widgets), 3, row, f"{label}: solver")
        inv = g.add("ExactInversion_Invert", {}, 4, row, f"{label}: Invert", guider=g_src.out(0),
                    sampler=solver.out(0), sigmas=sigmas.out(0), latent=enc.out(0))
        edit = g.add("ExactInversion_Edit", {}, 5, row, f"{label}: Edit", guider=g_tgt.out(0), inversion=inv.out(0),
                     sigmas=sigmas.out(0))
        recon = g.add("ExactInversion_Edit", {}, 6, row, f"{label}: Reconstruct", guider=g_src.out(0),
                      inversion=inv.out(0))
        g.add("ExactInversion_RoundTripCheck", {}, 7, row, f"{label}: Round-trip Check", inversion=inv.out(0),
              result_latent=recon.out(0))
        dec_e = g.add("VAEDecode", {}, 8, row, f"{label}: decode edit", samples=edit.out(0), vae=loader.out(2))
        dec_r = g.add("VAEDecode", {}, 9, row, f"{label}: decode reconstruction", samples=recon.out(0),
                      vae=loader.out(2))
        g.add("SaveImage", {"filename_prefix": f"{prefix}/{label.lower()}_edit"}, 10, row, f"{label}: save edit",
              images=dec_e.out(0))
        g.add("SaveImage", {"filename_prefix": f"{prefix}/{label.lower()}_reconstruction"}, 11, row,
              f"{label}: save reconstruction",
              images=dec_r.out(0))
    return g


def _toy_inputs(g: Graph, with_target: bool = True) -> dict[str, Node]:
    """Loader, image, prompts and the encoded image of the toy workflows (columns 0 and 1)."""
    n = {"loader": g.add("ExactInversion_ToyModelLoader", {"model_file": "toy_model.safetensors"}, 0, 0)}
    clip = n["loader"].out(1)
    n["image"] = g.add("LoadImage", {"image": TOY_IMAGE}, 0, 1, "Held-out toy image")
    n["src"] = g.add("CLIPTextEncode", {"text": TOY_SOURCE}, 1, 0, "Source prompt (the image's caption)", clip=clip)
    if with_target:
        n["tgt"] = g.add("CLIPTextEncode", {"text": TOY_TARGET}, 1, 1, "Target prompt", clip=clip)
    n["neg"] = g.add("CLIPTextEncode", {"text": ""}, 1, 2, "Negative prompt", clip=clip)
    n["enc"] = g.add("VAEEncode", {}, 1, 3, pixels=n["image"].out(0), vae=n["loader"].out(2))
    return n


def _toy_inversion(g: Graph, n: dict[str, Node], solver_label: str, col: int = 2) -> tuple[Node, Node, Node]:
    """Source guider (cfg 1), the grid and ``solver_label``'s solver, Invert, Reconstruct and its check:
    (source guider, Invert, Reconstruct)."""
    loader = n["loader"]
    g_src = g.add("CFGGuider", {"cfg": 1.0}, col, 0, "Source guider (inversion)", model=loader.out(0),
                  positive=n["src"].out(0), negative=n["neg"].out(0))
    sigmas = g.add("BasicScheduler", TOY_GRID, col, 1, model=loader.out(0))
    _, node_type, widgets = next(s for s in SOLVERS if s[0] == solver_label)
    solver = g.add(node_type, TOY_SOLVER_WIDGETS.get(solver_label, widgets), col, 2, f"{solver_label} solver")
    inv = g.add("ExactInversion_Invert", {}, col + 1, 0, guider=g_src.out(0), sampler=solver.out(0),
                sigmas=sigmas.out(0), latent=n["enc"].out(0))
    recon = g.add("ExactInversion_Edit", {}, col + 1, 1, "Reconstruct", guider=g_src.out(0), inversion=inv.out(0))
    g.add("ExactInversion_RoundTripCheck", {}, col + 1, 2, inversion=inv.out(0), result_latent=recon.out(0))
    return g_src, inv, recon


def _blended_widgets(local_blend: bool, eta: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Blended Guidance Guider: anchor 'red' (the circle's colour, the edit region); threshold, sharpness,
    resolution and injection at the node's defaults."""
    return {"source_prompt": TOY_SOURCE, "target_prompt": TOY_TARGET, "anchor": "red", "anchor_role": "edit region",
            "cfg": 1.0, "target_cfg": TOY_CFG_EDIT, "blended_guidance": True, "local_blend": local_blend, "eta": eta,
            "seed": seed}


def _decode_save(g: Graph, n: dict[str, Node], latent: Ref, col: int, row: int, label: str, prefix: str) -> None:
    dec = g.add("VAEDecode", {}, col, row, f"decode {label}", samples=latent, vae=n["loader"].out(2))
    g.add("SaveImage", {"filename_prefix": f"{prefix}/{label.replace(' ', '_')}"}, col + 1, row, f"save {label}",
          images=dec.out(0))


def toy_attention_mask(prefix: str = "exact_inversion/toy_mask") -> Graph:
    """Where is 'red', where is 'green'? Attention masks of the inverted toy image, previewed and saved."""
    g = Graph()
    n = _toy_inputs(g, with_target=False)
    g_src, inv, _ = _toy_inversion(g, n, "EDICT")
    for row, word in enumerate(("red", "green")):
        mask = g.add("ExactInversion_AttentionMask",
                     {"prompt": TOY_SOURCE, "words": word, "resolution": "all", "start": 0.0, "end": 1.0}, 4, row,
                     f"Attention mask: {word}", guider=g_src.out(0), inversion=inv.out(0), clip=n["loader"].out(1))
        g.add("MaskPreview", {}, 5, row, f"preview: {word}", mask=mask.out(0))
        image = g.add("MaskToImage", {}, 6, row, mask=mask.out(0))
        g.add("SaveImage", {"filename_prefix": f"{prefix}/{word}"}, 7, row, f"save mask: {word}", images=image.out(0))
    return g


def toy_blended_edit(prefix: str = "exact_inversion/toy_blended") -> Graph:
    """The same edit twice from one EDICT inversion: plain CFG, and blended guidance with local blend (the
    demo's headline recipe); the reconstruction is saved too."""
    g = Graph()
    n = _toy_inputs(g)
    _, inv, recon = _toy_inversion(g, n, "EDICT")
    loader = n["loader"]
    g_plain = g.add("CFGGuider", {"cfg": TOY_CFG_EDIT}, 4, 0, "Plain guider (edit)", model=loader.out(0),
                    positive=n["tgt"].out(0), negative=n["neg"].out(0))
    g_blend = g.add("ExactInversion_BlendedGuidance", _blended_widgets(local_blend=True), 4, 1,
                    "Blended guidance (anchor: red)", model=loader.out(0), source_positive=n["src"].out(0),
                    target_positive=n["tgt"].out(0), negative=n["neg"].out(0), clip=loader.out(1))
    plain = g.add("ExactInversion_Edit", {}, 5, 0, "Edit: plain", guider=g_plain.out(0), inversion=inv.out(0))
    blend = g.add("ExactInversion_Edit", {}, 5, 1, "Edit: blended", guider=g_blend.out(0), inversion=inv.out(0))
    _decode_save(g, n, plain.out(0), 6, 0, "plain edit", prefix)
    _decode_save(g, n, blend.out(0), 6, 1, "blended edit", prefix)
    _decode_save(g, n, recon.out(0), 6, 2, "reconstruction", prefix)
    return g


TOY_VARIANT_SEEDS = (1, 2, 3)
TOY_VARIANT_ETA = 0.5


def toy_stochastic_variants(prefix: str = "exact_inversion/toy_variants") -> Graph:
    """Stochastic editing: one DDIM inversion, three seeded variants of the blended edit (noise inside the mask)."""
    g = Graph()
    n = _toy_inputs(g)
    _, inv, _ = _toy_inversion(g, n, "DDIM")
    loader = n["loader"]
    for row, seed in enumerate(TOY_VARIANT_SEEDS):
        guider = g.add("ExactInversion_BlendedGuidance", _blended_widgets(True, TOY_VARIANT_ETA, seed), 4, row,
                       f"Blended guidance, seed {seed}", model=loader.out(0), source_positive=n["src"].out(0),
                       target_positive=n["tgt"].out(0), negative=n["neg"].out(0), clip=loader.out(1))
        edit = g.add("ExactInversion_Edit", {}, 5, row, f"Edit: variant {seed}", guider=guider.out(0),
                     inversion=inv.out(0))
        _decode_save(g, n, edit.out(0), 6, row, f"variant {seed}", prefix)
    return g


#: the null-text workflows edit at the paper's cfg 7.5, where plain DDIM inversion falls apart on the toy model
TOY_CFG_NULL_TEXT = 7.5
#: NTI's optimiser on the embedded model (bench/nulltext.py, TOY_NTI): its pixel-space latent wants a larger
#: step and an early stop that tightens towards the last step, whose loss is the reconstruction's error
TOY_NTI = {"learning_rate": 0.1, "early_stop": 2e-4, "early_stop_schedule": "tightening"}


def _null_text_widgets(method: str, **changes: Any) -> dict[str, Any]:
    """Null-text Inversion: the node's defaults (the papers'), with ``changes``."""
    return {"method": method, **changes}


def toy_null_text(method: str, solver_label: str, title: str, prefix: str, compare_plain: bool,
                  **changes: Any) -> Graph:
    """Invert at cfg 7.5 with ``method`` and edit at cfg 7.5 with a plain CFGGuider (Edit applies the learned
    embeddings to its negative); with ``compare_plain`` also a plain DDIM inversion at cfg 7.5 beside it."""
    g = Graph()
    n = _toy_inputs(g)
    loader = n["loader"]
    g_src = g.add("CFGGuider", {"cfg": TOY_CFG_NULL_TEXT}, 2, 0, "Source guider (cfg 7.5)", model=loader.out(0),
                  positive=n["src"].out(0), negative=n["neg"].out(0))
    g_tgt = g.add("CFGGuider", {"cfg": TOY_CFG_NULL_TEXT}, 2, 1, "Target guider (cfg 7.5)", model=loader.out(0),
                  positive=n["tgt"].out(0), negative=n["neg"].out(0))
    sigmas = g.add("BasicScheduler", TOY_GRID, 2, 2, model=loader.out(0))
    node_type, widgets = {"DDIM": ("ExactInversion_DDIMSolver", {"inversion_label": "next", "state_dtype": "auto"}),
                          "EDICT": ("ExactInversion_EDICTSolver", TOY_SOLVER_WIDGETS["EDICT"])}[solver_label]
    solver = g.add(node_type, widgets, 2, 3, f"{solver_label} solver")
    inv = g.add("ExactInversion_NullTextInversion", _null_text_widgets(method, **changes), 3, 0, title,
                guider=g_src.out(0), sampler=solver.out(0), sigmas=sigmas.out(0), latent=n["enc"].out(0))
    rows = [(method, inv)]
    if compare_plain:
        plain = g.add("ExactInversion_Invert", {}, 3, 2, "Plain DDIM inversion at cfg 7.5", guider=g_src.out(0),
                      sampler=solver.out(0), sigmas=sigmas.out(0), latent=n["enc"].out(0))
        rows.append(("plain", plain))
    for row, (label, node) in enumerate(rows):
        recon = g.add("ExactInversion_Edit", {}, 4, 2 * row, f"Reconstruct: {label}", guider=g_src.out(0),
                      inversion=node.out(0))
        edit = g.add("ExactInversion_Edit", {}, 4, 2 * row + 1, f"Edit: {label}", guider=g_tgt.out(0),
                     inversion=node.out(0))
        g.add("ExactInversion_RoundTripCheck", {}, 5, 2 * row, f"Round-trip Check: {label}", inversion=node.out(0),
              result_latent=recon.out(0))
        _decode_save(g, n, recon.out(0), 6, 2 * row, f"{label} reconstruction", prefix)
        _decode_save(g, n, edit.out(0), 6, 2 * row + 1, f"{label} edit", prefix)
    return g


WORKFLOWS = {
    "toy_invert_edit.json": lambda: toy_invert_edit(),
    "toy_attention_mask.json": lambda: toy_attention_mask(),
    "toy_blended_edit.json": lambda: toy_blended_edit(),
    "toy_stochastic_variants.json": lambda: toy_stochastic_variants(),
    "toy_null_text_edit.json": lambda: toy_null_text("nti", "DDIM", "Null-text inversion (NTI)",
                                                     "exact_inversion/toy_nti", compare_plain=True, **TOY_NTI),
    "toy_npi_edit.json": lambda: toy_null_text("npi", "EDICT", "Negative-prompt inversion (NPI)",
                                               "exact_inversion/toy_npi", compare_plain=False),
    "toy_bias_corrected_edit.json": lambda: toy_null_text("bias_correction", "DDIM", "Bias correction",
                                                          "exact_inversion/toy_bias", compare_plain=False,
                                                          **TOY_NTI),
    "ddim_invert_edit.json": lambda: sd15_invert_edit(),
    "edict_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_EDICTSolver", "exact_inversion/edict"),
    "bdia_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_BDIASolver", "exact_inversion/bdia"),
    "aidi_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_AIDISolver", "exact_inversion/aidi"),
    "ees_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_EESSolver", "exact_inversion/ees"),
    "belm_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_BELMSolver", "exact_inversion/belm"),
    "rex_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_RexSolver", "exact_inversion/rex"),
    "rf_solver_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_RFSolver", "exact_inversion/rf_solver"),
    "fireflow_invert_edit.json": lambda: sd15_invert_edit("ExactInversion_FireFlowSolver", "exact_inversion/fireflow"),
    "flux_rf_solver_edit.json": lambda: flux_invert_edit("ExactInversion_RFSolver", "exact_inversion/flux_rf_solver"),
    "flux_fireflow_edit.json": lambda: flux_invert_edit("ExactInversion_FireFlowSolver",
                                                        "exact_inversion/flux_fireflow"),
    "controlnet_invert_edit.json": lambda: controlnet_invert_edit(),
    "save_load_edit.json": lambda: save_load_edit(),
}


def toy_example_png() -> Any:
    """The toy workflow's input: held-out image 0 (its caption is TOY_SOURCE) as a 32x32 PIL image."""
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from toyworld import world as W

    batch = W.held_out(1)
    if batch.captions[0] != TOY_SOURCE:
        raise SystemExit(f"held-out image 0 is {batch.captions[0]!r}, the toy workflow says {TOY_SOURCE!r}")
    pixels = (W.to_unit(batch.images[0]).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def generated() -> dict[str, str]:
    """Every workflow file's text as this script writes it."""
    return {name: json.dumps(build().to_ui(), indent=1) + "\n" for name, build in WORKFLOWS.items()}


def comparable(text: str) -> dict[str, Any]:
    """A workflow as this script decides it: everything but the output slots of stock nodes, which are the
    host's (0.28's SaveImage gained an output); the committed files are written on the PyPI host."""
    ui = json.loads(text)
    for node in ui["nodes"]:
        if not node["type"].startswith("ExactInversion_"):
            node.pop("outputs", None)
    return ui


def stale(out_dir: Path = REPO / "workflows") -> list[str]:
    """Names of the committed workflow files that differ from what the script generates (or are missing)."""
    return [name for name, text in generated().items()
            if not (out_dir / name).is_file() or comparable((out_dir / name).read_text()) != comparable(text)]


def main(argv: list[str] | None = None) -> int:
    """Write the workflows; with --check, only say which committed files are out of date (exit 1)."""
    from testbed import comfyhost

    comfyhost.boot()
    out_dir = REPO / "workflows"
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        names = stale(out_dir)
        print("out of date (run scripts/py scripts/make_workflows.py):" if names else "workflows are up to date",
              *names)
        return 1 if names else 0
    out_dir.mkdir(exist_ok=True)
    toy_example_png().save(out_dir / TOY_IMAGE)
    print("wrote", out_dir / TOY_IMAGE)
    for name, text in generated().items():
        (out_dir / name).write_text(text)
        print("wrote", out_dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

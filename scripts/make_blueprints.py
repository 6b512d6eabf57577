"""Write the subgraph blueprints in subgraphs/ from compact graph descriptions, as make_workflows.py does.

ComfyUI (0.3.75 and later) serves a pack's ``subgraphs/*.json`` at ``/global_subgraphs``; the front end lists
them as blueprints a user drops into a graph as one node. Each file is a workflow holding one subgraph node
and, under ``definitions.subgraphs``, the subgraph itself: its nodes are written by make_workflows.Graph from
the real node definitions; the few inputs that matter (model, clip, vae, image, prompts, solver, steps, cfg,
the anchor word) are the blueprint's inputs and widgets. Run: scripts/py scripts/make_blueprints.py [--check]
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from make_workflows import Graph, Node, Port, Ref  # noqa: E402

OUT_DIR = REPO / "subgraphs"
CATEGORY = "Exact Inversion"
#: the blueprints' defaults: the solver recipe measured best at 25 steps, an SD-style dog -> cat edit
SOURCE, TARGET = "a photo of a dog on the grass", "a photo of a cat on the grass"
STEPS, CFG, NTI_CFG = 25, 4.0, 7.5
#: a subgraph's input and output nodes, as the front end numbers them
OUTPUT_NODE_ID = -20


class Blueprint:
    """A subgraph: a Graph whose links may start at its inputs (Ports) and end at its outputs."""

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.graph = Graph()
        self.ports: list[Port] = []
        self.outputs: list[tuple[str, str, Ref]] = []

    def input(self, name: str, kind: str, value: Any = None, label: str | None = None) -> Ref:
        port = Port(len(self.ports), name, kind, value, label)
        if port.is_widget and value is None:
            raise ValueError(f"{self.name}: widget input {name!r} needs a default value")
        self.ports.append(port)
        return port.out()

    def output(self, name: str, kind: str, ref: Ref) -> None:
        self.outputs.append((name, kind, ref))

    def _id(self, *parts: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(["exact-inversion/blueprint", self.name, *parts])))

    def to_file(self) -> dict[str, Any]:
        inner = self.graph.to_ui(widget_inputs=True)
        links = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), row, strict=True))
                 for row in inner["links"]]
        nodes = {n["id"]: n for n in inner["nodes"]}
        for index, (_, kind, (node, slot)) in enumerate(self.outputs):
            link_id = len(links) + 1
            links.append({"id": link_id, "origin_id": node.id, "origin_slot": slot, "target_id": OUTPUT_NODE_ID,
                          "target_slot": index, "type": kind})
            nodes[node.id]["outputs"][slot]["links"].append(link_id)
        right = max(n["pos"][0] + n["size"][0] for n in inner["nodes"]) + 80
        inputs = [{"id": self._id("in", p.name), "name": p.name, "type": p.kind,
                   "linkIds": [lk["id"] for lk in links if lk["origin_id"] == Port.id and lk["origin_slot"] == p.index],
                   **({"label": p.label} if p.label else {}), "pos": [-60, 60 + 20 * p.index]} for p in self.ports]
        outputs = [{"id": self._id("out", name), "name": name, "type": kind,
                    "linkIds": [lk["id"] for lk in links
                                if lk["target_id"] == OUTPUT_NODE_ID and lk["target_slot"] == i],
                    "pos": [right + 20, 60 + 20 * i]} for i, (name, kind, _) in enumerate(self.outputs)]
        for port in inputs + outputs:
            if not port["linkIds"]:
                raise ValueError(f"{self.name}: {port['name']} is linked to nothing")
        definition = {
            "id": self._id(), "version": 1,
            "state": {"lastGroupId": 0, "lastNodeId": inner["last_node_id"], "lastLinkId": len(links),
                      "lastRerouteId": 0},
            "revision": 0, "config": {}, "name": self.name,
            "inputNode": {"id": Port.id, "bounding": [-180, 40, 140, 40 + 20 * len(self.ports)]},
            "outputNode": {"id": OUTPUT_NODE_ID, "bounding": [right, 40, 140, 40 + 20 * len(self.outputs)]},
            "inputs": inputs, "outputs": outputs, "widgets": [], "nodes": inner["nodes"], "groups": [],
            "links": links, "extra": {}, "category": CATEGORY, "description": self.description,
        }
        node_inputs = [{**({"label": p.label} if p.label else {}), "name": p.name, "type": p.kind,
                        **({"widget": {"name": p.name}} if p.is_widget else {}), "link": None} for p in self.ports]
        node = {"id": 1, "type": definition["id"], "pos": [0, 0], "size": [400, 120 + 26 * len(self.ports)],
                "flags": {}, "order": 0, "mode": 0, "inputs": node_inputs,
                "outputs": [{"name": name, "type": kind, "links": []} for name, kind, _ in self.outputs],
                "properties": {"proxyWidgets": [["-1", p.name] for p in self.ports if p.is_widget]},
                "widgets_values": [p.value for p in self.ports if p.is_widget], "title": self.name}
        return {"revision": 0, "last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "version": 0.4,
                "definitions": {"subgraphs": [definition]}, "extra": {}}


def _common(bp: Blueprint, cfg: float, solver: str, cfg_label: str = "edit cfg") -> dict[str, Ref]:
    """The inputs every blueprint shows: the model's three parts, the image, both prompts, solver, steps, cfg."""
    return {"model": bp.input("model", "MODEL"), "clip": bp.input("clip", "CLIP"), "vae": bp.input("vae", "VAE"),
            "image": bp.input("image", "IMAGE"),
            "source": bp.input("source_prompt", "STRING", SOURCE, "source prompt (what the image shows)"),
            "target": bp.input("target_prompt", "STRING", TARGET, "target prompt (the edit)"),
            "solver": bp.input("solver", "COMBO", solver),
            "steps": bp.input("steps", "INT", STEPS),
            "cfg": bp.input("cfg", "FLOAT", cfg, cfg_label)}


def _prompts_latent_grid(g: Graph, p: dict[str, Ref]) -> dict[str, Node]:
    """Encoded prompts (source, target, an empty negative), the encoded image, the grid and the solver."""
    return {"src": g.add("CLIPTextEncode", {}, 0, 0, "Source prompt", clip=p["clip"], text=p["source"]),
            "tgt": g.add("CLIPTextEncode", {}, 0, 1, "Target prompt", clip=p["clip"], text=p["target"]),
            "neg": g.add("CLIPTextEncode", {"text": ""}, 0, 2, "Negative prompt", clip=p["clip"]),
            "enc": g.add("VAEEncode", {}, 0, 3, pixels=p["image"], vae=p["vae"]),
            "sigmas": g.add("BasicScheduler", {"scheduler": "normal", "denoise": 1.0}, 1, 2, model=p["model"],
                            steps=p["steps"]),
            "solver": g.add("ExactInversion_SolverRecipe", {"state_dtype": "auto"}, 1, 3, solver=p["solver"])}


def exact_edit() -> Blueprint:
    bp = Blueprint("Exact Edit",
                   "Inverts the image with its source prompt (cfg 1) and regenerates it with the target prompt. "
                   "With an exact solver the reconstruction output gives the input back to the last digit.")
    p = _common(bp, CFG, "BDIA (gamma 0.8)")
    g = bp.graph
    n = _prompts_latent_grid(g, p)
    g_src = g.add("CFGGuider", {"cfg": 1.0}, 1, 0, "Source guider (inversion)", model=p["model"],
                  positive=n["src"].out(0), negative=n["neg"].out(0))
    g_tgt = g.add("CFGGuider", {}, 1, 1, "Target guider (edit)", model=p["model"], positive=n["tgt"].out(0),
                  negative=n["neg"].out(0), cfg=p["cfg"])
    inv = g.add("ExactInversion_Invert", {}, 2, 0, guider=g_src.out(0), sampler=n["solver"].out(0),
                sigmas=n["sigmas"].out(0), latent=n["enc"].out(0))
    edit = g.add("ExactInversion_Edit", {}, 3, 0, "Edit", guider=g_tgt.out(0), inversion=inv.out(0))
    recon = g.add("ExactInversion_Edit", {}, 3, 1, "Reconstruct", guider=g_src.out(0), inversion=inv.out(0))
    bp.output("edit", "IMAGE", g.add("VAEDecode", {}, 4, 0, samples=edit.out(0), vae=p["vae"]).out(0))
    bp.output("reconstruction", "IMAGE", g.add("VAEDecode", {}, 4, 1, samples=recon.out(0), vae=p["vae"]).out(0))
    return bp


def local_edit() -> Blueprint:
    bp = Blueprint("Exact Local Edit",
                   "An exact inversion edited with blended guidance and local blend: only the region the anchor "
                   "word attends to changes; the rest of the image is kept from the inversion.")
    p = _common(bp, CFG, "BDIA (gamma 0.8)")
    anchor = bp.input("anchor", "STRING", "dog", "anchor word (in the source prompt)")
    g = bp.graph
    n = _prompts_latent_grid(g, p)
    g_src = g.add("CFGGuider", {"cfg": 1.0}, 1, 0, "Source guider (inversion)", model=p["model"],
                  positive=n["src"].out(0), negative=n["neg"].out(0))
    inv = g.add("ExactInversion_Invert", {}, 2, 0, guider=g_src.out(0), sampler=n["solver"].out(0),
                sigmas=n["sigmas"].out(0), latent=n["enc"].out(0))
    blended = g.add("ExactInversion_BlendedGuidance",
                    {"anchor_role": "edit region", "cfg": 1.0, "blended_guidance": True, "local_blend": True,
                     "eta": 0.0, "seed": 0},
                    1, 1, "Blended guidance", model=p["model"], source_positive=n["src"].out(0),
                    target_positive=n["tgt"].out(0), negative=n["neg"].out(0), clip=p["clip"],
                    source_prompt=p["source"], target_prompt=p["target"], anchor=anchor, target_cfg=p["cfg"])
    edit = g.add("ExactInversion_Edit", {}, 3, 0, "Edit", guider=blended.out(0), inversion=inv.out(0))
    bp.output("edit", "IMAGE", g.add("VAEDecode", {}, 4, 0, samples=edit.out(0), vae=p["vae"]).out(0))
    return bp


def null_text_edit() -> Blueprint:
    bp = Blueprint("High-cfg Edit (null-text inversion)",
                   "Edits at a high cfg (7.5) without losing the image: null-text inversion learns the negative "
                   "prompt's embeddings so the source prompt at that cfg reconstructs the input; the edit reuses them.")
    p = _common(bp, NTI_CFG, "DDIM", "cfg (inversion and edit)")
    g = bp.graph
    n = _prompts_latent_grid(g, p)
    g_src = g.add("CFGGuider", {}, 1, 0, "Source guider (inversion)", model=p["model"], positive=n["src"].out(0),
                  negative=n["neg"].out(0), cfg=p["cfg"])
    g_tgt = g.add("CFGGuider", {}, 1, 1, "Target guider (edit)", model=p["model"], positive=n["tgt"].out(0),
                  negative=n["neg"].out(0), cfg=p["cfg"])
    inv = g.add("ExactInversion_NullTextInversion", {"method": "nti"}, 2, 0, guider=g_src.out(0),
                sampler=n["solver"].out(0), sigmas=n["sigmas"].out(0), latent=n["enc"].out(0))
    edit = g.add("ExactInversion_Edit", {}, 3, 0, "Edit", guider=g_tgt.out(0), inversion=inv.out(0))
    recon = g.add("ExactInversion_Edit", {}, 3, 1, "Reconstruct", guider=g_src.out(0), inversion=inv.out(0))
    bp.output("edit", "IMAGE", g.add("VAEDecode", {}, 4, 0, samples=edit.out(0), vae=p["vae"]).out(0))
    bp.output("reconstruction", "IMAGE", g.add("VAEDecode", {}, 4, 1, samples=recon.out(0), vae=p["vae"]).out(0))
    return bp


BLUEPRINTS = [exact_edit, local_edit, null_text_edit]


def generated() -> dict[str, str]:
    """Every blueprint file's text as this script writes it, by file name: the front end names a blueprint
    (and its subgraph) after its file, so the file is named after the blueprint."""
    return {f"{bp.name}.json": json.dumps(bp.to_file(), indent=1) + "\n" for bp in (build() for build in BLUEPRINTS)}


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Committed blueprint files that differ from what the script writes, are missing, or are not its own."""
    texts = generated()
    extra = [p.name for p in out_dir.glob("*.json") if p.name not in texts] if out_dir.is_dir() else []
    return extra + [name for name, text in texts.items()
                    if not (out_dir / name).is_file() or (out_dir / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    """Write the blueprints; with --check, only say which committed files are out of date (exit 1)."""
    from testbed import comfyhost

    comfyhost.boot()
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        names = stale()
        print("out of date (run scripts/py scripts/make_blueprints.py):" if names else "blueprints are up to date",
              *names)
        return 1 if names else 0
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in generated().items():
        (OUT_DIR / name).write_text(text)
        print("wrote", OUT_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

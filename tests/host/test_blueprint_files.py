"""The subgraph blueprints in subgraphs/: written by scripts/make_blueprints.py, and wired as the front end reads
them (the browser layer, tests/browser/test_blueprints.py, drops each into a graph and runs it; tests/server checks
/global_subgraphs lists them)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from testbed.workflow_api import comfy_input_types

REPO = Path(__file__).resolve().parents[2]
BLUEPRINTS = sorted((REPO / "subgraphs").glob("*.json"))
#: the inputs every blueprint exposes (the issue's list), and the local edit's anchor word
EXPOSED = ["model", "clip", "vae", "image", "source_prompt", "target_prompt", "solver", "steps", "cfg"]


def make_blueprints_module():
    spec = importlib.util.spec_from_file_location("make_blueprints", REPO / "scripts" / "make_blueprints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_the_three_recipes():
    assert [p.stem for p in BLUEPRINTS] == ["Exact Edit", "Exact Local Edit", "High-cfg Edit (null-text inversion)"]


def test_committed_blueprints_are_what_the_script_generates(host):
    assert make_blueprints_module().stale() == []


def test_a_changed_or_extra_file_is_noticed(host, tmp_path):
    module = make_blueprints_module()
    copy = tmp_path / "subgraphs"
    shutil.copytree(REPO / "subgraphs", copy)
    edited = json.loads((copy / "Exact Edit.json").read_text())
    edited["nodes"][0]["widgets_values"][0] = "a photo of a horse"
    (copy / "Exact Edit.json").write_text(json.dumps(edited, indent=1) + "\n")
    (copy / "stray.json").write_text("{}")
    assert sorted(module.stale(copy)) == ["Exact Edit.json", "stray.json"]


@pytest.mark.parametrize("path", BLUEPRINTS, ids=[p.stem for p in BLUEPRINTS])
def test_blueprint_is_one_subgraph_node_with_the_inputs_that_matter(host, path):
    blueprint = json.loads(path.read_text())
    (node,), (subgraph,) = blueprint["nodes"], blueprint["definitions"]["subgraphs"]
    assert node["type"] == subgraph["id"] and node["title"] == subgraph["name"] == path.stem
    names = [i["name"] for i in subgraph["inputs"]]
    assert names == EXPOSED + (["anchor"] if "Local" in path.stem else [])
    assert [i["name"] for i in node["inputs"]] == names
    widgets = [i["name"] for i in node["inputs"] if "widget" in i]
    assert node["properties"]["proxyWidgets"] == [["-1", name] for name in widgets]
    assert len(node["widgets_values"]) == len(widgets)
    assert [o["type"] for o in subgraph["outputs"]] == ["IMAGE"] * len(subgraph["outputs"])


@pytest.mark.parametrize("path", BLUEPRINTS, ids=[p.stem for p in BLUEPRINTS])
def test_every_link_lands_on_the_input_slot_that_names_it(host, path):
    """A link's target_slot is the index in the node's full input list (every widget is an input slot in the
    front end): a slot counted without the widgets links a prompt to the wrong widget (steps got 'normal')."""
    subgraph = json.loads(path.read_text())["definitions"]["subgraphs"][0]
    nodes = {n["id"]: n for n in subgraph["nodes"]}
    types = comfy_input_types({n["type"] for n in subgraph["nodes"]})
    for link in subgraph["links"]:
        if link["target_id"] < 0:  # to the subgraph's output node
            assert subgraph["outputs"][link["target_slot"]]["linkIds"].count(link["id"]) == 1
            continue
        target = nodes[link["target_id"]]
        slot = target["inputs"][link["target_slot"]]
        assert slot["link"] == link["id"], (target["type"], slot)
        spec = {**types[target["type"]].get("required", {}), **types[target["type"]].get("optional", {})}
        # every input, sockets first, then widgets, each in the node's order (front end 1.32 matches by slot)
        sockets = [i["name"] for i in target["inputs"] if "widget" not in i]
        widgets = [i["name"] for i in target["inputs"] if "widget" in i]
        assert sockets + widgets == [i["name"] for i in target["inputs"]], target["type"]
        assert sorted(sockets + widgets) == sorted(spec) and sockets == [n for n in spec if n in sockets]
        assert widgets == [n for n in spec if n in widgets], target["type"]
        if link["origin_id"] < 0:  # from one of the blueprint's inputs
            port = subgraph["inputs"][link["origin_slot"]]
            assert link["id"] in port["linkIds"] and ("widget" in slot) == (port["type"] in
                                                                          ("STRING", "INT", "FLOAT", "COMBO"))

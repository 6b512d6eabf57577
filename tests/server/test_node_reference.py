"""docs/nodes.md is what scripts/node_reference.py renders from the live /object_info.

One ComfyUI server (our pack only) for the module. A changed tooltip, default or input fails here:
regenerate with `make docs` (scripts/py scripts/node_reference.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from testbed.comfy_server import comfy_server, get_json

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "nodes.md"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("node_reference", REPO / "scripts" / "node_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


node_reference = _load_generator()


@pytest.fixture(scope="module")
def object_info(tmp_path_factory) -> dict[str, Any]:
    with comfy_server(tmp_path_factory.mktemp("comfy-base"), test_pack=False) as srv:
        return get_json(srv["url"] + "/object_info")


def test_doc_up_to_date(object_info):
    expected = node_reference.render(object_info)
    assert DOC.read_text() == expected, "docs/nodes.md is out of date: run `make docs`"


def test_every_node_and_input_documented(object_info):
    doc = DOC.read_text()
    ours = {name: node for name, node in object_info.items() if name.startswith("ExactInversion_")}
    assert ours
    for name, node in ours.items():
        marker = f"- Node id (class_type): `{name}`"
        assert marker in doc, name
        section = doc.split(marker, 1)[1].split("\n### ", 1)[0]  # up to the next node
        for inputs in node["input"].values():
            for input_name in inputs:
                assert f"`{input_name}`" in section, (name, input_name)

"""docs/nodes.md and the front end's help pages (js/docs/) are what scripts/node_reference.py renders from the
live /object_info.

One ComfyUI server (our pack only) for the module. A changed tooltip, default or input, a new node, or a
changed docs/ picture the help pages crop fails here: regenerate with `make docs` (scripts/py
scripts/node_reference.py).
"""

from __future__ import annotations

import importlib.util
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testbed.comfy_server import comfy_server, get_json

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "nodes.md"
HELP = REPO / "js" / "docs"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("node_reference", REPO / "scripts" / "node_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


node_reference = _load_generator()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with comfy_server(tmp_path_factory.mktemp("comfy-base"), test_pack=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server) -> dict[str, Any]:
    return get_json(server["url"] + "/object_info")


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


def test_help_pages_up_to_date(object_info):
    """js/docs holds exactly the generated files: every page and picture current, none missing, none extra."""
    problems = node_reference.stale_help(HELP, node_reference.help_files(object_info))
    assert not problems, "js/docs is out of date (run `make docs`):\n" + "\n".join(problems)


def test_every_node_has_a_help_page_with_its_inputs(object_info):
    ours = {name: node for name, node in object_info.items() if name.startswith("ExactInversion_")}
    assert ours
    for name, node in ours.items():
        page = (HELP / f"{name}.md").read_text()
        assert page.startswith(f"# {node['display_name']}\n"), name
        assert "## When to use" in page, name
        for section in ("required", "optional"):
            for input_name in node["input"].get(section, {}):
                assert f"**`{input_name}`**" in page, (name, input_name)
        for link in re.findall(r"\]\((img/[^)]+)\)", page):  # relative: the front end resolves it against docs/
            assert (HELP / link).is_file(), (name, link)
            assert (HELP / link).stat().st_size <= node_reference.MAX_PICTURE_BYTES, (name, link)


def test_help_pages_served_where_the_front_end_fetches_them(server):
    """The front end fetches /extensions/<pack folder>/docs/<node id>.md (after <node id>/<locale>.md) and the
    pictures relative to /extensions/<pack folder>/docs/; ComfyUI serves js/ (WEB_DIRECTORY) there."""
    base = server["url"] + "/extensions/exact-inversion/docs/"
    for path in ("ExactInversion_BlendedGuidance.md", "img/blended_guidance.png"):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            assert r.status == 200, path
            assert "text/html" not in r.headers.get("Content-Type", ""), path  # 1.45 discards an HTML answer
            assert r.read() == (HELP / path).read_bytes(), path

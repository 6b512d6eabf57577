"""Server layer: ComfyUI's main.py --cpu with the pack in custom_nodes, driven over HTTP.

A missing host fails (comfyhost.comfy_dir raises): run through `make test` or scripts/py.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from testbed.comfy_server import comfy_server, get_json, run_prompt
from testbed.workflow_api import EXACT_SOLVERS, TINY_LOADERS, swap_loaders, ui_to_api, upstream_solvers

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
BLUEPRINTS = sorted((REPO / "subgraphs").glob("*.json"))
OUR_NODES = {"ExactInversion_DDIMSolver", "ExactInversion_Invert", "ExactInversion_Edit",
             "ExactInversion_RoundTripCheck",
            "ExactInversion_EDICTSolver", "ExactInversion_BDIASolver", "ExactInversion_AIDISolver",
            "ExactInversion_EESSolver", "ExactInversion_SaveInversion", "ExactInversion_LoadInversion",
            "ExactInversion_ToyModelLoader", "ExactInversion_AttentionMask", "ExactInversion_BlendedGuidance",
            "ExactInversion_NullTextInversion", "ExactInversion_SolverRecipe"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with comfy_server(tmp_path_factory.mktemp("comfy-base")) as srv:
        yield srv


def _run(server, prompt: dict, timeout: float = 600.0) -> dict:
    return run_prompt(server["url"], prompt, timeout, client_id=str(uuid.uuid4()))


def test_pack_loaded_without_import_failure(server):
    log = server["log"].read_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "exact-inversion" in line]
    assert not failed, failed


def test_every_node_in_object_info(server):
    info = get_json(server["url"] + "/object_info")
    assert OUR_NODES <= set(info)
    assert {tiny for tiny, _ in TINY_LOADERS.values()} <= set(info)  # the test pack's stand-in loaders
    assert info["ExactInversion_Invert"]["display_name"] == "Invert"


def test_js_extension_served(server):
    assert any("exact-inversion" in path for path in get_json(server["url"] + "/extensions"))


def test_workflows_listed_as_templates(server):
    """ComfyUI's /workflow_templates lists every workflow of workflows/ under our pack, and serves each."""
    listed = get_json(server["url"] + "/workflow_templates")
    assert sorted(listed["exact-inversion"]) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        served = get_json(f"{server['url']}/api/workflow_templates/exact-inversion/{path.name}")
        assert served == json.loads(path.read_text())
        # the Templates browser's thumbnail (scripts/ui_screenshots.py)
        with urllib.request.urlopen(f"{server['url']}/api/workflow_templates/exact-inversion/{path.stem}.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read(3) == b"\xff\xd8\xff"


def test_blueprints_listed_as_global_subgraphs(server):
    """ComfyUI serves subgraphs/*.json at /global_subgraphs, named after the file, as our pack's; each entry's
    data is the file (scripts/make_blueprints.py; the front end's blueprint library reads these)."""
    listed = get_json(server["url"] + "/global_subgraphs")
    ours = {key: entry for key, entry in listed.items() if entry["source"] == "custom_node"
            and entry["info"]["node_pack"] == "custom_nodes.exact-inversion"}
    assert sorted(entry["name"] for entry in ours.values()) == [p.stem for p in BLUEPRINTS]
    for key, entry in ours.items():
        served = get_json(f"{server['url']}/global_subgraphs/{key}")
        assert json.loads(served["data"]) == json.loads((REPO / "subgraphs" / f"{entry['name']}.json").read_text())


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_succeeds_over_http(server, path):
    info = get_json(server["url"] + "/object_info")
    ui = json.loads(path.read_text())
    types = {n["type"]: info[n["type"]]["input"] for n in ui["nodes"]}
    prompt = swap_loaders(ui_to_api(ui, types))
    assert not {n["class_type"] for n in prompt.values()} & set(TINY_LOADERS)  # no stock loader needs a file
    before = set(os.listdir(server["base"]))
    entry = _run(server, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [img for node in entry["outputs"].values() for img in node.get("images", [])]
    assert any(img["type"] == "output" for img in images), "no image was saved"
    for img in images:  # saved images under output/, node previews under temp/
        assert img["type"] in ("output", "temp"), img
        assert (server["base"] / img["type"] / img["subfolder"] / img["filename"]).is_file()
    assert set(os.listdir(server["base"])) - before <= {"output", "temp"}  # nothing beside ComfyUI's folders
    checks = [k for k, n in prompt.items() if n["class_type"] == "ExactInversion_RoundTripCheck"]
    assert checks and set(checks) <= set(entry["outputs"]), prompt
    for check in checks:  # every check fed by an exact solver (a ControlNet on both guiders, the toy's rows, ...)
        text = next(t for t in entry["outputs"][check]["text"] if "round trip" in t)
        solvers = upstream_solvers(prompt, check)
        assert len(solvers) == 1, (check, solvers)
        if solvers <= EXACT_SOLVERS:
            assert float(re.search(r"relative ([0-9.e+-]+)", text).group(1)) <= 1e-5, (path.name, text)


def test_bad_input_is_a_clear_error_and_server_keeps_serving(server):
    bad = {
        "1": {"class_type": "ExactInversionTest_TinyCheckpointLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "4": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0],
                                                    "cfg": 1.0}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 5,
                                                         "denoise": 1.0}},
        "6": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["5", 0]}},
        "7": {"class_type": "ExactInversion_DDIMSolver", "inputs": {"inversion_label": "current",
                                                                    "state_dtype": "float64"}},
        "8": {"class_type": "ExactInversion_Invert", "inputs": {"guider": ["4", 0], "sampler": ["7", 0],
                                                                "sigmas": ["6", 0], "latent": ["2", 0]}},
        "9": {"class_type": "ExactInversion_Edit", "inputs": {"guider": ["4", 0], "inversion": ["8", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "bad"}},
    }
    entry = _run(server, bad)
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert "Invert: input 'sigmas'" in errors[0][1]["exception_message"]
    assert "strictly decreasing" in errors[0][1]["exception_message"]
    # the server still serves the next prompt
    assert get_json(server["url"] + "/system_stats")["system"]


def _inversion_graph(sigmas_node: str = "5") -> dict:
    """Tiny model, an empty latent, a DDIM inversion on a valid grid: the start of the file tests."""
    return {
        "1": {"class_type": "ExactInversionTest_TinyCheckpointLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "4": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0],
                                                    "cfg": 1.0}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4,
                                                         "denoise": 1.0}},
        "7": {"class_type": "ExactInversion_DDIMSolver", "inputs": {"inversion_label": "current",
                                                                    "state_dtype": "float64"}},
        "8": {"class_type": "ExactInversion_Invert", "inputs": {"guider": ["4", 0], "sampler": ["7", 0],
                                                                "sigmas": [sigmas_node, 0], "latent": ["2", 0]}},
    }


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("graph_tail, message", [
    ({"9": {"class_type": "ExactInversion_SaveInversion",
            "inputs": {"inversion": ["8", 0], "filename_prefix": "../../escaped"}}},
     "Save Inversion: input 'filename_prefix' ('../../escaped') is not a valid file name prefix"),
    ({"9": {"class_type": "ExactInversion_LoadInversion",
            "inputs": {"file": "(none)", "allow_mismatch": False, "file_name": "../../etc/x.safetensors [output]"}},
      "10": {"class_type": "ExactInversion_Edit", "inputs": {"guider": ["4", 0], "inversion": ["9", 0]}},
      "11": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "bad"}}},
     "Load Inversion: input 'file_name' ('../../etc/x.safetensors') is not a valid file name"),
])
def test_bad_file_names_refused_nothing_written_outside(server, graph_tail, message):
    """A path-escaping name fails with a clear message, nothing lands outside ComfyUI's folders, and the
    next prompt (a save -> load -> edit graph) still runs."""
    outside = server["base"].parent
    before_outside, before_base = set(os.listdir(outside)), _tree(server["base"])
    prompt = _inversion_graph()
    if graph_tail["9"]["class_type"] == "ExactInversion_LoadInversion":
        prompt = {k: v for k, v in prompt.items() if k not in ("7", "8")}
    entry = _run(server, {**prompt, **graph_tail})
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert message in errors[0][1]["exception_message"]
    assert set(os.listdir(outside)) == before_outside
    new = _tree(server["base"]) - before_base
    assert all(p.split(os.sep)[0] in ("output", "temp", "input", "user") for p in new), new
    ok = {**_inversion_graph(),
          "9": {"class_type": "ExactInversion_SaveInversion", "inputs": {"inversion": ["8", 0],
                                                                         "filename_prefix": "server/ok"}},
          "10": {"class_type": "ExactInversion_LoadInversion",
                 "inputs": {"file": "(none)", "allow_mismatch": False, "file_name": ["9", 0]}},
          "11": {"class_type": "ExactInversion_Edit", "inputs": {"guider": ["4", 0], "inversion": ["10", 0]}},
          "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "ok"}}}
    assert _run(server, ok)["status"]["status_str"] == "success"
    assert list((server["base"] / "output" / "inversions" / "server").glob("ok_*_.safetensors"))

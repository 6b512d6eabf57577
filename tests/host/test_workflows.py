"""Every workflow in workflows/ runs through ComfyUI's validate_prompt + PromptExecutor.

Each file is converted from the front end's UI format to the API format, its checkpoint loader is
swapped for the tiny test loader, and everything else is run unchanged.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import comfyhost
import pytest
from workflow_api import comfy_input_types, swap_checkpoint_loader, ui_to_api

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
TINY_LOADER = ("ExactInversionTest_TinyCheckpointLoader", {"seed": 0})


def api_prompt(path: Path) -> dict:
    ui = json.loads(path.read_text())
    types = comfy_input_types({n["type"] for n in ui["nodes"]})
    return swap_checkpoint_loader(ui_to_api(ui, types), *TINY_LOADER)


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/ is empty"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_runs(host, path):
    prompt = api_prompt(path)
    before = set(os.listdir(host["work"]))
    outputs = comfyhost.run_prompt(prompt)
    saved = [img for node in outputs.values() for img in node.get("images", [])]
    assert saved, "no image was saved"
    for img in saved:
        assert (Path(host["work"]) / "output" / img["subfolder"] / img["filename"]).is_file()
    assert set(os.listdir(host["work"])) == before  # nothing written beside ComfyUI's folders
    reports = [t for node in outputs.values() for t in node.get("text", []) if "round trip" in t]
    assert reports, outputs
    relative = float(re.search(r"relative ([0-9.e+-]+)", reports[0]).group(1))
    if path.name.startswith(("edict", "bdia")):  # exact solvers reconstruct the encoded image's latent
        assert relative <= 1e-5, reports


def test_converter_names_every_widget(host):
    """The UI -> API conversion consumes exactly the widget values of each node."""
    for path in WORKFLOWS:
        ui = json.loads(path.read_text())
        prompt = ui_to_api(ui, comfy_input_types({n["type"] for n in ui["nodes"]}))
        assert {"ExactInversion_Invert", "ExactInversion_Edit"} <= {n["class_type"] for n in prompt.values()}
        sched = next(n for n in prompt.values() if n["class_type"] == "BasicScheduler")
        assert sched["inputs"]["scheduler"] in ("normal", "simple", "karras", "ddim_uniform", "sgm_uniform",
                                                 "exponential", "beta", "linear_quadratic", "kl_optimal")
        assert isinstance(sched["inputs"]["steps"], int)

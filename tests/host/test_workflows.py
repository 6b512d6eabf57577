"""The workflows in workflows/ in ComfyUI's validate_prompt + PromptExecutor: their conversion to the API format,
the loader swap, the ControlNet workflow's effect, and that the committed files are what the script generates.

Every workflow is run end to end (and its exact round trips checked) over HTTP in tests/server/test_server.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from testbed import comfyhost
from testbed.workflow_api import (
    EXACT_SOLVERS,
    TINY_LOADERS,
    comfy_input_types,
    swap_loaders,
    ui_to_api,
    upstream_solvers,
)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
WORKFLOWS_BY_NAME = {p.name: p for p in WORKFLOWS}


def api_prompt(path: Path) -> dict:
    ui = json.loads(path.read_text())
    types = comfy_input_types({n["type"] for n in ui["nodes"]})
    return swap_loaders(ui_to_api(ui, types))


def is_exact(prompt: dict) -> bool:
    """Exact solvers reconstruct the encoded image's latent: decided by the solver node in the graph."""
    return any(n["class_type"] in EXACT_SOLVERS for n in prompt.values())


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/ is empty"


def test_converter_names_every_widget(host):
    """The UI -> API conversion consumes exactly the widget values of each node."""
    for path in WORKFLOWS:
        ui = json.loads(path.read_text())
        prompt = ui_to_api(ui, comfy_input_types({n["type"] for n in ui["nodes"]}))
        types = {n["class_type"] for n in prompt.values()}
        assert "ExactInversion_Edit" in types and types & {"ExactInversion_Invert", "ExactInversion_NullTextInversion"}
        sched = next(n for n in prompt.values() if n["class_type"] == "BasicScheduler")
        assert sched["inputs"]["scheduler"] in ("normal", "simple", "karras", "ddim_uniform", "sgm_uniform",
                                                 "exponential", "beta", "linear_quadratic", "kl_optimal")
        assert isinstance(sched["inputs"]["steps"], int)


def test_exact_workflows_are_detected():
    """The HTTP run's exactness assertion (tests/server/test_server.py) must not silently stop applying to the
    exact-solver files."""
    exact = {p.name for p in WORKFLOWS if is_exact(api_prompt(p))}
    assert {"edict_invert_edit.json", "bdia_invert_edit.json", "controlnet_invert_edit.json", "belm_invert_edit.json",
            "rex_invert_edit.json"} <= exact, exact
    assert not {"ddim_invert_edit.json", "rf_solver_invert_edit.json", "fireflow_invert_edit.json"} & exact
    toy = api_prompt(WORKFLOWS_BY_NAME["toy_invert_edit.json"])
    checks = [k for k, n in toy.items() if n["class_type"] == "ExactInversion_RoundTripCheck"]
    assert sorted(next(iter(upstream_solvers(toy, c))) for c in checks) == sorted(
        n["class_type"] for n in toy.values() if n["class_type"].endswith("Solver"))
    assert len(checks) == 5


def test_loaders_are_swapped(host):
    """No stock loader is left that would need a model file; ControlNet workflows get the tiny ControlNet."""
    for path in WORKFLOWS:
        types = {n["class_type"] for n in api_prompt(path).values()}
        assert not types & set(TINY_LOADERS), (path.name, types)
    cn = {n["class_type"] for n in api_prompt(WORKFLOWS_BY_NAME["controlnet_invert_edit.json"]).values()}
    assert "ExactInversionTest_TinyControlNetLoader" in cn


def test_controlnet_workflow_controls_both_guiders(host):
    """Both guiders take positive and negative from ControlNetApplyAdvanced, fed by the loaded ControlNet."""
    prompt = api_prompt(WORKFLOWS_BY_NAME["controlnet_invert_edit.json"])
    guiders = [n for n in prompt.values() if n["class_type"] == "CFGGuider"]
    assert len(guiders) == 2
    for g in guiders:
        for name, slot in (("positive", 0), ("negative", 1)):
            src = prompt[g["inputs"][name][0]]
            assert src["class_type"] == "ControlNetApplyAdvanced" and g["inputs"][name][1] == slot, (name, src)
            assert prompt[src["inputs"]["control_net"][0]]["class_type"] == TINY_LOADERS["ControlNetLoader"][0]
    applies = {g["inputs"]["positive"][0] for g in guiders}
    assert len(applies) == 2, "source and target guiders share one ControlNet apply node"
    invert = next(n for n in prompt.values() if n["class_type"] == "ExactInversion_Invert")
    edits = [n for n in prompt.values() if n["class_type"] == "ExactInversion_Edit"]
    assert {invert["inputs"]["guider"][0], *(e["inputs"]["guider"][0] for e in edits)} == {
        k for k, n in prompt.items() if n["class_type"] == "CFGGuider"}


def _saved_edit(host, outputs: dict) -> np.ndarray:
    images = [img for node in outputs.values() for img in node.get("images", [])
              if img["type"] == "output" and "edit" in img["filename"]]
    assert len(images) == 1, images
    img = images[0]
    return np.asarray(Image.open(Path(host["work"]) / "output" / img["subfolder"] / img["filename"]), dtype=float)


def test_controlnet_changes_the_workflow_result(host):
    """With the ControlNet's strength at 0 (the stock node then passes the prompts through) the edit differs:
    the control really reaches the model in our Invert/Edit path, it is not just carried along."""
    prompt = api_prompt(WORKFLOWS_BY_NAME["controlnet_invert_edit.json"])
    controlled = _saved_edit(host, comfyhost.run_prompt(prompt))
    off = {k: ({**n, "inputs": {**n["inputs"], "strength": 0.0}} if n["class_type"] == "ControlNetApplyAdvanced"
               else n) for k, n in prompt.items()}
    plain = _saved_edit(host, comfyhost.run_prompt(off))
    assert np.abs(controlled - plain).mean() > 1.0, "the ControlNet did not change the edited image"


def test_toy_example_is_the_held_out_image_its_prompt_describes():
    """workflows/toy_example.png is held-out image 0 (8-bit), and the toy workflow's source prompt is its caption."""
    from toyworld import world as W

    png = np.asarray(Image.open(WORKFLOWS_BY_NAME["toy_invert_edit.json"].parent / "toy_example.png").convert("RGB"))
    held = W.held_out(1)
    truth = (W.to_unit(held.images[0]).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert png.shape == (32, 32, 3) and np.array_equal(png, truth.astype(np.uint8))
    prompt = api_prompt(WORKFLOWS_BY_NAME["toy_invert_edit.json"])
    texts = {n["_meta"]["title"]: n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode"}
    assert texts["Source prompt (the image's caption)"] == held.captions[0]


def make_workflows_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_workflows_are_what_the_script_generates(host):
    """workflows/*.json are written by scripts/make_workflows.py from named widget values; a hand edit, or a
    change to the script or to a node's inputs without regenerating, fails here."""
    assert make_workflows_module().stale(REPO / "workflows") == []


def test_a_changed_widget_value_is_noticed(host, tmp_path):
    import shutil

    module = make_workflows_module()
    copy = tmp_path / "workflows"
    shutil.copytree(REPO / "workflows", copy)
    edited = json.loads((copy / "toy_invert_edit.json").read_text())
    next(n for n in edited["nodes"] if n["type"] == "CFGGuider")["widgets_values"] = [2.5]
    (copy / "toy_invert_edit.json").write_text(json.dumps(edited, indent=1) + "\n")
    assert module.stale(copy) == ["toy_invert_edit.json"]

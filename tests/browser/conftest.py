"""Browser layer: ComfyUI's real front end (the pinned comfyui-frontend-package, served by main.py) in
headless Chromium. A missing host or browser fails, as in CI.

Screenshots go to $EXACT_INVERSION_ARTIFACTS/browser (default: test_artifacts/browser in the repo).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.browser import Page
from testbed.comfy_server import comfy_server, post_json

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EXACT_INVERSION_ARTIFACTS", REPO / "test_artifacts")) / "browser"
#: Checkpoints the stock-loader workflows name. The user has them; here empty placeholder files make the
#: loaders' lists hold them, as on the user's machine. Nothing reads them: those workflows are not run here.
USER_MODELS = {"checkpoints": ["v1-5-pruned-emaonly.safetensors", "flux1-dev-fp8.safetensors"],
               "controlnet": ["control_v11p_sd15_canny.safetensors"]}


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-ui")
    for folder, names in USER_MODELS.items():
        (base / "models" / folder).mkdir(parents=True)
        for name in names:
            (base / "models" / folder / name).write_bytes(b"")
    with comfy_server(base, test_pack=False) as srv:
        settings = {"Comfy.TutorialCompleted": True,  # no first-run dialog over the canvas
                    "Comfy.Minimap.Visible": False,
                    "Comfy.Graph.CanvasInfo": False,  # no render statistics in the screenshots
                    "LiteGraph.Canvas.MinFontSizeForLOD": 0}  # full detail in zoomed-out screenshots
        for key, value in settings.items():
            status, _ = post_json(f"{srv['url']}/settings/{key}", value)
            assert status == 200, key
        yield srv


@pytest.fixture(scope="session")
def page(ui_server):
    page = Page(width=1920, height=1080)
    try:
        page.goto(ui_server["url"])
        page.wait_for("window.app && app.graph && window.LiteGraph && "
                      "Object.keys(LiteGraph.registered_node_types).length > 100", timeout=120)
        # 1.32's "Introducing Nodes 2.0" banner covers the top of the window: dismiss it with its icon-only
        # button (the other one, "Try it out", would switch node rendering). Later front ends have no banner.
        page.js("[...document.querySelectorAll('button')].find((b) => b.parentElement?.innerText?.includes("
                "'Introducing Nodes 2.0') && !b.innerText.trim())?.click() ?? true")
        yield page
    finally:
        page.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

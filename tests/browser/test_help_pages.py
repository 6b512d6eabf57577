"""A node's help page, opened from the Node Library as a user does, shows our Markdown (js/docs/, written by
scripts/node_reference.py) with its picture.

Both front ends fetch a custom node's help from /extensions/<pack folder>/docs/<node id>/<locale>.md, then
/extensions/<pack folder>/docs/<node id>.md, resolve its relative image links against
/extensions/<pack folder>/docs/, and fall back to the node's description and input tooltips when neither file
exists. They open it differently (read from their sources):

- 1.32.9 (ComfyUI 0.3.75): Node Library → search → hover the node's row → its "?" button (tooltip "Learn
  more"). The library shows the help page in place of its tree; the back arrow returns to the tree.
- 1.45.21 (ComfyUI 0.28.2), whose default is the new library design: rows have no help button, and hovering
  one shows a preview card with the description only. Node Library → search → click the node's row (it
  follows the pointer) → click the canvas (the node is placed and selected) → "Node Info" in the selection
  toolbox → the properties panel opens on its Info tab, which shows the help page. (With the setting "New
  Node Library Design" off, 1.45 keeps 1.32's "?" button.)

The assertions are on what only our Markdown has (the fallback has neither): the "When to use" heading, inputs
written as **`name`**, the picture (loaded, at its file's width) and the fetch of our file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from test_frontend import LIBRARY_SEARCH, click_element, close_dialogs, our_errors, sidebar_button

REPO = Path(__file__).resolve().parents[2]
NODE = "ExactInversion_BlendedGuidance"
TITLE = "Blended Guidance Guider"
PICTURE = "img/blended_guidance.png"
DOCS_URL = "/extensions/exact-inversion/docs/"  # the pack's folder in tests: custom_nodes/exact-inversion
LIBRARY_OPEN = "app.extensionManager.sidebarTab.activeSidebarTabId === 'node-library'"
#: The rendered help page: a visible .markdown-content (both front ends' class for it) headed by our title.
HELP = ("[...document.querySelectorAll('.markdown-content')].find((e) => e.getClientRects().length && "
        f"e.querySelector('h1')?.textContent.trim() === {json.dumps(TITLE)})")
#: The node's row in the library's tree: its accessible name (1.32) or its first line of text (1.45).
ROW = ("[...document.querySelectorAll('[role=treeitem]')].find((e) => "
       f"(e.getAttribute('aria-label') || e.innerText.split('\\n')[0]).trim() === {json.dumps(TITLE)})")
PANEL = "document.querySelector('[data-testid=properties-panel]')"  # 1.45's right-hand properties panel


def hover(page, expression: str) -> None:
    """Move the mouse (no button) to the middle of an element, as a user pointing at it."""
    x, y = page.js(f"(() => {{ const r = ({expression}).getBoundingClientRect(); "
                   "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})


def button_named(name: str, within: str = "document") -> str:
    """A JS expression for a visible button by its accessible name."""
    return (f"[...{within}.querySelectorAll('button')].find((b) => b.getClientRects().length && "
            f"b.getAttribute('aria-label') === {json.dumps(name)})")


def search_library(page, text: str) -> None:
    """Open the Node Library and type into its search box, as test_frontend does."""
    assert not page.js(LIBRARY_OPEN)
    click_element(page, sidebar_button("Node Library"))
    page.wait_for(f"{LIBRARY_OPEN} && !!{LIBRARY_SEARCH}", timeout=20)
    click_element(page, LIBRARY_SEARCH)
    assert page.wait_for(f"document.activeElement === {LIBRARY_SEARCH}", timeout=5)
    page.js(f"{LIBRARY_SEARCH}.select(), true")
    page.type_text(text)
    page.wait_for(f"!!{ROW}", timeout=20)


def open_help_from_row_button(page) -> None:
    """The classic library (1.32, or 1.45 with the new design off): the row's "?" button, shown on hover.

    The front end reveals the row's buttons with a hover rule inside `@media (hover: hover)`. Headless Chromium
    has no hover-capable pointer (that query is false), so there the button stays transparent after the mouse
    is on the row; a transparent button still takes the click, as the revealed one does for a user. Where the
    query holds, the button must have become visible."""
    row = f"({ROW}).querySelector('.p-tree-node-content') ?? {ROW}"
    hover(page, row)
    assert page.wait_for(f"({row}).matches(':hover')", timeout=5), "the mouse is not on the row"
    button = f"({ROW}).querySelector('.help-button')"
    assert page.js(f"!!{button}"), "no '?' button in the node's row"
    if page.js("matchMedia('(hover: hover)').matches"):
        assert page.wait_for(f"getComputedStyle({button}.closest('.node-actions') ?? {button}).opacity === '1'",
                             timeout=5), "the '?' button did not appear on hover"
    click_element(page, button)


def open_help_from_node_info(page) -> str:
    """1.45's new library: pick the node from its row, place it on the canvas, then "Node Info" in the selection
    toolbox. Returns a JS expression for the placed node."""
    page.js("app.graph.clear(), app.graph.setDirtyCanvas(true, true), true")  # an empty canvas to place it on
    click_element(page, ROW)
    # A free spot of the canvas, right of the library panel and clear of the window's menus.
    x, y = page.js("(() => { const r = app.canvas.canvas.getBoundingClientRect(); "
                   "return [r.left + r.width * 0.6, r.top + r.height * 0.45]; })()")
    assert page.js(f"document.elementFromPoint({x}, {y}) === app.canvas.canvas"), "canvas covered where we click"
    page.click(x, y)
    node = f"app.graph.nodes.find((n) => n.type === {json.dumps(NODE)})"
    assert page.wait_for(f"!!{node} && !!app.canvas.selected_nodes[{node}.id]", timeout=10), "node not placed"
    click_element(page, button_named("Node Info"))
    return node


def close_help(page, new_design: bool, node: str | None) -> None:
    """Leave the page as the other tests expect it: no help, no properties panel, library closed, no extra node."""
    if new_design:
        close = button_named("Toggle properties panel", PANEL)
        if page.js(f"!!{PANEL} && !!({close})"):
            click_element(page, close)
            page.wait_for(f"!{PANEL}?.getClientRects().length", timeout=10)
        if node and page.js(f"!!{node}"):
            page.js(f"app.graph.remove({node}), app.graph.setDirtyCanvas(true, true), true")
    elif page.js(f"!!{HELP}"):
        click_element(page, "document.querySelector('.pi-arrow-left').closest('button')")  # back to the tree
        page.wait_for(f"!{HELP}", timeout=10)
    if page.js(LIBRARY_OPEN):
        click_element(page, sidebar_button("Node Library"))
    page.wait_for(f"!({LIBRARY_OPEN})", timeout=10)


def test_help_page_opens_from_the_node_library(page, artifacts):
    close_dialogs(page)
    # Served where both front ends fetch it (the locale file is optional: they fall back to <node id>.md).
    served = page.js(f"fetch('{DOCS_URL}{NODE}.md').then(async (r) => [r.status, await r.text()])")
    assert served == [200, (REPO / "js" / "docs" / f"{NODE}.md").read_text()]
    new_design = page.js("app.extensionManager.setting.get('Comfy.NodeLibrary.NewDesign') === true")
    version = page.js("window.__COMFYUI_FRONTEND_VERSION__ ?? ''")
    if version.startswith("1.45."):
        assert new_design, "1.45 defaults to the new library design: the path this test takes there"
    page.js("performance.clearResourceTimings(), true")
    node = None
    try:
        search_library(page, "Blended Guidance")
        if new_design:
            node = open_help_from_node_info(page)
        else:
            open_help_from_row_button(page)
        assert page.wait_for(f"!!{HELP}", timeout=20), "no help page with our title"
        fetched = page.js("performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)")
        assert f"{DOCS_URL}{NODE}.md" in fetched, fetched  # our file, not the front end's fallback
        headings = page.js(f"[...({HELP}).querySelectorAll('h2')].map((h) => h.textContent.trim())")
        assert headings == ["When to use", "Inputs", "Outputs"], headings
        inputs = page.js(f"[...({HELP}).querySelectorAll('li > strong > code')].map((c) => c.textContent)")
        assert {"anchor", "target_cfg", "local_blend"} <= set(inputs), inputs
        image = f"({HELP}).querySelector('img')"
        assert page.js(f"new URL({image}.src).pathname") == DOCS_URL + PICTURE
        assert page.wait_for(f"{image}.complete && {image}.naturalWidth > 0", timeout=20), "picture not loaded"
        from PIL import Image

        with Image.open(REPO / "js" / "docs" / PICTURE) as picture:
            assert page.js(f"{image}.naturalWidth") == picture.width
        page.js(f"{image}.scrollIntoView({{block: 'center'}}), true")
        time.sleep(0.3)
        page.screenshot(artifacts / "help_page.png")
    finally:
        close_help(page, new_design, node)
    assert not our_errors(page)

"""Our nodes and workflows in ComfyUI's real front end, and what our JS adds to it.

Assertions are on the page's state (the graph, widgets, the DOM our extension builds, the server's
history), never on pixels; screenshots are saved for people (see conftest.ARTIFACTS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from testbed.comfy_server import get_json, wait_history
from testbed.workflow_api import ui_to_api

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
OUR_PREFIX = "ExactInversion_"
OUR_JS = "/extensions/exact-inversion/"
THUMB_WIDTH = 512  # scripts/ui_screenshots.py's thumbnails; the front end's default-template.png is 224 wide
RUN_WORKFLOW = "toy_blended_edit.json"  # the one run from the UI: toy model, picker, round-trip figure


def our_errors(page) -> list[str]:
    """Page errors raised in our extension's modules (the front end logs its own, e.g. missing templates)."""
    return [e for e in page.errors if OUR_JS in e]


OUR_DIALOG = "[...document.querySelectorAll('[role=dialog]')].find((d) => d.innerText.includes('exact-inversion'))"


def close_dialogs(page) -> None:
    """Close any open dialog (its close button), so one test's dialog cannot block the next test's clicks."""
    page.js("[...document.querySelectorAll('[role=dialog]')].forEach((d) => [...d.querySelectorAll('button')]"
            ".find((b) => (b.getAttribute('aria-label') || '').toLowerCase().includes('close') || "
            "b.querySelector('.pi-times'))?.click()), true")
    page.wait_for("document.querySelectorAll('[role=dialog]').length === 0", timeout=10)


def load(page, path: Path) -> None:
    close_dialogs(page)
    workflow = json.loads(path.read_text())
    page.js(f"app.loadGraphData({json.dumps(workflow)}, true, true, {json.dumps(path.name)}).then(() => true)")
    page.wait_for(f"app.graph.nodes.length === {len(workflow['nodes'])}")
    page.js("app.graph.setDirtyCanvas(true, true), true")


def fit_view(page) -> None:
    page.js("app.extensionManager.command.execute('Comfy.Canvas.FitView').then(() => true)")
    time.sleep(0.3)


def focus(page, node: str, scale: float = 1.0) -> None:
    """Zoom to `scale` and centre the canvas on a node (a JS expression), so it is on screen and readable."""
    page.js(f"app.canvas.ds.scale = {scale}, app.canvas.centerOnNode({node}), app.graph.setDirtyCanvas(true, true), "
            "true")
    time.sleep(0.5)


def graph_box(page, margin: float = 16.0) -> tuple[float, float, float, float]:
    """The window rectangle (x, y, width, height) around every node, titles included."""
    left, top, right, bottom = page.js(
        "(() => { const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect(); "
        "const title = LiteGraph.NODE_TITLE_HEIGHT; let b = [Infinity, Infinity, -Infinity, -Infinity]; "
        "for (const n of app.graph.nodes) { const x0 = (n.pos[0] + ds.offset[0]) * ds.scale + r.left, "
        "y0 = (n.pos[1] - title + ds.offset[1]) * ds.scale + r.top; b = [Math.min(b[0], x0), Math.min(b[1], y0), "
        "Math.max(b[2], x0 + n.size[0] * ds.scale), Math.max(b[3], y0 + (n.size[1] + title) * ds.scale)]; } "
        "return b; })()")
    width, height = page.size
    left, top = max(0.0, left - margin), max(0.0, top - margin)
    return left, top, min(width, right + margin) - left, min(height, bottom + margin) - top


def thumbnail(page, path: Path) -> None:
    """The graph alone, fitted to the window in focus mode (no menus): a Templates-browser thumbnail."""
    page.js("app.extensionManager.command.execute('Workspace.ToggleFocusMode').then(() => true)")
    try:
        fit_view(page)
        page.screenshot(path, clip=graph_box(page))
    finally:
        page.js("app.extensionManager.command.execute('Workspace.ToggleFocusMode').then(() => true)")
        time.sleep(0.3)


def node_of(page, node_type: str) -> str:
    """A JS expression for the first node of this type on the canvas."""
    return f"app.graph.nodes.find((n) => n.type === {json.dumps(node_type)})"


def set_widget(page, node: str, name: str, value) -> None:
    """Set a widget as an edit in the UI does: its value, then its callback (which our JS listens to)."""
    page.js(f"(() => {{ const w = {node}.widgets.find((w) => w.name === {json.dumps(name)}); "
            f"w.value = {json.dumps(value)}; w.callback?.(w.value); return true; }})()")


def click_element(page, expression: str, timeout: float = 10.0) -> None:
    """A real mouse click in the middle of the element the expression returns, once a user could click it: on
    screen, still (side panels and dialogs slide in) and on top (1.45 masks the page for a moment after load,
    and a click on the mask is lost)."""
    where = (f"(() => {{ const e = {expression}; if (!e) return null; const r = e.getBoundingClientRect(); "
             "const x = r.x + r.width / 2, y = r.y + r.height / 2, top = document.elementFromPoint(x, y); "
             "return [x, y, r.width, r.height, !!top && e.contains(top)]; })()")
    deadline, box = time.time() + timeout, page.js(where)
    while True:
        time.sleep(0.1)
        box, before = page.js(where), box
        ready = bool(box) and box == before and box[2] > 0 and box[3] > 0 and box[4]
        if ready or time.time() > deadline:
            break
    assert ready, f"not clickable (absent, off screen, moving or covered): {expression} -> {box}"
    page.click(box[0], box[1])


def sidebar_button(name: str) -> str:
    """A JS expression for a side-bar button by its accessible name ('Node Library (n)', 'Templates'),
    which both front ends give it; their classes and icons differ."""
    return ("[...document.querySelectorAll('button')].find((b) => "
            f"(b.getAttribute('aria-label') || '').startsWith({json.dumps(name)}))")


#: The Node Library's search box: a visible input whose placeholder says search ('Search Nodes...' on 1.32, a
#: 'Search...' combobox on 1.45); of several, the one sitting closest to a [role=tree] (the library's list).
LIBRARY_SEARCH = (
    "(() => { const near = (i) => { let d = 0; for (let e = i; e; e = e.parentElement, d++) "
    "if (e.querySelector('[role=tree]')) return d; return Infinity; }; "
    "return [...document.querySelectorAll('input')].filter((i) => /search/i.test(i.placeholder || '') && "
    "i.getClientRects().length).sort((a, b) => near(a) - near(b))[0] ?? null; })()")


def tree_leaves_under(folder: str) -> str:
    """A JS expression: the names of the leaves anywhere under the first tree folder called `folder`, or null.

    Read through ARIA tree semantics, which both front ends' Node Libraries expose but lay out differently:
    1.32's PrimeVue tree nests each folder's items inside it, 1.45's (virtualised, reka-ui) lists all items
    flat. In both, treeitems come in document order with an aria-level, so a folder's subtree is the run of
    items after it that are deeper, and a leaf is an item the next one is not deeper than. An item's name is
    its aria-label (1.32), else its own first line of text (1.45: no children inside, no count badge). The folder
    is scrolled to the top of its list first: a virtualised list renders only the rows near its viewport."""
    return (
        "(() => { const name = (e) => (e.getAttribute('aria-label') || e.innerText.split('\\n')[0]).trim(); "
        "const level = (e) => Number(e.getAttribute('aria-level')) || "
        "1 + [...document.querySelectorAll('[role=treeitem]')].filter((a) => a !== e && a.contains(e)).length; "
        "for (const tree of document.querySelectorAll('[role=tree]')) { "
        "const items = [...tree.querySelectorAll('[role=treeitem]')]; "
        f"const at = items.findIndex((e) => name(e) === {json.dumps(folder)}); if (at < 0) continue; "
        "items[at].scrollIntoView({block: 'start'}); "
        "const under = []; for (let k = at + 1; k < items.length && level(items[k]) > level(items[at]); k++) "
        "under.push(items[k]); "
        "return under.filter((e, k) => !(k + 1 < under.length && level(under[k + 1]) > level(e))).map(name); } "
        "return null; })()")


def run_from_ui(page, server, timeout: float = 300.0) -> dict:
    """Queue the canvas as the Run button does, and wait (up to ``timeout`` s) for the server's history entry of
    that run, which appears when the run ends."""
    before = set(get_json(server["url"] + "/history"))
    page.js("app.queuePrompt(0, 1).then(() => true)")
    new = page.wait_for(f"fetch('/history').then((r) => r.json()).then((h) => Object.keys(h).filter((k) => "
                        f"!{json.dumps(sorted(before))}.includes(k)))", timeout=timeout)
    return wait_history(server["url"], new[0], timeout=300)


def test_our_nodes_in_the_node_library(page, ui_server, artifacts):
    info = get_json(ui_server["url"] + "/object_info")
    ours = sorted(k for k in info if k.startswith(OUR_PREFIX))
    assert len(ours) >= 14
    registered = page.js(f"Object.keys(LiteGraph.registered_node_types).filter((k) => k.startsWith('{OUR_PREFIX}'))")
    assert sorted(registered) == ours
    # The Node Library sidebar lists them in their category's folder, with their display names.
    is_open = "app.extensionManager.sidebarTab.activeSidebarTabId === 'node-library'"
    assert not page.js(is_open)
    click_element(page, sidebar_button("Node Library"))
    try:
        page.wait_for(f"{is_open} && !!{LIBRARY_SEARCH}", timeout=20)
        # Typed as a user does (focus, then keyboard input) rather than setting .value and faking an event,
        # which would depend on how each front end's box (a plain input on 1.32, a reka-ui combobox on 1.45) listens.
        click_element(page, LIBRARY_SEARCH)
        assert page.wait_for(f"document.activeElement === {LIBRARY_SEARCH}", timeout=5)
        page.js(f"{LIBRARY_SEARCH}.select(), true")
        page.type_text("inversion")
        displays = sorted(info[k]["display_name"] for k in ours)
        leaves = tree_leaves_under("exact inversion")
        try:
            page.wait_for(f"{json.dumps(displays)}.every((d) => ({leaves} || []).includes(d))", timeout=20)
        except TimeoutError:
            pass  # the assertions below say what is missing
        shown = page.js(leaves)
        assert shown is not None, "no 'exact inversion' folder in the Node Library"
        assert not [d for d in displays if d not in shown], (displays, shown)
        page.screenshot(artifacts / "node_library.png")
    finally:
        if page.js(is_open):
            click_element(page, sidebar_button("Node Library"))  # close it again
        page.wait_for(f"!({is_open})", timeout=10)
    assert not our_errors(page)


def test_workflows_listed_in_the_templates_browser(page, artifacts):
    click_element(page, sidebar_button("Templates"))
    try:
        # Our workflows are listed under our extension's category in the dialog's list of categories. With
        # comfyui-workflow-templates installed (both hosts) the dialog opens on "All" (hundreds of templates,
        # ours not among the cards shown), so pick ours as a user does.
        category = (f"[...{OUR_DIALOG}.querySelectorAll('button, a, [role=button], [role=tab], [role=option], "
                    "[role=menuitem], [role=treeitem]')].find((e) => e.textContent.trim() === 'exact-inversion')")
        page.wait_for(f"!!({category})", timeout=30)
        click_element(page, category)
        stems = json.dumps([p.stem for p in WORKFLOWS])
        text = page.wait_for(f"{stems}.every((s) => {OUR_DIALOG}.innerText.includes(s)) && {OUR_DIALOG}.innerText",
                             timeout=30)
        for path in WORKFLOWS:
            assert path.stem in text, path.stem
        # Each card shows the workflow's picture (workflows/<name>.jpg); a missing one becomes the front end's
        # default-template.png.
        cards = f"[...{OUR_DIALOG}.querySelectorAll('img')]"
        page.wait_for(f"{cards}.length >= 4 && {cards}.every((i) => i.complete && i.naturalWidth > 0)", timeout=30)
        page.screenshot(artifacts / "templates.png")
        shown = page.js(f"{cards}.map((i) => [i.src, i.naturalWidth])")
        assert all("default-template" not in src and width == THUMB_WIDTH for src, width in shown), shown
    finally:
        close_dialogs(page)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_loads_without_missing_nodes_or_red_inputs(page, ui_server, artifacts, path):
    info = get_json(ui_server["url"] + "/object_info")
    load(page, path)
    nodes = page.js("app.graph.nodes.map((n) => ({id: n.id, type: n.type, registered: !!LiteGraph."
                    "registered_node_types[n.type], errors: !!n.has_errors, combos: (n.widgets || []).filter((w) => "
                    "w.type === 'combo').map((w) => [w.name, w.value, w.options?.values ?? []])}))")
    missing = [n["type"] for n in nodes if not n["registered"] or n["type"] not in info]
    assert not missing, f"{path.name}: missing node types {missing}"
    assert not [n for n in nodes if n["errors"]], path.name
    for n in nodes:  # a value outside its list is a red input when queued ("Value not in list")
        for name, value, options in n["combos"]:
            if isinstance(options, list) and options:
                assert value in options, f"{path.name}: node {n['id']} {n['type']}.{name} = {value!r}"
    prompt = page.js("app.graphToPrompt().then((p) => p.output)")
    for node_id, node in prompt.items():  # every required input is given ("Required input is missing")
        required = info[node["class_type"]]["input"].get("required", {})
        absent = sorted(set(required) - set(node["inputs"]))
        assert not absent, f"{path.name}: node {node_id} {node['class_type']} lacks {absent}"
    # The front end turns the file into exactly the graph the server tests run (tests/server).
    ui = json.loads(path.read_text())
    types = {n["type"]: info[n["type"]]["input"] for n in ui["nodes"] if n["type"] in info}
    expected = ui_to_api(ui, types)
    def graph(api: dict) -> dict:
        return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}

    assert graph(prompt) == graph(expected)
    fit_view(page)
    page.screenshot(artifacts / f"workflow_{path.stem}.png")
    thumbnail(page, artifacts / f"thumb_{path.stem}.png")
    assert not our_errors(page)


def test_word_picker_sets_the_anchor_and_toggles_words(page, artifacts):
    load(page, REPO / "workflows" / "toy_blended_edit.json")
    node = node_of(page, "ExactInversion_BlendedGuidance")
    prompt = page.js(f"{node}.widgets.find((w) => w.name === 'source_prompt').value")
    chips = page.js(f"[...{node}.widgets.find((w) => w.name === 'word_picker').element"
                    ".querySelectorAll('button')].map((b) => b.dataset.word)")
    assert chips == list(dict.fromkeys(prompt.split())), (prompt, chips)
    before = page.js(f"{node}.widgets.find((w) => w.name === 'anchor').value")
    word = next(w for w in chips if w != before and len(w) > 2)
    # bring the node into view, then click its chip with the mouse
    focus(page, node)
    click_element(page, f"[...{node}.widgets.find((w) => w.name === 'word_picker').element"
                        f".querySelectorAll('button')].find((b) => b.dataset.word === {json.dumps(word)})")
    assert page.wait_for(f"{node}.widgets.find((w) => w.name === 'anchor').value === {json.dumps(word)}", timeout=5)
    assert page.js(f"{node}.widgets.find((w) => w.name === 'word_picker').element"
                   ".querySelector('button.selected').dataset.word") == word
    prompt = page.js("app.graphToPrompt().then((p) => p.output)")
    blended = next(v for v in prompt.values() if v["class_type"] == "ExactInversion_BlendedGuidance")
    assert blended["inputs"]["anchor"] == word  # what the server will run
    page.screenshot(artifacts / "word_picker.png")
    # Typing a new prompt re-renders the chips.
    set_widget(page, node, "source_prompt", "a blue square")
    assert page.js(f"[...{node}.widgets.find((w) => w.name === 'word_picker').element"
                   ".querySelectorAll('button')].map((b) => b.dataset.word)") == ["a", "blue", "square"]
    # Attention Mask takes a list: chips toggle words in and out of it.
    load(page, REPO / "workflows" / "toy_attention_mask.json")
    mask = node_of(page, "ExactInversion_AttentionMask")
    words = page.js(f"{mask}.widgets.find((w) => w.name === 'words').value")
    focus(page, mask)
    chip = f"[...{mask}.widgets.find((w) => w.name === 'word_picker').element.querySelectorAll('button')]"
    extra = page.js(f"{chip}.map((b) => b.dataset.word).find((w) => !{json.dumps(words)}.includes(w))")
    click_element(page, f"{chip}.find((b) => b.dataset.word === {json.dumps(extra)})")
    assert page.js(f"{mask}.widgets.find((w) => w.name === 'words').value") == f"{words}, {extra}"
    click_element(page, f"{chip}.find((b) => b.dataset.word === {json.dumps(extra)})")
    assert page.js(f"{mask}.widgets.find((w) => w.name === 'words').value") == words
    assert not our_errors(page)


def test_prompt_words_as_the_picker_splits_them(page):
    split = page.js("import('/extensions/exact-inversion/words.js').then((m) => "
                    "m.promptWords('(red dog:1.2), a Red-haired cat; 3 dogs, a collar'))")
    assert split == ["red", "dog", "a", "Red-haired", "cat", "dogs", "collar"]
    toggled = page.js("import('/extensions/exact-inversion/words.js').then((m) => "
                      "[m.pickWord('dog, collar', 'Collar', true), m.pickWord('dog', 'cat', true), "
                      "m.pickWord('dog', 'cat', false)])")
    assert toggled == ["dog", "dog, cat", "cat"]


def test_bdia_hint_gives_the_servers_verdicts(page):
    """The hint's thresholds are solvers/bdia.py's: same verdict for every gamma and step count tried."""
    from solvers.bdia import bdia_guard

    cases = [(g / 100, n, rule) for g in range(50, 101, 5) for n in (10, 25, 49, 50, 100)
             for rule in ("fixed", "scaled")]
    hint = page.js(f"import('/extensions/exact-inversion/bdia_hint.js').then((m) => "
                   f"{json.dumps(cases)}.map(([g, n, r]) => m.bdiaVerdict(g, n, r).verdict))")
    for (gamma, steps, rule), verdict in zip(cases, hint, strict=True):
        try:
            expected = "warns" if bdia_guard(gamma, steps, rule) else "ok"
        except ValueError:
            expected = "refused"
        assert verdict == expected, (gamma, steps, rule)
    assert {v for (_, _, rule), v in zip(cases, hint, strict=True) if rule == "scaled"} >= {"ok", "warns", "refused"}


def test_bdia_hint_follows_gamma(page, artifacts):
    load(page, REPO / "workflows" / "bdia_invert_edit.json")
    node = node_of(page, "ExactInversion_BDIASolver")
    hints = {}
    for gamma in (1.0, 0.95, 0.9, 0.7):
        set_widget(page, node, "gamma", gamma)
        hints[gamma] = page.js(f"(({{dataset, textContent}}) => [dataset.level, textContent])("
                               f"{node}.widgets.find((w) => w.name === 'bdia_hint').element)")
    assert hints[1.0] == ["ok", "Inversion error growth γ^-N · 25 steps: ×1.00 · 50 steps: ×1.00"]
    assert hints[0.95][0] == "ok" and "50 steps: ×13.0" in hints[0.95][1]
    # the server's verdicts (solvers/bdia.py): 0.9^-50 = 194 warns; 0.7^-50 = 5.6e7 is past 1e6: refused
    assert hints[0.9][0] == "warning" and "50 steps: ×194 (warns)" in hints[0.9][1]
    assert hints[0.7][0] == "warning" and "25 steps: ×7.46e+3 (warns)" in hints[0.7][1]
    assert "50 steps: refused" in hints[0.7][1]
    # scaled, 0.7 at 50 steps is 0.7^(1/2) = 0.84 there: the 25-step growth, warned, not refused
    set_widget(page, node, "gamma_rule", "scaled")
    scaled = page.js(f"{node}.widgets.find((w) => w.name === 'bdia_hint').element.textContent")
    assert "25 steps: ×7.46e+3 (warns)" in scaled and "50 steps: ×7.46e+3 (warns)" in scaled, scaled
    set_widget(page, node, "gamma_rule", "fixed")
    focus(page, node)
    page.screenshot(artifacts / "bdia_hint.png")
    assert not our_errors(page)


def test_a_workflow_runs_from_the_ui_and_shows_its_figure_and_reports(page, ui_server, artifacts):
    load(page, REPO / "workflows" / RUN_WORKFLOW)
    entry = run_from_ui(page, ui_server)
    assert entry["status"]["status_str"] == "success", entry["status"]
    check = node_of(page, "ExactInversion_RoundTripCheck")
    # The round-trip figure is on the check node, loaded.
    assert page.wait_for(f"({check}.imgs || []).length > 0 && {check}.imgs[0].complete && "
                         f"{check}.imgs[0].naturalWidth > 0", timeout=30)
    report = page.wait_for(f"{check}.widgets?.find((w) => w.name === 'exact_inversion_report')?.element.innerText",
                           timeout=10)
    assert "round trip" in report and "PSNR" in report
    invert = node_of(page, "ExactInversion_Invert")
    summary = page.js(f"{invert}.widgets.find((w) => w.name === 'exact_inversion_report').element.innerText")
    assert "EDICT" in summary.upper()
    fit_view(page)
    page.screenshot(artifacts / "run_complete.png")
    focus(page, check)
    page.screenshot(artifacts / "run_check_closeup.png")
    # A warning from the run lands in the node: Blended Guidance at another cfg than Invert's.
    blended = node_of(page, "ExactInversion_BlendedGuidance")
    set_widget(page, blended, "cfg", 2.5)
    assert run_from_ui(page, ui_server)["status"]["status_str"] == "success"
    warned = page.wait_for("app.graph.nodes.filter((n) => n.type === 'ExactInversion_Edit' && "
                           "(n.exactInversionWarnings || []).length).map((n) => n.widgets.find((w) => "
                           "w.name === 'exact_inversion_report').element.innerText)", timeout=30)
    assert any("differs from the one Invert used" in text for text in warned), warned
    assert page.js("app.graph.nodes.filter((n) => n.type === 'ExactInversion_Edit' && "
                   "(n.exactInversionWarnings || []).length).every((n) => n.bgcolor === '#4a3510')")
    focus(page, "app.graph.nodes.find((n) => (n.exactInversionWarnings || []).length)")
    page.screenshot(artifacts / "run_warning.png")
    # Back to the inversion's cfg: the next run clears the warning and the tint.
    set_widget(page, blended, "cfg", 1.0)
    assert run_from_ui(page, ui_server)["status"]["status_str"] == "success"
    assert page.wait_for("app.graph.nodes.filter((n) => n.type === 'ExactInversion_Edit').every((n) => "
                         "!(n.exactInversionWarnings || []).length && !n.exactInversionTinted && "
                         "n.bgcolor !== '#4a3510') ? 1 : 0", timeout=30)
    assert not our_errors(page)


def test_attention_mask_shows_its_mask_after_a_run(page, ui_server, artifacts):
    load(page, REPO / "workflows" / "toy_attention_mask.json")
    entry = run_from_ui(page, ui_server)
    assert entry["status"]["status_str"] == "success", entry["status"]
    masks = page.js("app.graph.nodes.filter((n) => n.type === 'ExactInversion_AttentionMask').map((n) => n.id)")
    assert masks
    for node_id in masks:
        assert entry["outputs"][str(node_id)]["images"], node_id  # the mask preview the node returns
        shown = f"app.graph.getNodeById({node_id})"
        assert page.wait_for(f"({shown}.imgs || []).length > 0 && {shown}.imgs[0].complete && "
                             f"{shown}.imgs[0].naturalWidth > 0", timeout=30)
    focus(page, f"app.graph.getNodeById({masks[0]})")
    page.screenshot(artifacts / "attention_mask.png")
    assert not our_errors(page)

"""Our JS in the front end's "Nodes 2.0" renderer, where Vue components draw the nodes instead of the canvas.

Nodes 2.0 is opt-in on a local install (setting `Comfy.VueNodes.Enabled`, default off; Settings > Comfy >
Nodes 2.0, the logo menu's "Nodes 2.0", or the command `Experimental.ToggleVueNodes`). The module switches to
it with that command, as the command palette does, and always switches back to the classic canvas: the page
and the server's settings are shared by the whole session.

In Nodes 2.0 the front end moves a DOM widget's element (ours: the word picker, the BDIA hint, the report
panel) into the Vue node; the image previews and the node colours are the front end's own. Each test asserts
that what our JS builds is inside the Vue node's element and shown there (client rects within the node's
rectangle), and works with a real mouse. Screenshots: artifacts / "nodes2_*.png".

Both hosts' front ends have the renderer (since 1.27.1): the tests run on 1.45.21 and on 1.32.9, and skip only
on a front end without it; the properties-panel check needs 1.45's panel.
"""

from __future__ import annotations

import json

import pytest
from test_frontend import REPO, click_element, close_dialogs, focus, load, node_of, our_errors, run_from_ui, set_widget

VUE_SETTING = "Comfy.VueNodes.Enabled"
VUE_COMMAND = "Experimental.ToggleVueNodes"
WARNING_COLOR, WARNING_BGCOLOR = "rgb(107, 74, 18)", "rgb(74, 53, 16)"  # report_panel.js's tint, as CSS computes it
HINT_AMBER = "rgb(251, 191, 36)"  # the hint's and the report's warning text

VUE_ON = f"!!LiteGraph.vueNodesMode && app.extensionManager.setting.get({json.dumps(VUE_SETTING)}) === true"
CLASSIC_ON = (f"!LiteGraph.vueNodesMode && !app.extensionManager.setting.get({json.dumps(VUE_SETTING)}) && "
              "document.querySelectorAll('.lg-node[data-node-id]').length === 0")
#: Is `el` drawn (has client rects, not hidden) and within the rectangle of the element `host`, which holds it?
SHOWN_IN = ("((el, host) => { if (!el || !host || !host.contains(el) || !el.getClientRects().length) return false; "
            "const r = el.getBoundingClientRect(), h = host.getBoundingClientRect(); "
            "return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden' && "
            "r.left >= h.left - 1 && r.right <= h.right + 1 && r.top >= h.top - 1 && r.bottom <= h.bottom + 1; })")


def vue_node(node: str) -> str:
    """A JS expression: the Vue node's element of a graph node (a JS expression), or null."""
    return f"document.querySelector(`.lg-node[data-node-id='${{{node}.id}}']`)"


def widget_element(node: str, name: str) -> str:
    return f"{node}.widgets.find((w) => w.name === {json.dumps(name)}).element"


def shown_in_node(node: str, element: str) -> str:
    return f"{SHOWN_IN}({element}, {vue_node(node)})"


def chips(node: str) -> str:
    return f"[...{widget_element(node, 'word_picker')}.querySelectorAll('button')]"


def chip(node: str, word: str) -> str:
    return f"{chips(node)}.find((b) => b.dataset.word === {json.dumps(word)})"


def widget_value(page, node: str, name: str):
    return page.js(f"{node}.widgets.find((w) => w.name === {json.dumps(name)}).value")


def server_input(page, class_type: str, name: str):
    """The input of the first node of this type in what the Run button sends (app.graphToPrompt)."""
    return page.js(f"app.graphToPrompt().then((p) => Object.values(p.output).find((v) => v.class_type === "
                   f"{json.dumps(class_type)}).inputs[{json.dumps(name)}])")


def load_vue(page, name: str, node_type: str) -> str:
    """Load a workflow and wait until the Vue renderer has drawn its nodes; returns node_of(node_type)."""
    load(page, REPO / "workflows" / name)
    page.wait_for("app.graph.nodes.every((n) => document.querySelector(`.lg-node[data-node-id='${n.id}']`))",
                  timeout=30)
    node = node_of(page, node_type)
    focus(page, node)
    return node


def tinted(node: str) -> str:
    """A JS expression: the computed background colours in the Vue node that are our warning tint's."""
    colours = json.dumps([WARNING_COLOR, WARNING_BGCOLOR])
    return (f"[{vue_node(node)}, ...{vue_node(node)}.querySelectorAll('*')].map((e) => getComputedStyle(e)"
            f".backgroundColor).filter((c) => {colours}.includes(c))")


def click(page, expression: str) -> None:
    """click_element, and when the element is not clickable, say which element lies on top of it."""
    try:
        click_element(page, expression)
    except AssertionError as err:
        top = page.js(f"(() => {{ const e = {expression}; if (!e) return null; const r = e.getBoundingClientRect(); "
                      "return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)?.outerHTML"
                      ".slice(0, 400); })()")
        raise AssertionError(f"{err}; on top there: {top}") from None


def switch_renderer(page, vue: bool) -> None:
    """Run the front end's toggle command if the renderer is not the one wanted, and wait until it is drawn so."""
    if bool(page.js(f"app.extensionManager.setting.get({json.dumps(VUE_SETTING)})")) != vue:
        page.js(f"app.extensionManager.command.execute({json.dumps(VUE_COMMAND)}).then(() => true)")
    page.wait_for(VUE_ON if vue else CLASSIC_ON, timeout=30)


def cancel_node_placement(page) -> None:
    """Cancel a node placement left open, with Escape as a user would. On 1.45 a node added from the search box
    follows the pointer until a click places it; while that lasts (canvas.state.ghostNodeId set, even after
    another workflow is loaded) every Vue node ignores the mouse (pointer-events: none). test_blueprints places
    what it adds; this guards against any test that does not."""
    if page.js("app.canvas.state?.ghostNodeId == null"):
        return
    for kind in ("rawKeyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", {"type": kind, "key": "Escape", "code": "Escape",
                                             "windowsVirtualKeyCode": 27})
    page.wait_for("app.canvas.state.ghostNodeId == null && !app.canvas.state.draggingItems", timeout=10)


@pytest.fixture(scope="module")
def nodes_2(page):
    """The page in Nodes 2.0 for this module's tests; the classic canvas again afterwards, whatever happens."""
    version = page.js("window.__COMFYUI_FRONTEND_VERSION__")
    commands = page.js("app.extensionManager.command.commands.map((c) => c.id)")
    if VUE_COMMAND not in commands:
        pytest.skip(f"front end {version} has no Nodes 2.0 renderer (no {VUE_COMMAND} command)")
    close_dialogs(page)
    cancel_node_placement(page)
    classic_first = page.js(CLASSIC_ON)
    try:
        switch_renderer(page, vue=True)
        # 1.32 answers the switch with a "Prefer the legacy design? Switch back" toast over the canvas: close it
        # (its close button, not "Switch back"). 1.45 shows none here, so this waits at most a moment.
        toast = ("[...document.querySelectorAll('.p-toast-message')].find((t) => t.innerText.includes("
                 "'Prefer the legacy design'))")
        try:
            page.wait_for(f"!!{toast}", timeout=3)
            page.js(f"{toast}.querySelector('button[aria-label=Close]').click(), true")
        except TimeoutError:
            pass
        yield {"version": version, "classic_first": classic_first}
    finally:
        switch_renderer(page, vue=False)
        assert page.js(CLASSIC_ON), "not back on the classic canvas"


def test_classic_canvas_is_the_default_and_nodes_2_is_opt_in(nodes_2, page):
    # The session's server has a fresh user folder, as a new local install: the classic canvas until switched.
    assert nodes_2["classic_first"], f"front end {nodes_2['version']} did not start on the classic canvas"
    assert page.js(VUE_ON)
    assert page.js("document.querySelectorAll('.lg-node[data-node-id]').length") == page.js("app.graph.nodes.length")


def test_word_picker_chips_set_the_anchor_in_the_vue_node(nodes_2, page, artifacts):
    node = load_vue(page, "toy_blended_edit.json", "ExactInversion_BlendedGuidance")
    prompt = widget_value(page, node, "source_prompt")
    assert page.wait_for(shown_in_node(node, widget_element(node, "word_picker")), timeout=10)
    words = page.js(f"{chips(node)}.map((b) => b.dataset.word)")
    assert words == list(dict.fromkeys(prompt.split())), (prompt, words)
    assert page.js(f"{chips(node)}.every((b) => {SHOWN_IN}(b, {vue_node(node)}))")
    before = widget_value(page, node, "anchor")
    word = next(w for w in words if w != before and len(w) > 2)
    inputs = f"[...{vue_node(node)}.querySelectorAll('input')].map((i) => i.value)"
    assert word not in page.js(inputs)
    click(page, chip(node, word))  # a real mouse click on the chip in the Vue node
    assert page.wait_for(f"{node}.widgets.find((w) => w.name === 'anchor').value === {json.dumps(word)}", timeout=5)
    assert page.wait_for(f"{inputs}.includes({json.dumps(word)})", timeout=5)  # the Vue node's anchor box shows it
    assert page.js(f"{widget_element(node, 'word_picker')}.querySelector('button.selected').dataset.word") == word
    assert server_input(page, "ExactInversion_BlendedGuidance", "anchor") == word  # what the server will run
    page.screenshot(artifacts / "nodes2_word_picker.png")
    # Typing a new prompt in the Vue node's own text box (not our canvas-mode textarea) re-renders the chips.
    box = f"{vue_node(node)}.querySelector('textarea')"
    assert page.js(f"{box}.value") == prompt
    click(page, box)
    page.js(f"{box}.select(), true")
    page.type_text("a blue square")
    assert page.wait_for(f"JSON.stringify({chips(node)}.map((b) => b.dataset.word)) === "
                         "'[\"a\",\"blue\",\"square\"]'", timeout=5)
    assert page.js(f"{chips(node)}.every((b) => {SHOWN_IN}(b, {vue_node(node)}))")
    assert not our_errors(page)


def test_attention_mask_chips_toggle_words_and_its_mask_shows_in_the_vue_node(nodes_2, page, ui_server, artifacts):
    mask = load_vue(page, "toy_attention_mask.json", "ExactInversion_AttentionMask")
    words = widget_value(page, mask, "words")
    assert page.wait_for(shown_in_node(mask, widget_element(mask, "word_picker")), timeout=10)
    extra = page.js(f"{chips(mask)}.map((b) => b.dataset.word).find((w) => w.length > 2 && "
                    f"!{json.dumps(words)}.includes(w))")
    value = f"{mask}.widgets.find((w) => w.name === 'words').value"
    click(page, chip(mask, extra))
    assert page.wait_for(f"{value} === {json.dumps(f'{words}, {extra}')}", timeout=5)
    assert server_input(page, "ExactInversion_AttentionMask", "words") == f"{words}, {extra}"
    # Run with the word added (so this node surely runs: the unchanged graph may be a cache hit from another
    # test's run, and a cached node that is not an output node sends no preview): the mask it returned is
    # shown in the Vue node, drawn by the front end's image preview.
    entry = run_from_ui(page, ui_server)
    assert entry["status"]["status_str"] == "success", entry["status"]
    node_id = page.js(f"{mask}.id")
    filename = entry["outputs"][str(node_id)]["images"][0]["filename"]
    image = (f"[...{vue_node(mask)}.querySelectorAll('img')].find((i) => i.src.includes({json.dumps(filename)}) "
             "&& i.complete && i.naturalWidth > 0)")
    focus(page, mask)
    assert page.wait_for(f"{SHOWN_IN}({image}, {vue_node(mask)})", timeout=30)
    assert page.js(shown_in_node(mask, widget_element(mask, "word_picker")))  # the chips too, beside the mask
    page.screenshot(artifacts / "nodes2_attention_mask.png")
    # A second click takes the word out again.
    click(page, chip(mask, extra))
    assert page.wait_for(f"{value} === {json.dumps(words)}", timeout=5)
    assert server_input(page, "ExactInversion_AttentionMask", "words") == words
    assert not our_errors(page)


def test_bdia_hint_follows_gamma_in_the_vue_node(nodes_2, page, artifacts):
    node = load_vue(page, "bdia_invert_edit.json", "ExactInversion_BDIASolver")
    hint = widget_element(node, "bdia_hint")
    expected = ("import('/extensions/exact-inversion/bdia_hint.js').then((m) => m.bdiaHint("
                f"{node}.widgets.find((w) => w.name === 'gamma').value))")
    assert page.wait_for(shown_in_node(node, hint), timeout=10)
    assert page.js(f"{hint}.textContent") == page.js(expected)["text"]
    # Step gamma down with the Vue number box's own "-" button (1.45: aria-label Decrement; 1.32: PrimeVue's),
    # as a user does, until the guard warns (0.9^-50 = 194 > 1e2); after each step the hint is gamma's.
    minus = f"{vue_node(node)}.querySelector('button[aria-label=Decrement], .p-inputnumber-decrement-button')"
    steps = []
    for _ in range(15):
        gamma = widget_value(page, node, "gamma")
        click(page, minus)
        page.wait_for(f"{node}.widgets.find((w) => w.name === 'gamma').value < {gamma}", timeout=5)
        want = page.js(expected)
        assert page.wait_for(f"{hint}.textContent === {json.dumps(want['text'])}", timeout=5), want
        steps.append((widget_value(page, node, "gamma"), want["level"]))
        if want["level"] == "warning":
            break
    assert steps[-1][1] == "warning" and steps[0][1] == "ok", steps
    assert page.js(f"{hint}.dataset.level") == "warning" and "(warns)" in page.js(f"{hint}.textContent")
    assert page.js(f"getComputedStyle({hint}).color") == HINT_AMBER
    assert page.js(shown_in_node(node, hint))
    page.screenshot(artifacts / "nodes2_bdia_hint.png")
    assert not our_errors(page)


def test_run_report_figure_and_warning_tint_in_the_vue_nodes(nodes_2, page, ui_server, artifacts):
    check = load_vue(page, "toy_blended_edit.json", "ExactInversion_RoundTripCheck")
    blended = node_of(page, "ExactInversion_BlendedGuidance")
    # Blended Guidance at another cfg than Invert's: Edit warns, and the warning must be seen in the Vue node.
    # (Reports are checked on nodes this run surely sends: output nodes, which get their cached report again,
    # and the Edit whose guider changed. Invert may be a cache hit from another workflow's run: no report then.)
    set_widget(page, blended, "cfg", 2.5)
    entry = run_from_ui(page, ui_server)
    assert entry["status"]["status_str"] == "success", entry["status"]
    report = "exact_inversion_report"
    page.wait_for(f"{check}.widgets.some((w) => w.name === {json.dumps(report)})", timeout=30)
    focus(page, check)
    assert page.wait_for(shown_in_node(check, widget_element(check, report)), timeout=10)
    text = page.js(f"{widget_element(check, report)}.innerText")
    assert "round trip" in text and "PSNR" in text
    assert "round trip" in page.js(f"{vue_node(check)}.innerText")  # the text is in the node as drawn
    # The check's figure: the image it returned, in the Vue node's image preview.
    filename = entry["outputs"][page.js(f"String({check}.id)")]["images"][0]["filename"]
    figure = (f"[...{vue_node(check)}.querySelectorAll('img')].find((i) => i.src.includes({json.dumps(filename)}) && "
              "i.complete && i.naturalWidth > 0)")
    assert page.wait_for(f"{SHOWN_IN}({figure}, {vue_node(check)})", timeout=30)
    page.screenshot(artifacts / "nodes2_run_check.png")
    warned = ("app.graph.nodes.find((n) => n.type === 'ExactInversion_Edit' && "
              "(n.exactInversionWarnings || []).length)")
    page.wait_for(f"!!{warned}", timeout=30)
    focus(page, warned)
    row = f"{widget_element(warned, report)}.querySelector('.exact-inversion-warning')"
    assert page.wait_for(shown_in_node(warned, row), timeout=10)
    assert "differs from the one Invert used" in page.js(f"{row}.innerText")
    assert page.js(f"getComputedStyle({row}).color") == HINT_AMBER
    # The Vue renderer draws node.color (the header) and node.bgcolor (the body): the tint shows there.
    assert page.wait_for(f"new Set({tinted(warned)}).size === 2", timeout=10), page.js(tinted(warned))
    page.screenshot(artifacts / "nodes2_run_warning.png")
    # Back to the inversion's cfg: the next run clears the warning and the tint in the Vue nodes.
    warned_id = page.js(f"{warned}.id")
    set_widget(page, blended, "cfg", 1.0)
    assert run_from_ui(page, ui_server)["status"]["status_str"] == "success"
    edit = f"app.graph.getNodeById({warned_id})"
    assert page.wait_for(f"!({edit}.exactInversionWarnings || []).length && {tinted(edit)}.length === 0 ? 1 : 0",
                         timeout=30)
    assert not page.js(f"{widget_element(edit, report)}.querySelector('.exact-inversion-warning')")
    assert not our_errors(page)


def test_our_views_are_not_listed_as_inputs_in_the_properties_panel(nodes_2, page, artifacts):
    """1.45's properties panel lists a selected node's widgets as inputs; the chips, the hint and the report are
    views, not inputs (hideInPanel), so the panel must not list them as empty entries."""
    toggle = ("[...document.querySelectorAll('button')].find((b) => b.getAttribute('aria-label') === "
              "'Toggle properties panel')")
    if not page.js(f"!!{toggle}"):
        pytest.skip(f"front end {nodes_2['version']} has no properties panel")
    node = load_vue(page, "toy_blended_edit.json", "ExactInversion_BlendedGuidance")
    click(page, f"{vue_node(node)}.querySelector('.lg-node-header')")  # select the node
    page.wait_for(f"!!app.canvas.selected_nodes[{node}.id]", timeout=5)
    listed = "[...document.querySelectorAll('.widget-item')].map((e) => e.innerText.split('\\n')[0].trim())"
    click(page, toggle)
    try:
        # The panel opens on the tab it last showed (test_help_pages leaves it on Info): go to Parameters.
        panel = "document.querySelector('[data-testid=properties-panel]')"
        tab = (f"[...{panel}.querySelectorAll('button, [role=tab]')].find((b) => b.getClientRects().length && "
               "b.innerText.trim() === 'Parameters')")
        page.wait_for(f"!!{panel} && !!{tab}", timeout=10)
        click(page, tab)
        shown = page.wait_for(f"(({listed}).includes('anchor')) && {listed}", timeout=10)
        assert "source_prompt" in shown and "word_picker" not in shown, shown
        page.screenshot(artifacts / "nodes2_properties_panel.png")
        # Opening the panel left the chips in the node.
        assert page.js(shown_in_node(node, widget_element(node, "word_picker")))
    finally:
        click(page, toggle)
        page.wait_for(f"!({listed}).includes('anchor')", timeout=10)
    assert not our_errors(page)

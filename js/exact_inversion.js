// Front-end extension of Exact Inversion (ComfyUI's extension API; plain ES modules, no build step).
// - word picker: the source prompt's words as chips on Blended Guidance and Attention Mask;
// - report panel: our nodes' run report in the node, warnings highlighted and the node tinted;
// - BDIA hint: gamma's error growth and the guard's verdict, live while gamma is edited.
// Figures (the round-trip check's image, Attention Mask's mask) are the nodes' own image outputs,
// which ComfyUI shows on the node after a run.
// Both renderers: on the classic canvas the front end positions our DOM widgets over the node; in "Nodes 2.0"
// (Vue nodes, opt-in) it moves the same elements into the Vue node, which sizes itself to them, and draws
// node.color/bgcolor (our warning tint) and the image previews itself (tests/browser/test_nodes_2.py).
import { app } from "../../scripts/app.js";
import { addBdiaHint } from "./bdia_hint.js";
import { fitWidgets } from "./widgets.js";
import { REPORTING_NODES, showReport } from "./report_panel.js";
import { addWordPicker, PICKERS } from "./word_picker.js";

function chain(proto, method, after) {
  const original = proto[method];
  proto[method] = function (...args) {
    const out = original?.apply(this, args);
    after.apply(this, args);
    return out;
  };
}

app.registerExtension({
  name: "ExactInversion",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    const picker = PICKERS[name];
    if (picker) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        addWordPicker(this, picker);
      });
      chain(nodeType.prototype, "onConfigure", function () {
        this.exactInversionRenderPicker?.();
        fitWidgets(this);
      });
    }
    if (name === "ExactInversion_BDIASolver") {
      chain(nodeType.prototype, "onNodeCreated", function () {
        addBdiaHint(this);
      });
      chain(nodeType.prototype, "onConfigure", function () {
        this.exactInversionRenderHint?.();
        fitWidgets(this);
      });
    }
    if (REPORTING_NODES.has(name)) {
      chain(nodeType.prototype, "onExecuted", function (message) {
        showReport(this, message);
        fitWidgets(this);
      });
    }
  },
});

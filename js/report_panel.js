// Report panel: after a run, our nodes' text (the inversion's summary, the round-trip numbers, the
// null-text passes, Save/Load's file) is shown in the node, and warnings (BDIA's gamma guard, EDICT's
// dilation, Edit's checks of model, prompt and cfg) are highlighted and tint the node, so they are not
// lost in the server's log. A run with nothing to say clears the panel and the tint.

export const REPORTING_NODES = new Set([
  "ExactInversion_Invert",
  "ExactInversion_NullTextInversion",
  "ExactInversion_RoundTripCheck",
  "ExactInversion_SaveInversion",
  "ExactInversion_LoadInversion",
  "ExactInversion_Edit",
]);

const WARNING_COLOR = "#6b4a12";
const WARNING_BGCOLOR = "#4a3510";

// Height the report needs at this node width (about 6.6 px a character of 11 px monospace, 16 px a line).
function reportHeight(lines, width) {
  const perLine = Math.max(20, Math.floor((width - 24) / 6.6));
  const rows = lines.reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0);
  return Math.min(220, 16 + 16 * rows);
}

function panelOf(node) {
  let widget = node.widgets?.find((w) => w.name === "exact_inversion_report");
  if (widget) return widget;
  const box = document.createElement("div");
  box.className = "exact-inversion-report";
  box.style.cssText = "overflow:auto;font:11px monospace;white-space:pre-wrap;padding:4px;" +
    "border-radius:4px;background:rgba(0,0,0,0.25);";
  widget = node.addDOMWidget("exact_inversion_report", "exact_inversion_report", box, {
    serialize: false,
    hideOnZoom: false,
    hideInPanel: true, // a view, not a parameter: 1.45's properties panel would list it empty
    getMinHeight: () => reportHeight(node.exactInversionReport ?? [], node.size?.[0] ?? 300),
    getMaxHeight: () => 220,
  });
  widget.serialize = false;
  return widget;
}

function tint(node, warned) {
  if (warned) {
    node.exactInversionTinted ??= { color: node.color, bgcolor: node.bgcolor };
    node.color = WARNING_COLOR;
    node.bgcolor = WARNING_BGCOLOR;
  } else if (node.exactInversionTinted) {
    node.color = node.exactInversionTinted.color;
    node.bgcolor = node.exactInversionTinted.bgcolor;
    delete node.exactInversionTinted;
  }
}

export function showReport(node, message) {
  const lines = (message?.text ?? []).flatMap((t) => String(t).split("\n"));
  const warnings = (message?.warnings ?? []).map(String);
  const shown = [...lines, ...warnings.filter((w) => !lines.includes(w))];
  node.exactInversionReport = shown.map((line) => (warnings.includes(line) ? "⚠ " + line : line));
  node.exactInversionWarnings = warnings;
  tint(node, warnings.length > 0);
  const existing = node.widgets?.find((w) => w.name === "exact_inversion_report");
  if (!shown.length && !existing) return; // nothing to say and nothing shown yet: no empty panel
  const box = (existing ?? panelOf(node)).element;
  box.replaceChildren(...node.exactInversionReport.map((text, i) => {
    const row = document.createElement("div");
    row.textContent = text;
    if (warnings.includes(shown[i])) {
      row.className = "exact-inversion-warning";
      row.style.color = "#fbbf24";
    }
    return row;
  }));
  node.setDirtyCanvas?.(true, true);
}

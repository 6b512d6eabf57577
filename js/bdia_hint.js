// BDIA's gamma guard, shown while the user edits gamma: inversion amplifies its start-up error by
// gamma^-N (solvers/bdia.py, bdia_guard). The same thresholds as the server: a warning above 1e2, and
// gamma < 0.9 refused at 50 steps or more.

export const GUARD = { warnGrowth: 1e2, minGamma: 0.9, minSteps: 50 };

export function bdiaHint(gamma, stepsList = [25, 50]) {
  const g = Number(gamma);
  const parts = stepsList.map((n) => `${n} steps ×${(g ** -n).toPrecision(3)}`);
  let level = "ok";
  if (g < GUARD.minGamma) level = "refused";
  else if (stepsList.some((n) => g ** -n > GUARD.warnGrowth)) level = "warning";
  const prefix = { ok: "Error growth γ^-N:", warning: "⚠ Error growth γ^-N:", refused: "⛔ Refused at ≥50 steps:" };
  return { level, text: `${prefix[level]} ${parts.join(", ")}` };
}

export function addBdiaHint(node) {
  const gamma = node.widgets?.find((w) => w.name === "gamma");
  if (!gamma) return;
  const box = document.createElement("div");
  box.className = "exact-inversion-bdia-hint";
  box.style.cssText = "font-size:11px;padding:2px 4px;";
  const widget = node.addDOMWidget("bdia_hint", "exact_inversion_hint", box, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 20,
    getMaxHeight: () => 40,
  });
  widget.serialize = false;
  const render = () => {
    const { level, text } = bdiaHint(gamma.value);
    box.textContent = text;
    box.dataset.level = level;
    box.style.color = { ok: "inherit", warning: "#fbbf24", refused: "#f87171" }[level];
  };
  const original = gamma.callback;
  gamma.callback = function (...args) {
    const out = original?.apply(this, args);
    render();
    return out;
  };
  node.exactInversionRenderHint = render;
  render();
}

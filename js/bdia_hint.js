// BDIA's gamma guard, shown while the user edits gamma: inversion amplifies its start-up error by
// gamma^-N (solvers/bdia.py, bdia_guard). The same thresholds as the server: a warning above 1e2, and
// refused above 1e6. The step count lives in the SIGMAS, not on this node, so the
// hint gives the verdict at 25 and 50 steps. Under gamma_rule "scaled" the gamma used over N steps is
// gamma^(25/N) (solvers/bdia.py, gamma_at).

import { onWidgetChange } from "./widgets.js";

export const GUARD = { warnGrowth: 1e2, refuseGrowth: 1e6 };
export const GAMMA_REFERENCE_STEPS = 25;

// The gamma used over a step count: gamma itself, or gamma^(25/steps) under the "scaled" rule.
export function gammaAt(gamma, rule, steps) {
  return rule === "scaled" ? Number(gamma) ** (GAMMA_REFERENCE_STEPS / steps) : Number(gamma);
}

// The guard's verdict at a step count: "ok", "warns" (growth above 1e2) or "refused" (above 1e6).
export function bdiaVerdict(gamma, steps, rule = "fixed") {
  const growth = gammaAt(gamma, rule, steps) ** -steps;
  if (growth > GUARD.refuseGrowth) return { verdict: "refused", growth };
  return { verdict: growth > GUARD.warnGrowth ? "warns" : "ok", growth };
}

export function bdiaHint(gamma, stepsList = [25, 50], rule = "fixed") {
  const verdicts = stepsList.map((steps) => ({ steps, ...bdiaVerdict(gamma, steps, rule) }));
  const parts = verdicts.map(({ steps, verdict, growth }) =>
    verdict === "refused" ? `${steps} steps: refused` : `${steps} steps: ×${growth.toPrecision(3)}` +
      (verdict === "warns" ? " (warns)" : ""));
  const level = verdicts.some((v) => v.verdict !== "ok") ? "warning" : "ok";
  return { level, verdicts, text: `Inversion error growth γ^-N · ${parts.join(" · ")}` };
}

export function addBdiaHint(node) {
  const gamma = node.widgets?.find((w) => w.name === "gamma");
  if (!gamma) return;
  const rule = node.widgets?.find((w) => w.name === "gamma_rule");
  const box = document.createElement("div");
  box.className = "exact-inversion-bdia-hint";
  box.style.cssText = "font-size:11px;padding:2px 4px;";
  const widget = node.addDOMWidget("bdia_hint", "exact_inversion_hint", box, {
    serialize: false,
    hideOnZoom: false,
    hideInPanel: true, // a view, not a parameter: 1.45's properties panel would list it empty
    getMinHeight: () => 20,
    getMaxHeight: () => 40,
  });
  widget.serialize = false;
  const render = () => {
    const { level, text } = bdiaHint(gamma.value, [25, 50], rule?.value ?? "fixed");
    box.textContent = text;
    box.dataset.level = level;
    box.style.color = level === "ok" ? "inherit" : "#fbbf24";
  };
  onWidgetChange(gamma, render);
  if (rule) onWidgetChange(rule, render);
  node.exactInversionRenderHint = render;
  render();
}

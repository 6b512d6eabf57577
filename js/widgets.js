// Helpers our widgets share: node sizing, and listening to another widget's changes.

// A workflow saved before our widgets existed restores its old node size; growing the node (never
// shrinking it) keeps the chips, the hint and the report visible. Not in the Nodes 2.0 (Vue) renderer: there
// a node grows to its content by itself, and a size set from script would fight that layout (the front
// end's own widget layout skips setSize in that mode too).
export function fitWidgets(node) {
  if (globalThis.LiteGraph?.vueNodesMode) return;
  const min = node.computeSize?.();
  if (min && node.size && node.size[1] < min[1]) node.setSize([Math.max(node.size[0], min[0]), min[1]]);
}

// Call `after` whenever the widget's value is changed in the UI (its callback), keeping its own callback.
export function onWidgetChange(widget, after) {
  const original = widget.callback;
  widget.callback = function (...args) {
    const out = original?.apply(this, args);
    after();
    return out;
  };
}

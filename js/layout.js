// Node sizing shared by our widgets. A workflow saved before our widgets existed restores its old node
// size; growing the node (never shrinking it) keeps the chips and the report visible.
export function fitWidgets(node) {
  const min = node.computeSize?.();
  if (min && node.size && node.size[1] < min[1]) node.setSize([Math.max(node.size[0], min[0]), min[1]]);
}

// Anchor-word picker: the source prompt's words shown as chips under the word input, so a click sets
// Blended Guidance's `anchor` (one word) or toggles a word in Attention Mask's `words` (a list).
import { fitWidgets, onWidgetChange } from "./widgets.js";
import { pickWord, promptWords, splitWordList } from "./words.js";

// node type -> which widget holds the prompt, which takes the word(s), and whether it is a list
export const PICKERS = {
  ExactInversion_BlendedGuidance: { prompt: "source_prompt", target: "anchor", multiple: false },
  ExactInversion_AttentionMask: { prompt: "prompt", target: "words", multiple: true },
};

const widgetNamed = (node, name) => node.widgets?.find((w) => w.name === name);

function setWidgetValue(node, widget, value) {
  widget.value = value;
  widget.callback?.(value, node.graph?.canvas, node);
  node.setDirtyCanvas?.(true, true);
}

// Rows of chips the words need at this node width (about 7 px a character, plus padding and gap).
function chipRows(words, width) {
  const usable = Math.max(80, width - 30);
  let rows = 1;
  let used = 0;
  for (const word of words) {
    const chip = word.length * 7 + 24;
    if (used > 0 && used + chip > usable) {
      rows += 1;
      used = 0;
    }
    used += chip;
  }
  return rows;
}

export function addWordPicker(node, spec) {
  let words = [];
  const box = document.createElement("div");
  box.className = "exact-inversion-word-picker";
  box.style.cssText = "display:flex;flex-wrap:wrap;gap:4px;align-content:flex-start;overflow:auto;" +
    "padding:2px 4px;font-size:12px;";
  const widget = node.addDOMWidget("word_picker", "exact_inversion_word_picker", box, {
    serialize: false,
    hideOnZoom: false,
    hideInPanel: true, // a view, not a parameter: 1.45's properties panel would list it empty
    getMinHeight: () => Math.min(96, 8 + 24 * chipRows(words, node.size?.[0] ?? 300)),
    getMaxHeight: () => 96,
  });
  widget.serialize = false;

  const render = () => {
    const promptWidget = widgetNamed(node, spec.prompt);
    const target = widgetNamed(node, spec.target);
    if (!promptWidget || !target) return;
    const chosen = new Set(
      (spec.multiple ? splitWordList(target.value) : [String(target.value ?? "").trim()]).map((w) => w.toLowerCase()),
    );
    words = promptWords(promptWidget.value);
    box.replaceChildren();
    if (!words.length) {
      const hint = document.createElement("span");
      hint.style.opacity = "0.6";
      hint.textContent = `Type the ${spec.prompt.replace("_", " ")} above, then click a word to set '${spec.target}'.`;
      box.appendChild(hint);
      return;
    }
    for (const word of words) {
      const chip = document.createElement("button");
      const on = chosen.has(word.toLowerCase());
      chip.type = "button";
      chip.className = "exact-inversion-chip" + (on ? " selected" : "");
      chip.dataset.word = word;
      chip.textContent = word;
      chip.title = spec.multiple ? `Add or remove '${word}' in ${spec.target}` : `Set ${spec.target} to '${word}'`;
      chip.style.cssText = "border-radius:10px;padding:1px 8px;cursor:pointer;border:1px solid #888;" +
        (on ? "background:#3b82f6;color:white;border-color:#3b82f6;" : "background:transparent;color:inherit;");
      chip.addEventListener("click", (event) => {
        event.stopPropagation();
        setWidgetValue(node, target, pickWord(target.value, word, spec.multiple));
        render();
      });
      box.appendChild(chip);
    }
    fitWidgets(node);
  };

  // Re-render when either text changes: typing in the prompt box, or the word input set by hand.
  for (const name of [spec.prompt, spec.target]) {
    const w = widgetNamed(node, name);
    if (!w) continue;
    onWidgetChange(w, render);
    w.element?.addEventListener?.("input", render);
    w.inputEl?.addEventListener?.("input", render);
  }
  node.exactInversionRenderPicker = render;
  render();
  return widget;
}

// The words of a prompt, as the anchor-word picker offers them. Pure functions: no ComfyUI imports.
// The server maps a word to its tokens (nodes/prompt_words.py), so the picker only needs plain words:
// weights such as "(dog:1.2)" and punctuation are dropped, numbers are skipped, each word appears once.

const WORD = /[\p{L}\p{N}][\p{L}\p{N}'_-]*/gu;

export function promptWords(prompt) {
  const seen = new Set();
  const words = [];
  for (const match of String(prompt ?? "").matchAll(WORD)) {
    const word = match[0];
    const key = word.toLowerCase();
    if (/^\d+$/.test(word) || seen.has(key)) continue;
    seen.add(key);
    words.push(word);
  }
  return words;
}

// "dog, collar" -> ["dog", "collar"]: the comma-separated list the Attention Mask node reads.
export function splitWordList(value) {
  return String(value ?? "").split(",").map((w) => w.trim()).filter(Boolean);
}

// Click on a chip: a single-word input takes the word; a list input toggles it.
export function pickWord(current, word, multiple) {
  if (!multiple) return word;
  const list = splitWordList(current);
  const at = list.findIndex((w) => w.toLowerCase() === word.toLowerCase());
  if (at >= 0) list.splice(at, 1);
  else list.push(word);
  return list.join(", ");
}

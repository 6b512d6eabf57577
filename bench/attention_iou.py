"""Do the toy model's per-word cross-attention maps find the object? IoU against the exact mask.

For each held-out toy image (``toyworld.held_out``), inside a real ComfyUI booted in-process: VAE-encode,
then DDIM-invert it with its own caption (cfg 1, ``--steps`` normal grid) on a MODEL whose text attention is
recorded (``nodes.attention_capture``: ``attn2`` everywhere plus the text-only ``attn1`` of the 32x32
blocks). Per word the maps are averaged over heads, layers and steps, upsampled to 32x32, min-max
normalised and thresholded at 0.5 (the AIDI / prompt-to-prompt recipe), then compared with the true mask:

* ``shape noun`` ("circle") and ``shape colour`` ("red") against the object's mask;
* ``background colour`` ("green") against the background (the mask's complement).

The baseline is an all-ones map (a mask that covers everything): its IoU is the region's area fraction.
A word's map is useful for blended guidance only if it beats that. Per resolution (32/16/8) the same
figures are printed for the layers at that resolution only.

    scripts/py bench/attention_iou.py                  # models/toy_model.safetensors, 48 images
    scripts/py bench/attention_iou.py --n 8 --json     # JSON records on stdout

This is a benchmark; tests/host/test_toy_attention.py asserts the headline on the shipped model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH)]

import edit_quality as EQ  # noqa: E402  (puts the repo on the path)
import torch  # noqa: E402

from toyworld import world as W  # noqa: E402

WORDS = ("shape noun", "shape colour", "background colour")


def capture_module() -> Any:
    """The pack's nodes.attention_capture, imported under the package name ComfyUI gave the pack."""
    import importlib

    return importlib.import_module(EQ.loader_module().__name__.rsplit(".", 1)[0] + ".attention_capture")


def word_tokens(clip: Any, shape: int, fg: int, bg: int) -> dict[str, int]:
    """Context position of each word of ``WORDS`` in the caption, from the CLIP object's tokenizer."""
    import importlib

    words = importlib.import_module(capture_module().__name__.rsplit(".", 1)[0] + ".prompt_words")
    prompt = W.caption(shape, fg, bg)
    found = {name: words.word_token_positions(clip, prompt, word) for name, word in
             (("shape noun", W.SHAPES[shape]), ("shape colour", W.COLOURS[fg]), ("background colour", W.COLOURS[bg]))}
    assert all(len(p) == 1 for p in found.values()), found  # each is one token, once, in a toy caption
    return {name: p[0] for name, p in found.items()}


def image_maps(nodes: dict[str, Any], model: Any, clip: Any, vae: Any, image: torch.Tensor,
               attrs: tuple[int, int, int], steps: int) -> dict[str, dict[int | str, torch.Tensor]]:
    """Per word, the normalised mean attention map (32, 32): over all layers ("all") and per resolution."""
    cap = capture_module()
    tokens = word_tokens(clip, *attrs)
    recorder = cap.AttentionRecorder(list(tokens.values()))
    patched = cap.patch_recorder(model, recorder)
    p = EQ.Pipeline(nodes, patched, clip, vae, torch.zeros(0), EQ.EvalCounter())
    sigmas = nodes["BasicScheduler"].execute(model=patched, scheduler="normal", steps=steps, denoise=1.0).result[0]
    sampler = nodes["ExactInversion_DDIMSolver"].execute(inversion_label="current", state_dtype="float64").result[0]
    nodes["ExactInversion_Invert"].execute(guider=p.guider(W.caption(*attrs), 1.0), sampler=sampler,
                                           sigmas=sigmas, latent=p.encode(image))
    size = tuple(image.shape[-2:])
    out: dict[str, dict[int | str, torch.Tensor]] = {}
    groups: dict[int | str, Any] = {"all": None}
    for res in sorted({int(r.maps.shape[-1]) for r in recorder.records}, reverse=True):
        groups[res] = (lambda r, res=res: int(r.maps.shape[-1]) == res)
    for key, select in groups.items():
        mean = cap.normalise(recorder.mean_map(size, select=select)[0])  # (T, H, W)
        for i, word in enumerate(tokens):
            out.setdefault(word, {})[key] = mean[i]
    return out


def measure(n: int, steps: int, model_path: Path | None = None) -> dict[str, Any]:
    """IoU per word (and per resolution) and the all-ones baseline, over ``held_out(n)``."""
    from testbed import comfyhost

    comfyhost.boot()
    import nodes as comfy_nodes

    nodes = comfy_nodes.NODE_CLASS_MAPPINGS
    cap = capture_module()
    model, clip, vae = EQ.load_model(nodes, model_path)
    batch = W.held_out(n)
    ious: dict[str, dict[int | str, list[float]]] = {w: {} for w in WORDS}
    base: dict[str, list[float]] = {w: [] for w in WORDS}
    with torch.inference_mode():
        for i in range(n):
            attrs = (int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i]))
            maps = image_maps(nodes, model, clip, vae, batch.images[i:i + 1], attrs, steps)
            obj = batch.hard[i, 0].bool()
            for word in WORDS:
                region = ~obj if word == "background colour" else obj
                for key, m in maps[word].items():
                    ious[word].setdefault(key, []).append(float(cap.iou(m >= 0.5, region)))
                base[word].append(float(region.float().mean()))
            print(f"  image {i + 1}/{n}", file=sys.stderr, flush=True)
    return {"n": n, "steps": steps,
            "words": {w: {"iou": {str(k): statistics.fmean(v) for k, v in ious[w].items()},
                          "all_ones_iou": statistics.fmean(base[w]),
                          "per_image_iou": ious[w]["all"]} for w in WORDS}}


def format_table(res: dict[str, Any]) -> str:
    keys = [k for k in next(iter(res["words"].values()))["iou"] if k != "all"]
    head = "| word | IoU (all layers) | all-ones IoU | " + " | ".join(f"{k}x{k} only" for k in keys) + " |"
    rows = [head, "|" + "---|" * (3 + len(keys))]
    for word, r in res["words"].items():
        rows.append(f"| {word} | {r['iou']['all']:.3f} | {r['all_ones_iou']:.3f} | "
                    + " | ".join(f"{r['iou'][k]:.3f}" for k in keys) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a toy export; default models/toy_model.safetensors")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = measure(args.n, args.steps, args.model)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"held-out images: {res['n']}, DDIM inversion at cfg 1, {res['steps']} steps; maps averaged over "
              "heads, layers and steps, thresholded at 0.5 after min-max scaling")
        print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the embedded toy model draw what its caption says, through ComfyUI's own samplers? Judged.

For each held-out caption (``toyworld.held_out``: 48 balanced captions) and each (sampler, scheduler),
inside a real ComfyUI booted in-process: *Load Embedded Toy Model* -> ``CLIPTextEncode`` (caption and
the empty negative) -> ``EmptyChromaRadianceLatentImage`` 32x32 -> ``KSampler`` (seed = caption index,
``--cfg``, ``--steps``) -> ``VAEDecode``. The deterministic judge (``toyworld.judge``) reads shape,
shape colour and background colour from each image; the table gives the fraction right per attribute and
all three together. scripts/train_toy.py's own evaluation (DDIM in float32, the same captions) is the
training-time view of the same thing; this is what a ComfyUI user gets.

    scripts/py bench/toy_generation.py                       # models/toy_model.safetensors
    scripts/py bench/toy_generation.py --samplers ddim:ddim_uniform euler:normal --json

Writes a PNG grid of the first sampler's images to ``--grid``. A benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH)]

import edit_quality as EQ  # noqa: E402  (puts the repo on the path)
import torch  # noqa: E402

from toyworld import judge as J  # noqa: E402
from toyworld import world as W  # noqa: E402

DEFAULT_SAMPLERS = ["ddim:ddim_uniform", "euler:normal", "dpmpp_2m:karras"]


def generate(nodes: dict[str, Any], model: Any, clip: Any, vae: Any, captions: list[str], sampler: str,
             scheduler: str, steps: int, cfg: float) -> torch.Tensor:
    """(N, 3, 32, 32) images in [-1, 1], one KSampler run per caption (seed = its index)."""
    negative = nodes["CLIPTextEncode"]().encode(clip, "")[0]
    empty = nodes["EmptyChromaRadianceLatentImage"].execute(width=W.RES, height=W.RES, batch_size=1).result[0]
    images = []
    for seed, caption in enumerate(captions):
        positive = nodes["CLIPTextEncode"]().encode(clip, caption)[0]
        latent = nodes["KSampler"]().sample(model, seed, steps, cfg, sampler, scheduler, positive, negative, empty,
                                            denoise=1.0)[0]
        images.append(nodes["VAEDecode"]().decode(vae, latent)[0].movedim(-1, 1).float() * 2 - 1)
    return torch.cat(images)


def save_grid(images: torch.Tensor, path: Path, cols: int = 8, scale: int = 3) -> None:
    from PIL import Image

    n, _, h, w = images.shape
    rows = (n + cols - 1) // cols
    grid = torch.ones(3, rows * (h + 2), cols * (w + 2))
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = W.to_unit(images[i])
    arr = (grid.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a toy export; default models/toy_model.safetensors")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, help="sampler:scheduler pairs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--grid", type=Path, default=EQ.REPO / "bench_output" / "toy_generation.png")
    args = ap.parse_args(argv)
    pairs = [s.split(":", 1) for s in args.samplers]
    if any(len(p) != 2 for p in pairs):
        ap.error("--samplers takes sampler:scheduler pairs, e.g. ddim:ddim_uniform")
    host = EQ.comfyhost.boot()
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    torch.set_num_threads(1)
    nodes = host["nodes"].NODE_CLASS_MAPPINGS
    held = W.held_out(args.n)
    records = []
    with torch.inference_mode():
        model, clip, vae = EQ.load_model(nodes, args.model)
        for k, (sampler, scheduler) in enumerate(pairs):
            print(f"{sampler}/{scheduler} ...", file=sys.stderr, flush=True)
            images = generate(nodes, model, clip, vae, held.captions, sampler, scheduler, args.steps, args.cfg)
            acc = J.accuracy(images, held.scene)
            records.append({"sampler": sampler, "scheduler": scheduler, "steps": args.steps, "cfg": args.cfg,
                            "n": args.n, **{key: round(float(v), 4) for key, v in acc.items()}})
            if k == 0:
                save_grid(images, args.grid)
    if args.json:
        print(json.dumps(records))
        return 0
    print(f"toy model generation through KSampler: toyworld.held_out({args.n}) captions, {args.steps} steps, "
          f"cfg {args.cfg:g}, seed = caption index; fraction the judge reads right")
    print("| sampler | scheduler | shape | shape colour | background colour | all three |")
    print("|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['sampler']} | {r['scheduler']} | {r['shape']:.3f} | {r['fg']:.3f} | {r['bg']:.3f} | "
              f"{r['all']:.3f} |")
    print(f"grid ({pairs[0][0]}/{pairs[0][1]}): {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

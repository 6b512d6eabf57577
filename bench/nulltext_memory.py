"""Peak memory of Null-text Inversion against plain sampling, on an SD1.5-sized UNet with random weights.

Each measurement runs in its own process (peak RSS only grows): the UNet is built from SD1.5's config in
ComfyUI's own classes (0.86 B parameters, seeded random weights, built in inference mode as ComfyUI's
executor loads models), then either

* ``plain``: stock ``SamplerCustomAdvanced`` with ``euler`` at cfg 7.5 (cond and uncond batched), or
* ``nti``: the pack's Null-text Inversion (DDIM, the same grid and cfg, one inner step per grid step),

and reports the process's peak RSS above its RSS with the model built (``peak_above_model_mb``). Null-text
inversion needs the activations of one backward pass on top of plain sampling; before editing/gradients.py it
also held a normal copy of every weight (``weights_mb`` more). CPU only; torch's allocator figures do not exist
there (``bench/`` will add a CUDA mode with issue 20's scale bench).

    scripts/py bench/nulltext_memory.py [--size 64] [--steps 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

#: SD1.5's UNet (ComfyUI's model_detection reads these from a checkpoint's keys)
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "context_dim": 768, "use_spatial_transformer": True, "use_linear_in_transformer": False, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}
MODES = ("plain", "nti")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def measure(mode: str, size: int, steps: int) -> dict[str, Any]:
    """One measurement in this process (the child)."""
    import torch

    from testbed import comfyhost

    torch.set_num_threads(2)
    nodes = comfyhost.boot()["nodes"].NODE_CLASS_MAPPINGS
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from testbed.helpers import ddim_sampler, guider, sigmas
    from testbed.tiny import init_weights

    t0 = time.perf_counter()
    with torch.inference_mode():
        cfg = comfy.supported_models.SD15(dict(SD15_UNET))
        cfg.set_inference_dtype(torch.float32, None)
        base = cfg.get_model({})
        init_weights(base.diffusion_model, 0)
        model = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=comfy.model_management.unet_offload_device())
        g = torch.Generator().manual_seed(1)
        pos = [[torch.randn(1, 77, 768, generator=g), {}]]
        neg = [[torch.randn(1, 77, 768, generator=g), {}]]
        cfg_guider = guider(nodes, model, pos, neg, 7.5)
        grid = sigmas(nodes, model, steps)
        latent = {"samples": torch.randn(1, 4, size, size, generator=g)}
    params = sum(p.numel() for p in base.diffusion_model.parameters())
    weights_mb = sum(p.numel() * p.element_size() for p in base.diffusion_model.parameters()) / 2**20
    built_s = time.perf_counter() - t0
    rss_model = rss_mb()
    t1 = time.perf_counter()
    with torch.inference_mode():
        if mode == "plain":
            noise = nodes["RandomNoise"].execute(noise_seed=0).result[0]
            sampler = nodes["KSamplerSelect"].execute(sampler_name="euler").result[0]
            nodes["SamplerCustomAdvanced"].execute(noise=noise, guider=cfg_guider, sampler=sampler, sigmas=grid,
                                                   latent_image=latent)
        else:
            nodes["ExactInversion_NullTextInversion"].execute(guider=cfg_guider, sampler=ddim_sampler(nodes, "next"),
                                                               sigmas=grid,
                                                               latent=latent, method="nti", inner_steps=1,
                                                               early_stop=0.0)
    return {"mode": mode, "latent": f"{size}x{size}", "steps": steps, "parameters": params,
            "weights_mb": round(weights_mb), "rss_with_model_mb": round(rss_model),
            "peak_above_model_mb": round(peak_mb() - rss_model), "run_s": round(time.perf_counter() - t1, 1),
            "build_s": round(built_s, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="latent side (64: a 512x512 image)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print only the JSON list of records")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.size, args.steps)))
        return 0
    records = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--size", str(args.size), "--steps",
                              str(args.steps)], capture_output=True, text=True, check=True)
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not args.json:
            print(records[-1], file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    plain = next(r for r in records if r["mode"] == "plain")
    print("| mode | weights MB | peak above the model, MB | × plain's peak (model included) | run s |")
    print("|---|---|---|---|---|")
    for r in records:
        ratio = (r["rss_with_model_mb"] + r["peak_above_model_mb"]) / \
            (plain["rss_with_model_mb"] + plain["peak_above_model_mb"])
        print(f"| {r['mode']} | {r['weights_mb']} | {r['peak_above_model_mb']} | {ratio:.2f} | {r['run_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

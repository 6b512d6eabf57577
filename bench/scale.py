"""The pack at real size: full-size UNets with random weights, timed and measured against stock sampling.

Each run builds one model from ComfyUI's own configs and classes (seeded random weights in the real shapes,
built in inference mode as ComfyUI's executor loads models) and runs one *mode* in its own process, so the peak
memory of one mode is not hidden by another's:

* ``stock``: stock ``SamplerCustomAdvanced`` with ``euler`` (the baseline for time and memory);
* ``ddim``, ``edict``, ``bdia``, ``aidi`` (the step-heavy one: fixed-point iterations per step): the pack's Invert
  then Edit with the same guider (a reconstruction), the state float64 (``auto``);
* ``nti``: the pack's Null-text Inversion (DDIM, one inner step per grid step).

SD1.5 and SDXL at cfg 7.5 (cond and uncond batched, as ComfyUI does), the Flux slice at cfg 1 (guidance 3.5).
Per mode: model evaluations (a counting UNet wrapper), seconds per evaluation and its ratio to ``stock``'s, the
round trip's relative error (latent space, exact solvers: the float64 state against a bf16/fp16/float32 model),
and the peak memory above the memory with the model built. Every mode first runs one untimed stock evaluation
(the kernels for these shapes are set up), then the peak is reset: process RSS on the CPU (VmHWM), and on CUDA
torch's allocator peak (``max_memory_allocated``) as well.

    scripts/py bench/scale.py                                   # SD1.5 UNet, bf16, 64x64, 2 steps, every mode
    scripts/py bench/scale.py --model sdxl --size 64 --json     # SDXL UNet; one JSON list of records
    scripts/py bench/scale.py --device cuda --dtype fp16        # on a GPU (bench/gpu.sh runs the GPU set)

Models (``MODELS``): ``sd15`` (0.86 B), ``sdxl`` (2.6 B), ``flux-slice`` (Flux's width, 2 double + 4 single
blocks of its 19 + 38: the weights of all 12 B do not fit this machine's memory; time per evaluation scales with
the block count). This is a benchmark: nothing asserts.
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
sys.path[:0] = [str(REPO), str(REPO / "bench")]

#: SD1.5's UNet (ComfyUI's model_detection reads these from a checkpoint's keys)
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "context_dim": 768, "use_spatial_transformer": True, "use_linear_in_transformer": False, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}
#: SDXL's UNet (model_detection's SDXL entry)
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
#: Flux dev's width (hidden 3072, 24 heads, T5 context 4096) with 2 of its 19 double and 4 of its 38 single blocks
FLUX_SLICE = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 2, "depth_single_blocks": 4,
    "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": True, "patch_size": 2,
}
MODELS = ("sd15", "sdxl", "flux-slice")
MODES = ("stock", "ddim", "edict", "bdia", "aidi", "nti")
#: not in the default set: the cond/uncond batch-layout question (needs a GPU to put memory under pressure)
LAYOUT = "layout"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: cfg per model: what users run (Flux dev is guidance-distilled: cfg 1, its guidance 3.5 in the conditioning)
CFG = {"sd15": 7.5, "sdxl": 7.5, "flux-slice": 1.0}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """The process's peak RSS since the last ``reset_peak_rss`` (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(name: str, dtype: Any, device: Any) -> tuple[Any, list, list, int]:
    """ModelPatcher, positive and negative conditioning, latent channels: seeded random weights, real shapes."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from testbed.tiny import flux_config, init_weights

    g = torch.Generator().manual_seed(1)
    if name == "sd15":
        config, context, extra, channels = comfy.supported_models.SD15(dict(SD15_UNET)), 768, {}, 4
    elif name == "sdxl":
        config, context, channels = comfy.supported_models.SDXL(dict(SDXL_UNET)), 2048, 4
        extra = {"pooled_output": torch.randn(1, 1280, generator=g)}
    else:
        config, context, channels = comfy.supported_models.Flux(flux_config(FLUX_SLICE)), 4096, 16
        extra = {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}
    config.set_inference_dtype(dtype, None)
    with torch.inference_mode():
        base = config.get_model({}, device=None)
        init_weights(base.diffusion_model, 0)
        for pname, p in base.diffusion_model.named_parameters():  # RMSNorm gains: at zero attention is uniform
            if pname.endswith(".scale"):
                p.fill_(1.0)
    model = comfy.model_patcher.ModelPatcher(base, load_device=device,
                                             offload_device=comfy.model_management.unet_offload_device())
    pos = [[torch.randn(1, 77, context, generator=g), dict(extra)]]
    neg = [[torch.randn(1, 77, context, generator=g), dict(extra)]]
    return model, pos, neg, channels


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process (the child)."""
    import torch

    from testbed import comfyhost

    nodes = comfyhost.boot()["nodes"].NODE_CLASS_MAPPINGS
    torch.set_num_threads(args.threads)  # after the boot, which sets one thread for the tiny models
    import comfy.model_management
    from overhead import EvalCounter

    from testbed.helpers import guider, sigmas
    from testbed.solver_nodes import relative, solver_sampler

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    model, pos, neg, channels = build(args.model, getattr(torch, DTYPES[args.dtype]), device)
    counter = EvalCounter()
    model.set_model_unet_function_wrapper(counter)
    weights = list(model.model.diffusion_model.parameters())
    record: dict[str, Any] = {
        "model": args.model, "mode": args.mode, "dtype": args.dtype, "device": args.device,
        "latent": f"{channels}x{args.size}x{args.size}", "steps": args.steps, "cfg": CFG[args.model],
        "parameters": sum(p.numel() for p in weights),
        "weights_mb": round(sum(p.numel() * p.element_size() for p in weights) / 2**20),
        "build_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
    }
    g = guider(nodes, model, pos, neg, CFG[args.model])
    grid = sigmas(nodes, model, args.steps)
    latent = {"samples": torch.randn(1, channels, args.size, args.size, generator=torch.Generator().manual_seed(2))}
    if cuda:  # the model on the GPU first, so the peak counts what sampling adds
        comfy.model_management.load_models_gpu([model])
        torch.cuda.synchronize()
        record["allocated_with_model_mb"] = round(torch.cuda.memory_allocated() / 2**20)
    with torch.inference_mode():  # one stock evaluation first: the kernels for these shapes are set up, untimed
        nodes["SamplerCustomAdvanced"].execute(
            noise=nodes["RandomNoise"].execute(noise_seed=0).result[0], guider=g,
            sampler=nodes["KSamplerSelect"].execute(sampler_name="euler").result[0],
            sigmas=sigmas(nodes, model, 1), latent_image=latent)
    counter.calls, counter.batches = 0, []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_model = rss_mb()
    reset_peak_rss()
    t1 = time.perf_counter()
    with torch.inference_mode():  # as ComfyUI's executor runs nodes (Null-text lifts it for its gradients)
        if args.mode == LAYOUT:
            record.update(batch_layout(nodes, model, g, grid, latent, counter))
        elif args.mode == "stock":
            noise = nodes["RandomNoise"].execute(noise_seed=0).result[0]
            sampler = nodes["KSamplerSelect"].execute(sampler_name="euler").result[0]
            nodes["SamplerCustomAdvanced"].execute(noise=noise, guider=g, sampler=sampler, sigmas=grid,
                                                   latent_image=latent)
        elif args.mode == "nti":
            nodes["ExactInversion_NullTextInversion"].execute(
                guider=g, sampler=solver_sampler(nodes, "ddim", inversion_label="next"), sigmas=grid,
                latent=latent, method="nti", inner_steps=1, early_stop=0.0)
        else:
            inversion, _ = nodes["ExactInversion_Invert"].execute(
                guider=g, sampler=solver_sampler(nodes, args.mode), sigmas=grid, latent=latent).result
            rec = nodes["ExactInversion_Edit"].execute(guider=g, inversion=inversion).result[0]
            record["roundtrip_relative"] = relative(rec["samples"], latent["samples"])
    if cuda:
        torch.cuda.synchronize()
    run_s = time.perf_counter() - t1
    record.update(evaluations=counter.calls, run_s=round(run_s, 1),
                  s_per_evaluation=round(run_s / max(counter.calls, 1), 3),
                  rss_with_model_mb=round(rss_model), peak_rss_above_model_mb=round(peak_rss_mb() - rss_model))
    if cuda:
        record["peak_allocated_above_model_mb"] = round(torch.cuda.max_memory_allocated() / 2**20
                                                        - record["allocated_with_model_mb"])
    return record


def batch_layout(nodes: dict, model: Any, g: Any, grid: Any, latent: dict, counter: Any) -> dict[str, Any]:
    """Does ComfyUI's memory-dependent batching change between Invert and Edit, and does it matter?

    ComfyUI batches cond and uncond into one model call when ``memory_required(batch) * 1.5`` fits the free
    memory, else it calls them one by one. Inverting with free memory and editing with a tensor holding all but
    2.2x one call's estimate makes the Edit's calls split (on CUDA); the record gives the batch sizes the model
    saw and the EDICT round trip with and without the split. On the CPU nothing is held (the free memory is the
    machine's): only the unsplit figures are measured.
    """
    import comfy.model_management
    import torch

    from testbed.solver_nodes import relative, solver_sampler

    inversion, _ = nodes["ExactInversion_Invert"].execute(guider=g, sampler=solver_sampler(nodes, "edict"),
                                                          sigmas=grid, latent=latent).result
    invert_batches = sorted(set(counter.batches))
    counter.batches.clear()
    rec = nodes["ExactInversion_Edit"].execute(guider=g, inversion=inversion).result[0]["samples"]
    out = {"invert_batches": invert_batches, "edit_batches": sorted(set(counter.batches)),
           "roundtrip_relative": relative(rec, latent["samples"])}
    device = model.load_device
    if torch.device(device).type != "cuda":
        return out
    shape = [1, *latent["samples"].shape[1:]]
    one_call = model.model.memory_required(shape)
    hold = int(comfy.model_management.get_free_memory(device) - 2.2 * one_call)
    held = torch.empty(max(hold, 0), dtype=torch.uint8, device=device)
    counter.batches.clear()
    rec = nodes["ExactInversion_Edit"].execute(guider=g, inversion=inversion).result[0]["samples"]
    del held
    out.update(pressure_edit_batches=sorted(set(counter.batches)), held_mb=round(hold / 2**20),
               pressure_roundtrip_relative=relative(rec, latent["samples"]))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=MODELS, default="sd15")
    ap.add_argument("--size", type=int, default=64, help="latent side (SD1.5 64: 512 px; SDXL 128: 1024 px)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="the model's weights and compute")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--modes", nargs="+", choices=[*MODES, LAYOUT], default=list(MODES),
                    help=f"what to run, each in its own process; '{LAYOUT}': the cond/uncond batch layout")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print only the JSON list of records")
    ap.add_argument("--mode", choices=[*MODES, LAYOUT], help=argparse.SUPPRESS)  # the child's one mode
    return ap.parse_args(argv)


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: each mode against stock (time per evaluation, peak memory with the model included)."""
    stock = next((r for r in records if r["mode"] == "stock"), None)
    cuda = any("peak_allocated_above_model_mb" in r for r in records)
    head = "| mode | evaluations | s / evaluation | × stock's | round trip (relative) | peak RSS above model, MB " \
           "| peak, × stock's |" + (" GPU peak above model, MB | GPU peak, × stock's |" if cuda else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def ratio(r: dict[str, Any], key: str, base: str) -> str:
        if stock is None:
            return "–"
        return f"{(r[base] + r[key]) / (stock[base] + stock[key]):.2f}"

    for r in records:
        speed = f"{r['s_per_evaluation'] / stock['s_per_evaluation']:.2f}" if stock else "–"
        err = f"{r['roundtrip_relative']:.1e}" if "roundtrip_relative" in r else "–"
        row = (f"| {r['mode']} | {r['evaluations']} | {r['s_per_evaluation']:.2f} | {speed} | {err} | "
               f"{r['peak_rss_above_model_mb']:,} | {ratio(r, 'peak_rss_above_model_mb', 'rss_with_model_mb')} |")
        if cuda:
            row += (f" {r['peak_allocated_above_model_mb']:,} | "
                    f"{ratio(r, 'peak_allocated_above_model_mb', 'allocated_with_model_mb')} |")
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode:
        print(json.dumps(measure(args)))
        return 0
    records = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--size", str(args.size),
               "--dtype", args.dtype, "--steps", str(args.steps), "--device", args.device,
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"scale: mode {mode} failed (exit {out.returncode})")
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    layout = [r for r in records if r["mode"] == LAYOUT]
    records = [r for r in records if r["mode"] != LAYOUT]
    if not records:
        print(json.dumps(layout, indent=1))
        return 0
    first = records[0]
    print(f"{first['model']} ({first['parameters'] / 1e9:.2f} B parameters, {first['weights_mb']:,} MB of "
          f"{first['dtype']} weights), latent {first['latent']}, {first['steps']} steps, cfg {first['cfg']:g}, "
          f"{first['device']}, {first['threads']} threads")
    print(table(records))
    for r in layout:
        print(f"batch layout: {json.dumps({k: v for k, v in r.items() if 'batch' in k or 'roundtrip' in k})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

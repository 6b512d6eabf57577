"""The scale measurements on a CUDA GPU, in one command: what this project's CPU-only CI cannot settle.

    scripts/py bench/gpu.py                       # writes bench_output/gpu/*.json and gpu.md
    scripts/py bench/gpu.py --dtype bf16 --out /tmp/gpu

For SD1.5's UNet at 64x64 and SDXL's at 128x128 (random weights in the real shapes, ``bench/scale.py``), fp16 by
default, on ``cuda``: every mode of ``bench/scale.py`` (time per evaluation against stock sampling, the exact
solvers' round trip with an fp16 model and a float64 state, torch's allocator peak and the process RSS, Null-text
Inversion's peak against plain sampling) plus the batch-layout question (``scale.batch_layout``: does ComfyUI's
memory-dependent cond/uncond batching change between Invert and Edit, and what does it do to exactness).
Needs a CUDA build of torch and a GPU; it refuses to run without one. This is a benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]

from scale import LAYOUT, MODES, table  # noqa: E402

#: (model, latent side): the sizes users run
RUNS = (("sd15", 64), ("sdxl", 128))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "bench_output" / "gpu")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of this script
    ap.add_argument("--size-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu.py: no CUDA device (torch.cuda.is_available() is False); run bench/scale.py on the CPU",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for model, size in RUNS:
        side = max(8, int(size * args.size_scale))
        cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--model", model, "--size", str(side),
               "--dtype", args.dtype, "--steps", str(args.steps), "--device", args.device, "--json",
               "--modes", *MODES, LAYOUT]
        print(" ".join(cmd), file=sys.stderr, flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        records = json.loads(out.stdout)
        (args.out / f"{model}.json").write_text(json.dumps(records, indent=1))
        runs = [r for r in records if r["mode"] != LAYOUT]
        layout = [r for r in records if r["mode"] == LAYOUT]
        first = runs[0]
        report += [f"## {model}, {first['dtype']}, latent {first['latent']}, {first['steps']} steps, "
                   f"cfg {first['cfg']:g}, {first['device']}", "", table(runs), "",
                   "batch layout: " + json.dumps(layout), ""]
    (args.out / "gpu.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

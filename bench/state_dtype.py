"""What a float32 solver state costs exact inversion: the round trip on the embedded model, float64 vs float32.

A device without float64 (Apple MPS) runs the solver state in float32 (``solvers.precision``). Exact solvers
then reconstruct to float32 rounding *amplified by the model*: the network sees inputs that differ by rounding
between inversion and sampling, and EDICT's and BDIA's recursions carry the difference. This measures it on the
embedded toy model (trained, 32x32), through ComfyUI's nodes, for the held-out images at each cfg.

    scripts/py bench/state_dtype.py                    # 8 images, 25 steps, cfg 1 and 4, DDIM, EDICT, BDIA
    scripts/py bench/state_dtype.py --json             # one JSON list of records

Fields: ``relative`` (||rec - x|| / ||x|| in latent space, mean over images), ``max_abs`` (worst pixel over
images). This is a benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import torch  # noqa: E402
from edit_quality import Pipeline, boot_nodes, load_model  # noqa: E402
from overhead import EvalCounter  # noqa: E402

from testbed.solver_nodes import SOLVER_NODES, relative  # noqa: E402
from toyworld import world as W  # noqa: E402

METHODS = ("ddim", "edict", "bdia")
DTYPES = ("float64", "float32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="held-out images (toyworld.held_out(n))")
    ap.add_argument("--steps", type=int, default=25, help="grid steps (normal scheduler)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 4.0], help="CFG of inversion and reconstruction")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    return ap.parse_args(argv)


def measure(p: Pipeline, method: str, dtype: str, cfg: float, batch: W.Batch) -> dict[str, Any]:
    node, inputs = SOLVER_NODES[method]
    sampler = p.nodes[node].execute(**{**inputs, "state_dtype": dtype}).result[0]
    rel, worst = [], 0.0
    for i in range(len(batch)):
        latent = p.encode(batch.images[i:i + 1])
        g = p.guider(W.caption(int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i])), cfg)
        inversion, _ = p.nodes["ExactInversion_Invert"].execute(guider=g, sampler=sampler, sigmas=p.sigmas,
                                                                  latent=latent).result
        rec = p.nodes["ExactInversion_Edit"].execute(guider=g, inversion=inversion).result[0]["samples"]
        rel.append(relative(rec, latent["samples"]))
        worst = max(worst, float((rec.double() - latent["samples"].double()).abs().max()))
    return {"method": method, "state_dtype": dtype, "cfg": cfg, "steps": len(p.sigmas) - 1, "n": len(batch),
            "relative": statistics.fmean(rel), "max_abs": worst}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nodes = boot_nodes()
    batch = W.held_out(args.n)
    records = []
    with torch.inference_mode():
        model, clip, vae = load_model(nodes, None)
        sig = nodes["BasicScheduler"].execute(model=model, scheduler="normal", steps=args.steps, denoise=1.0).result[0]
        p = Pipeline(nodes, model, clip, vae, sig, EvalCounter())
        for cfg in args.cfg:
            for method in args.methods:
                for dtype in DTYPES:
                    records.append(measure(p, method, dtype, cfg, batch))
                    print(f"  {records[-1]}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(records))
        return 0
    print(f"round trip on the embedded model, toyworld.held_out({args.n}), {args.steps} steps (normal), "
          "the solver state in float64 vs float32 (the model is float32 either way)")
    print("| method | cfg | float64 relative | float32 relative | float32 max-abs |")
    print("|---|---|---|---|---|")
    by = {(r["method"], r["cfg"], r["state_dtype"]): r for r in records}
    for cfg in args.cfg:
        for method in args.methods:
            r64, r32 = by[(method, cfg, "float64")], by[(method, cfg, "float32")]
            print(f"| {method} | {cfg:g} | {r64['relative']:.1e} | {r32['relative']:.1e} | {r32['max_abs']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

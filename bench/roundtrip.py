"""Round-trip benchmark on the closed-form Gaussian-mixture test bed (no model, no GPU, no ComfyUI).

For each method x steps x CFG scale: invert the test-bed batch, sample it back with the same
denoiser, and report the relative round-trip error ||sample(invert(x)) - x|| / ||x||, the model
evaluations (counted by wrapping the denoiser) and the wall time.

    scripts/py bench/roundtrip.py                      # table: eps, steps 10 20 50, cfg 1 3 7.5
    scripts/py bench/roundtrip.py --param flow --steps 20 --cfg 1 --json

With --json only a JSON list (one record per method and case) is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import torch  # noqa: E402

from solvers import AIDI, BDIA, BELM, DDIM, EDICT, EES25, EES27, FireFlow, Rex, RFSolver, Schedule, Solver  # noqa: E402
from testbed import gmm as G  # noqa: E402

METHODS: dict[str, Callable[[str], Solver]] = {
    "ddim": lambda dt: DDIM(state_dtype=dt),
    "edict": lambda dt: EDICT(state_dtype=dt),
    "bdia": lambda dt: BDIA(state_dtype=dt),
    "aidi_e": lambda dt: AIDI("E", state_dtype=dt),
    "aidi_a": lambda dt: AIDI("A", state_dtype=dt),
    "ees25": lambda dt: EES25(state_dtype=dt),
    "ees27": lambda dt: EES27(state_dtype=dt),
    "belm": lambda dt: BELM(state_dtype=dt),
    "rex_euler": lambda dt: Rex("euler", state_dtype=dt),
    "rex_rk4": lambda dt: Rex("rk4", state_dtype=dt),
    "rf_solver": lambda dt: RFSolver(state_dtype=dt),
    "fireflow": lambda dt: FireFlow(state_dtype=dt),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--param", choices=["eps", "v", "flow"], default="eps", help="model parameterisation")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="grid steps")
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 7.5], help="CFG scales")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float64", help="solver state and model dtype")
    ap.add_argument("--seed", type=int, default=0, help="test-bed seed (mixture and data)")
    ap.add_argument("--dim", type=int, default=4, help="data dimension")
    ap.add_argument("--batch", type=int, default=8, help="samples per batch")
    ap.add_argument(
        "--grid",
        choices=["comfy", "lambda"],
        default="comfy",
        help="comfy: ComfyUI-like, ends at 0 (vp Karras from 14.6; flow shifted from 1); "
        "lambda: uniform in log-SNR on [-4, 4]",
    )
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.steps):
        ap.error("--steps must be >= 1")
    return args


def run_case(method: str, bed: G.Bed, args: argparse.Namespace, steps: int, cfg: float) -> dict[str, Any]:
    """Invert and sample back one case; count model calls per direction."""
    dtype = DTYPES[args.dtype]
    grid = G.comfy_grid(args.param, steps) if args.grid == "comfy" else G.lambda_grid(args.param, steps)
    sched = Schedule.for_prediction(args.param)
    den = G.CountingDenoiser(bed.denoiser(args.param, cfg, model_dtype=dtype))
    x0 = bed.clean(args.param, grid).to(dtype)
    solver = METHODS[method](args.dtype)
    t0 = time.perf_counter()
    latents = solver.invert(den, x0, grid, sched)
    nfe_invert = den.calls
    out = solver.sample(den, latents, grid, sched)
    wall = time.perf_counter() - t0
    record: dict[str, Any] = {
        "method": method,
        "param": args.param,
        "steps": steps,
        "cfg": cfg,
        "dtype": args.dtype,
        "grid": args.grid,
        "seed": args.seed,
        "dim": args.dim,
        "roundtrip_rel_error": G.rel_error(out, x0),
        "nfe": den.calls,
        "nfe_invert": nfe_invert,
        "nfe_sample": den.calls - nfe_invert,
        "wall_s": wall,
        "solver_params": solver.params(),
    }
    if isinstance(solver, AIDI):
        record["max_residual"] = max(st["residual"] for st in latents.stats)
    return record


def format_table(records: list[dict[str, Any]]) -> str:
    head = f"{'method':<10} {'steps':>5} {'cfg':>5} {'roundtrip err':>13} {'nfe inv+smp':>12} {'wall ms':>8}"
    lines = [head, "-" * len(head)]
    for r in records:
        nfe = f"{r['nfe_invert']}+{r['nfe_sample']}"
        lines.append(
            f"{r['method']:<10} {r['steps']:>5} {r['cfg']:>5g} {r['roundtrip_rel_error']:>13.2e} "
            f"{nfe:>12} {1e3 * r['wall_s']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    bed = G.Bed(dim=args.dim, batch=args.batch, seed=args.seed)
    records = [
        run_case(method, bed, args, steps, cfg) for steps in args.steps for cfg in args.cfg for method in args.methods
    ]
    if args.json:
        print(json.dumps(records))
    else:
        print(
            f"round trip on the GMM test bed: param={args.param} grid={args.grid} dtype={args.dtype} "
            f"dim={args.dim} batch={args.batch} seed={args.seed}"
        )
        print(format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

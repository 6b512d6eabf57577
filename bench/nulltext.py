"""Reconstruction and edits at high cfg on the embedded toy model: DDIM inversion, NPI, NTI, bias correction.

Inside a real ComfyUI booted in-process, through the pack's own nodes, on ``toyworld.held_out`` images.
Every method inverts with the source caption and the empty negative at ``--cfg`` (7.5, the null-text
paper's) on the same ``--steps`` grid, then:

* reconstructs: Edit with the same cfg-7.5 source guider; ``recon_psnr`` against the source image (dB,
  [-1, 1] images, peak-to-peak 2);
* edits (targets and judging as bench/edit_quality.py) at the same cfg, two ways (``edit_mode``): ``plain``,
  a CFGGuider of the target caption; ``p2p``, prompt-to-prompt as the NTI paper edits (the Blended Guidance
  Guider with blended guidance off: the source's cross-attention for the first 0.6 of the steps; its
  reconstruction branch at the same cfg). ``edit_success`` is whether the changed attribute reads as the
  target colour; ``background_psnr`` is PSNR over the region the edit must keep (``kept_region``: outside
  the object for the shape-colour edit, inside it for the background edit).

Methods (``method`` in the records):

* ``ddim``: DDIM inversion at w = 7.5 (inversion label 'next', as the paper's pivot), the baseline;
* ``npi``: negative-prompt inversion with that DDIM (no optimisation);
* ``nti``: null-text inversion, the paper's settings (the node's defaults: 10 inner steps, lr 0.01, early
  stop 1e-5 growing to 1e-3 at the last step);
* ``nti_fixed10``: the same without early stopping (always 10 inner steps);
* ``nti_toy``: the settings measured for the embedded model (``TOY_NTI``: lr 0.1, early stop 2e-4
  *tightening* towards the last step), which the toy workflows use; ``nti_toy_fixed10``: the same lr
  without early stopping (see bench/README.md for why the paper's early stop does not fit this model);
* ``bias_correction``: latent-TOP's text + noise bias, 20 starts, the paper's NTI settings otherwise;
  ``bias_correction_toy``: with ``TOY_NTI``;
* ``edict``, ``bdia``: exact solvers inverted at w = 7.5 itself (their own w), as a reference.

Costs, per image, inversion + reconstruction (``recon_*``; the table's cost columns) or inversion + one
edit (the records' ``forward_passes``, ``backward_passes``, ``wall_s``): a pass is one model evaluation of
one conditioning for the batch (a batched cond + uncond call counts 2), counted by a UNet wrapper on a
clone of the model; backward passes are the inversion node's own count (tests/host/test_null_text.py
checks it against a module hook). Wall time on one torch thread, the counting wrapper on.

    scripts/py bench/nulltext.py                       # 8 images, 25 steps, every method
    scripts/py bench/nulltext.py --n 2 --methods ddim nti_toy nti_toy_fixed10
    scripts/py bench/nulltext.py --json > nulltext.json   # one JSON list of records on stdout
    scripts/py bench/nulltext.py --save nulltext.json     # the table, and the JSON written to a file

Progress goes to stderr. A benchmark: nothing asserts (tests/host/test_null_text.py does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH)]

import edit_quality as EQ  # noqa: E402  (puts the repo on the path)
import torch  # noqa: E402

from toyworld import judge as J  # noqa: E402
from toyworld import world as W  # noqa: E402

NULL_TEXT = "ExactInversion_NullTextInversion"
GUIDER = "ExactInversion_BlendedGuidance"
EDIT_MODES = ("plain", "p2p")
DDIM_NEXT = ("ExactInversion_DDIMSolver", {"inversion_label": "next", "state_dtype": "float64"})
#: method -> (solver node and inputs, Null-text Inversion inputs or None for a plain Invert)
#: the embedded model's NTI settings (bench/README.md): lr 0.1, early stop 2e-4 tightening towards the last step
TOY_NTI: dict[str, Any] = {"learning_rate": 0.1, "early_stop": 2e-4, "early_stop_schedule": "tightening"}
METHODS: dict[str, tuple[tuple[str, dict[str, Any]], dict[str, Any] | None]] = {
    "ddim": (DDIM_NEXT, None),
    "npi": (DDIM_NEXT, {"method": "npi"}),
    "nti": (DDIM_NEXT, {"method": "nti"}),
    "nti_fixed10": (DDIM_NEXT, {"method": "nti", "early_stop": 0.0}),
    "nti_toy": (DDIM_NEXT, {"method": "nti", **TOY_NTI}),
    "nti_toy_fixed10": (DDIM_NEXT, {"method": "nti", **TOY_NTI, "early_stop": 0.0}),
    "bias_correction": (DDIM_NEXT, {"method": "bias_correction"}),
    "bias_correction_toy": (DDIM_NEXT, {"method": "bias_correction", **TOY_NTI}),
    "edict": (("ExactInversion_EDICTSolver", {"p": 0.93, "p_rule": "scaled", "state_dtype": "float64"}), None),
    "bdia": (("ExactInversion_BDIASolver", {"gamma": 0.8, "state_dtype": "float64"}), None),
}
EDITS = EQ.EDITS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="toy model file (default: the shipped one)")
    ap.add_argument("--n", type=int, default=8, help="held-out images")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=7.5, help="cfg of inversion, reconstruction and edits")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--edit-modes", nargs="+", default=list(EDIT_MODES), choices=list(EDIT_MODES))
    ap.add_argument("--json", action="store_true", help="print only the JSON list of records on stdout")
    ap.add_argument("--save", type=Path, default=None, help="also write the JSON list to this file")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Passes:
    """Forward passes per conditioning row, on a clone of the model (the node's counting is not trusted here)."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        self.rows += len(args["cond_or_uncond"])
        return apply_model(args["input"], args["timestep"], **args["c"])


def invert(p: EQ.Pipeline, method: str, g_src: Any, latent: dict, args: argparse.Namespace) -> Any:
    (node, inputs), null_text = METHODS[method]
    sampler = p.nodes[node].execute(**inputs).result[0]
    if null_text is None:
        return p.nodes["ExactInversion_Invert"].execute(guider=g_src, sampler=sampler, sigmas=p.sigmas,
                                                        latent=latent).result[0]
    return p.nodes[NULL_TEXT].execute(guider=g_src, sampler=sampler, sigmas=p.sigmas, latent=latent,
                                      **null_text).result[0]


def measured(p: EQ.Pipeline, counter: Passes, fn: Any) -> tuple[Any, int, float]:
    before, t0 = counter.rows, time.perf_counter()
    out = fn()
    return out, counter.rows - before, time.perf_counter() - t0


def edit_guider(p: EQ.Pipeline, mode: str, source: str, target: str, anchor: str, role: str, cfg: float) -> Any:
    """``plain``: a CFGGuider of the target caption; ``p2p``: prompt-to-prompt (the Blended Guidance Guider with
    blended guidance off: the source's cross-attention for the first 0.6 of the steps), as the NTI paper edits.
    Both branches get the inversion's per-step embeddings from Edit."""
    if mode == "plain":
        return p.guider(target, cfg)
    return p.nodes[GUIDER].execute(model=p.model, source_positive=p.cond(source), target_positive=p.cond(target),
                                   negative=p.cond(""), clip=p.clip, source_prompt=source, target_prompt=target,
                                   anchor=anchor, anchor_role=role, cfg=cfg, target_cfg=cfg,
                                   blended_guidance=False, local_blend=False).result[0]


def run_method(p: EQ.Pipeline, counter: Passes, method: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    batch = W.held_out(args.n)
    per: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i in range(args.n):
        attrs = (int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i]))
        image, mask = batch.images[i:i + 1], batch.hard[i:i + 1]
        source = W.caption(*attrs)
        g_src = p.guider(source, args.cfg)
        inv, inv_fw, inv_s = measured(p, counter, lambda g=g_src, im=image: invert(p, method, g, p.encode(im), args))
        backward = int((inv.meta.get("null_text") or {}).get("backward_passes", 0))
        rec, rec_fw, rec_s = measured(p, counter, lambda g=g_src, v=inv: p.nodes["ExactInversion_Edit"].execute(
            guider=g, inversion=v).result[0])
        recon_psnr = float(J.psnr(p.decode(rec), image)[0])
        for edit in EDITS:
            target = EQ.edit_target(edit, *attrs)
            role = "edit region" if edit == "shape_colour" else "keep region"
            for mode in args.edit_modes:
                g_tgt = edit_guider(p, mode, source, W.caption(*target), W.COLOURS[attrs[1]], role, args.cfg)
                out, fw, secs = measured(p, counter, lambda g=g_tgt, v=inv: p.nodes["ExactInversion_Edit"].execute(
                    guider=g, inversion=v).result[0])
                s = EQ.score_edit(edit, p.decode(out), image, mask, target)
                per.setdefault((edit, mode), []).append({
                    "recon_psnr": recon_psnr, "edit_success": float(s["edit_success"]),
                    "background_psnr": s["background_psnr"] if edit == "shape_colour" else s["object_psnr"],
                    "judge_all": float(s["judge_all"]), "forward_passes": inv_fw + fw, "backward_passes": backward,
                    "wall_s": inv_s + secs, "recon_forward_passes": inv_fw + rec_fw, "recon_wall_s": inv_s + rec_s,
                    "invert_forward_passes": inv_fw, "invert_wall_s": inv_s,
                })
        log(f"  {method}: image {i + 1}/{args.n} (recon {recon_psnr:.2f} dB, {inv_fw} + {rec_fw} passes)")
    records = []
    for (edit, mode), rows in per.items():
        rec = {"method": method, "cfg": args.cfg, "steps": args.steps, "n": args.n, "edit": edit, "edit_mode": mode,
               "kept_region": "outside object" if edit == "shape_colour" else "inside object"}
        for key in rows[0]:
            rec[key] = statistics.fmean(r[key] for r in rows)
        records.append(rec)
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    lines = ["| method | recon dB | passes: fwd + bwd (invert + reconstruct) | wall s | edit | colour edit: success / "
             "kept dB | background edit: success / kept dB |", "|---|---|---|---|---|---|---|"]
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        rows.setdefault((r["method"], r["edit_mode"]), {})[r["edit"]] = r
    last = None
    for (method, mode), edits in rows.items():
        c, b = edits["shape_colour"], edits["background_colour"]
        head = (f"| {method} | {c['recon_psnr']:.2f} | {c['recon_forward_passes']:.0f} + {c['backward_passes']:.0f} | "
                f"{c['recon_wall_s']:.1f} |") if method != last else "| | | | |"
        last = method
        lines.append(f"{head} {mode} | {c['edit_success']:.2f} / {c['background_psnr']:.1f} | "
                     f"{b['edit_success']:.2f} / {b['background_psnr']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nodes = EQ.boot_nodes()
    counter = Passes()
    records: list[dict[str, Any]] = []
    with torch.inference_mode():
        model, clip, vae = EQ.load_model(nodes, args.model)
        counted = model.clone()
        counted.set_model_unet_function_wrapper(counter)
        sigmas = nodes["BasicScheduler"].execute(model=model, scheduler="normal", steps=args.steps,
                                                 denoise=1.0).result[0]
        p = EQ.Pipeline(nodes, counted, clip, vae, sigmas, EQ.EvalCounter())
        for method in args.methods:
            records += run_method(p, counter, method, args)
    if args.save is not None:
        args.save.write_text(json.dumps(records, indent=1) + "\n")
    if args.json:
        print(json.dumps(records))
        return 0
    print(f"toy model, held_out({args.n}), {args.steps} steps (normal), cfg {args.cfg:g} for inversion, "
          f"reconstruction and edits, 1 torch thread; *_toy: {TOY_NTI}")
    print(format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Attention masks and blended-guidance edits on the embedded toy model, against the exact truth.

Inside a real ComfyUI booted in-process, through the pack's own nodes, on ``toyworld.held_out`` images
(exact masks and attributes known):

**Mask quality** (``--mask-n`` images). Each image is inverted with DDIM (cfg 1, ``--steps``) and
reconstructed with its own caption on a MODEL whose text attention is recorded (what the reconstruction
branch of the Blended Guidance Guider sees). Per word type the map (mean over heads, summed over the
word's tokens, averaged over the steps and the layers of one resolution, or all layers; and all layers
over part of the steps, ``STEP_WINDOWS``, as the Attention Mask node's start/end) is scaled by its
maximum (AIDI / prompt-to-prompt) or min-max, and thresholded at delta; ``mask_iou`` is its IoU with the
true region:

* ``object word`` (the shape noun, "circle") and ``colour word`` (the shape's colour, "red"): the object;
* ``background word`` (the background's colour, "green"): the background.

The sweep over resolution / steps, scaling and delta is printed (JSON ``mask_sweep``); the guider's
defaults (``threshold``, ``resolution``, min-max scaling) are the setting with the best mean IoU of the
object and colour words, and JSON ``masks`` holds one record per word type at those defaults.

**Edits** (``--n`` images, per solver of ``--solvers``). Invert with the source caption (cfg 1), then edit
at ``--cfg-edit`` with the same steps, in four modes:

* ``plain``: a CFGGuider with the target caption (the ordinary edit);
* ``injection``: Blended Guidance Guider with blended_guidance off: target_cfg everywhere, plus
  prompt-to-prompt injection of the source's cross-attention for the first ``injection`` of the steps;
* ``blended``: per-pixel scale from the anchor's mask, plus the injection (AIDI applies both);
* ``blended_local``: blended, plus local blend (outside the mask the edit follows the reconstruction).

Two edits per image (targets as bench/edit_quality.py): ``shape_colour`` (anchor: the shape's colour word,
role "edit region") and ``background_colour`` (anchor: the shape's colour word, role "keep region": edit
everywhere but the object, AIDI's negative token). Fields per record (solver x edit x mode):

* ``edit_success``: the changed attribute reads as the target colour (bench/edit_quality.py's test);
* ``background_psnr``: PSNR (dB, [-1, 1] images) over the region the edit must keep: outside the true
  object mask dilated by 1 px for shape-colour edits, inside the mask eroded by 1 px for background
  edits (``kept_region`` says which);
* ``shape_iou``: the judge's shape mask of the edit against the true mask (does the object keep its shape);
* ``wall_ratio_vs_plain``: wall time of this Edit / the plain Edit's, per image, then averaged.

    scripts/py bench/attention.py                          # 48 mask images, 24 edit images, every solver of SOLVERS
    scripts/py bench/attention.py --n 4 --mask-n 8 --solvers ddim
    scripts/py bench/attention.py --json > attention.json  # {"masks", "mask_sweep", "edits"} on stdout
    scripts/py bench/attention.py --save attention.json    # the table, and the JSON written to a file
    scripts/py bench/attention.py --sweep --n 8 --solvers ddim   # injection / sharpness sweep for the defaults

Progress goes to stderr. This is a benchmark: nothing asserts (tests/host/test_blended_guidance.py does).
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

WORD_TYPES = ("object word", "colour word", "background word")
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NORMALISATIONS = ("max", "min-max")
STEP_WINDOWS = ((0.0, 0.5), (0.5, 1.0), (0.25, 0.75))  # start, end: fractions of the steps, noisy first
MODES = ("plain", "injection", "blended", "blended_local")
EDITS = ("shape_colour", "background_colour")
#: solver node inputs for the edits: the toy workflow's few-step settings for EDICT and BDIA (README)
SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": EQ.SOLVER_NODES["ddim"],
    "edict": EQ.SOLVER_NODES["edict_scaled"],
    "bdia": EQ.SOLVER_NODES["bdia_g08"],
    "aidi": EQ.SOLVER_NODES["aidi_a"],
    "ees25": EQ.SOLVER_NODES["ees25"],
    "belm": EQ.SOLVER_NODES["belm"],
    "rex": EQ.SOLVER_NODES["rex"],
    "rf_solver": EQ.SOLVER_NODES["rf_solver"],
    "fireflow": EQ.SOLVER_NODES["fireflow"],
}
GUIDER = "ExactInversion_BlendedGuidance"


def pack_module(name: str) -> Any:
    """A module of the pack's nodes package, under the name ComfyUI imported it."""
    from testbed import comfyhost

    return comfyhost.pack_module("nodes." + name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="toy model file (default: the shipped one)")
    ap.add_argument("--n", type=int, default=24, help="held-out images for the edits")
    ap.add_argument("--mask-n", type=int, default=48, help="held-out images for the mask sweep (0: skip)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg-edit", type=float, default=4.0)
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--sweep", action="store_true", help="sweep injection and sharpness instead of the modes")
    ap.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    ap.add_argument("--save", type=Path, default=None, help="also write the JSON result to this file")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- mask quality --------------------------------------------------------------------------------------------


def word_of(word_type: str, shape: int, fg: int, bg: int) -> str:
    return {"object word": W.SHAPES[shape], "colour word": W.COLOURS[fg], "background word": W.COLOURS[bg]}[word_type]


def reconstruction_maps(p: EQ.Pipeline, image: torch.Tensor, attrs: tuple[int, int, int]
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """Per word type and resolution name, the step- and layer-averaged raw map (H, W) of the reconstruction."""
    cap, words, control = pack_module("attention_capture"), pack_module("prompt_words"), pack_module(
        "attention_control")
    prompt = W.caption(*attrs)
    positions = {t: words.word_token_positions(p.clip, prompt, word_of(t, *attrs)) for t in WORD_TYPES}
    tokens = sorted({i for ps in positions.values() for i in ps})
    recorder = cap.AttentionRecorder(tokens)
    patched = cap.patch_recorder(p.model, recorder)
    sampler = p.nodes["ExactInversion_DDIMSolver"].execute(inversion_label="current", state_dtype="float64").result[0]
    inversion = p.nodes["ExactInversion_Invert"].execute(guider=p.guider(prompt, 1.0), sampler=sampler,
                                                         sigmas=p.sigmas, latent=p.encode(image)).result[0]
    rec_guider = p.nodes["CFGGuider"].execute(model=patched, positive=p.cond(prompt), negative=p.cond(""),
                                              cfg=1.0).result[0]
    p.nodes["ExactInversion_Edit"].execute(guider=rec_guider, inversion=inversion)
    size = tuple(image.shape[-2:])
    out: dict[str, dict[str, torch.Tensor]] = {}
    sigmas = sorted({r.sigma for r in recorder.records}, reverse=True)  # noisy first, as Attention Mask's start/end
    groups: dict[str, set[int]] = {}
    for res in control.RESOLUTIONS:
        groups[res] = {id(m) for m in control.select_resolution([r.maps for r in recorder.records], res)}
    for start, end in STEP_WINDOWS:  # all layers, part of the steps
        first = int(start * len(sigmas))
        window = set(sigmas[first:max(first + 1, round(end * len(sigmas)))])
        groups[f"all, steps {start:g}-{end:g}"] = {id(r.maps) for r in recorder.records if r.sigma in window}
    for name, chosen in groups.items():
        mean = recorder.mean_map(size, select=lambda r, chosen=chosen: id(r.maps) in chosen)[0]  # (T, H, W)
        for t in WORD_TYPES:
            out.setdefault(t, {})[name] = sum(mean[tokens.index(i)] for i in positions[t])
    return out


def mask_quality(p: EQ.Pipeline, n: int) -> list[dict[str, Any]]:
    """Records: one per word type x resolution x threshold, with mask_iou averaged over held_out(n)."""
    guidance = pack_module("blended_guidance")
    batch = W.held_out(n)
    ious: dict[tuple[str, str, str, float], list[float]] = {}
    base: dict[str, list[float]] = {t: [] for t in WORD_TYPES}
    for i in range(n):
        attrs = (int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i]))
        maps = reconstruction_maps(p, batch.images[i:i + 1], attrs)
        obj = batch.hard[i, 0].bool()
        for t in WORD_TYPES:
            region = ~obj if t == "background word" else obj
            base[t].append(float(region.float().mean()))
            for res in maps[t]:
                for norm in NORMALISATIONS:
                    m = guidance.scale_map(maps[t][res], norm)
                    for th in THRESHOLDS:
                        inter = float((m > th)[region].sum())
                        union = float(((m > th) | region).sum())
                        ious.setdefault((t, res, norm, th), []).append(inter / max(union, 1.0))
        log(f"  masks: image {i + 1}/{n}")
    return [{"word_type": t, "resolution": res, "normalisation": norm, "threshold": th, "mask_iou": statistics.fmean(v),
             "all_ones_iou": statistics.fmean(base[t]), "n": n} for (t, res, norm, th), v in ious.items()]


def best_mask_setting(records: list[dict[str, Any]]) -> tuple[tuple[str, str, float], float]:
    """((resolution, normalisation, threshold), mean IoU) maximising the mean IoU of the object and colour words."""
    scores: dict[tuple[str, str, float], list[float]] = {}
    for r in records:
        if r["word_type"] in ("object word", "colour word"):
            scores.setdefault((r["resolution"], r["normalisation"], r["threshold"]), []).append(r["mask_iou"])
    best, vals = max(scores.items(), key=lambda kv: statistics.fmean(kv[1]))
    return best, statistics.fmean(vals)


def at_guider_defaults(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per word type: the sweep's entry at the Blended Guidance Guider's default mask settings."""
    g = pack_module("blended_guidance")
    key = (g.DEFAULT_RESOLUTION, g.DEFAULT_NORMALISATION, g.DEFAULT_THRESHOLD)
    return [r for r in records if (r["resolution"], r["normalisation"], r["threshold"]) == key]


def format_masks(records: list[dict[str, Any]]) -> str:
    by = {(r["word_type"], r["resolution"], r["normalisation"], r["threshold"]): r["mask_iou"] for r in records}
    resolutions = list(dict.fromkeys(r["resolution"] for r in records))  # in the order measured
    lines = []
    for t in WORD_TYPES:
        base = next(r["all_ones_iou"] for r in records if r["word_type"] == t)
        lines.append(f"\n{t} (all-ones IoU {base:.3f}); rows: resolution and map scaling, columns: threshold delta")
        lines.append("| resolution | scaling | " + " | ".join(f"{th:g}" for th in THRESHOLDS) + " |")
        lines.append("|---|---|" + "---|" * len(THRESHOLDS))
        for res in resolutions:
            for norm in NORMALISATIONS:
                lines.append(f"| {res} | {norm} | "
                             + " | ".join(f"{by[(t, res, norm, th)]:.3f}" for th in THRESHOLDS) + " |")
    return "\n".join(lines)


# --- edits ---------------------------------------------------------------------------------------------------


def mode_options(mode: str) -> dict[str, Any] | None:
    """The guider's inputs for a mode (None: a plain CFGGuider); the node's defaults otherwise."""
    return {"plain": None,
            "injection": {"blended_guidance": False, "local_blend": False},
            "blended": {"blended_guidance": True, "local_blend": False},
            "blended_local": {"blended_guidance": True, "local_blend": True}}[mode]


def edit_guider(p: EQ.Pipeline, source: str, target: str, anchor: str, role: str, cfg_edit: float,
                options: dict[str, Any] | None) -> Any:
    if options is None:
        return p.guider(target, cfg_edit)
    return p.nodes[GUIDER].execute(model=p.model, source_positive=p.cond(source), target_positive=p.cond(target),
                                   negative=p.cond(""), clip=p.clip, source_prompt=source, target_prompt=target,
                                   anchor=anchor, anchor_role=role, cfg=1.0, target_cfg=cfg_edit,
                                   **options).result[0]


def score(edit: str, edited: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
          target: tuple[int, int, int]) -> dict[str, Any]:
    s = EQ.score_edit(edit, edited, image, mask, target)
    kept = s["background_psnr"] if edit == "shape_colour" else s["object_psnr"]
    return {"edit_success": float(s["edit_success"]), "background_psnr": kept,
            "shape_iou": float(J.shape_iou(edited, mask)[0]), "judge_all": float(s["judge_all"])}


def run_edits(p: EQ.Pipeline, solver: str, n: int, cfg_edit: float, variants: dict[str, dict[str, Any] | None]
              ) -> list[dict[str, Any]]:
    """Per edit x variant: means over held_out(n) of the scores and of the wall ratio to 'plain'."""
    node, inputs = SOLVERS[solver]
    sampler = p.nodes[node].execute(**inputs).result[0]
    batch = W.held_out(n)
    per: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i in range(n):
        attrs = (int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i]))
        image, mask = batch.images[i:i + 1], batch.hard[i:i + 1]
        source = W.caption(*attrs)
        inversion = p.nodes["ExactInversion_Invert"].execute(guider=p.guider(source, 1.0), sampler=sampler,
                                                             sigmas=p.sigmas, latent=p.encode(image)).result[0]
        for edit in EDITS:
            target = EQ.edit_target(edit, *attrs)
            role = "edit region" if edit == "shape_colour" else "keep region"
            times: dict[str, float] = {}
            for name, options in variants.items():
                g = edit_guider(p, source, W.caption(*target), W.COLOURS[attrs[1]], role, cfg_edit, options)
                t0 = time.perf_counter()
                out = p.nodes["ExactInversion_Edit"].execute(guider=g, inversion=inversion).result[0]
                times[name] = time.perf_counter() - t0
                per.setdefault((edit, name), []).append(
                    {**score(edit, p.decode(out), image, mask, target), "wall_s": times[name]})
            for name in variants:
                per[(edit, name)][-1]["wall_ratio_vs_plain"] = times[name] / times["plain"]
        log(f"  {solver} edits: image {i + 1}/{n}")
    records = []
    for (edit, name), rows in per.items():
        rec = {"solver": solver, "edit": edit, "mode": name, "n": n,
               "kept_region": "outside object" if edit == "shape_colour" else "inside object"}
        for key in ("edit_success", "background_psnr", "shape_iou", "judge_all", "wall_s", "wall_ratio_vs_plain"):
            rec[key] = statistics.fmean(r[key] for r in rows)
        records.append(rec)
    return records


def format_edits(records: list[dict[str, Any]]) -> str:
    lines = ["| solver | edit | mode | success | kept-region dB | shape IoU | judge all | wall x plain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['solver']} | {r['edit']} | {r['mode']} | {r['edit_success']:.2f} | "
                     f"{r['background_psnr']:.1f} | {r['shape_iou']:.2f} | {r['judge_all']:.2f} | "
                     f"{r['wall_ratio_vs_plain']:.2f} |")
    return "\n".join(lines)


def sweep_variants() -> dict[str, dict[str, Any] | None]:
    """plain, then injection fractions (blended guidance on), then sharpness M and local blend."""
    out: dict[str, dict[str, Any] | None] = {"plain": None}
    for tau in (0.0, 0.2, 0.4, 0.6, 0.8):
        out[f"blended tau={tau:g}"] = {"blended_guidance": True, "injection": tau}
    for m in (2.0, 5.0, 20.0):
        out[f"blended M={m:g}"] = {"blended_guidance": True, "sharpness": m}
    for tau in (0.0, 0.4, 0.8):
        out[f"blended_local tau={tau:g}"] = {"blended_guidance": True, "local_blend": True, "injection": tau}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nodes = EQ.boot_nodes()
    result: dict[str, Any] = {"steps": args.steps, "cfg_edit": args.cfg_edit, "masks": [], "mask_sweep": [],
                              "edits": []}
    with torch.inference_mode():
        model, clip, vae = EQ.load_model(nodes, args.model)
        sigmas = nodes["BasicScheduler"].execute(model=model, scheduler="normal", steps=args.steps,
                                                 denoise=1.0).result[0]
        p = EQ.Pipeline(nodes, model, clip, vae, sigmas, EQ.EvalCounter())
        if args.mask_n > 0:
            result["mask_sweep"] = mask_quality(p, args.mask_n)
            result["masks"] = at_guider_defaults(result["mask_sweep"])
        variants = sweep_variants() if args.sweep else {m: mode_options(m) for m in MODES}
        for solver in args.solvers:
            result["edits"] += run_edits(p, solver, args.n, args.cfg_edit, variants)
    if args.save is not None:
        args.save.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"toy model, {args.steps} steps (normal), invert cfg 1, edit cfg {args.cfg_edit:g}, 1 torch thread")
    if result["masks"]:
        print("mask IoU at the guider's defaults: " + ", ".join(
            f"{r['word_type']} {r['mask_iou']:.3f} (all-ones {r['all_ones_iou']:.3f})" for r in result["masks"]))
        (res, norm, th), score_ = best_mask_setting(result["mask_sweep"])
        print(f"mask IoU on held_out({args.mask_n}); best for object + colour words: resolution {res!r}, "
              f"{norm} scaling, threshold {th:g} (mean IoU {score_:.3f})")
        print(format_masks(result["mask_sweep"]))
    if result["edits"]:
        print(f"\nedits on held_out({args.n}); kept-region dB: outside the object (shape colour) or inside it "
              "(background)")
        print(format_edits(result["edits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

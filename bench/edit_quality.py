"""Edit quality of each solver on the embedded toy model's held-out set, judged against the exact truth.

For every held-out toy image (``toyworld.held_out``: balanced captions, exact masks and attributes) and
every solver, inside a real ComfyUI booted in-process, through the nodes' own ``execute``:

1. ``VAEEncode`` the image (the toy VAE is pixel space: the latent is the image in [-1, 1]);
2. ``ExactInversion_Invert`` with the source caption at ``--cfg-invert`` (negative: the empty prompt);
3. ``ExactInversion_Edit`` with the same guider: the reconstruction, ``VAEDecode``d;
4. for each edit of ``EDITS`` (shape colour, background colour) ``ExactInversion_Edit`` with the target
   caption at ``--cfg-edit``, ``VAEDecode``d.

Fields (all PSNRs in dB, [-1, 1] images, peak-to-peak 2, against the *source* image, toyworld.judge.psnr):

* ``recon_psnr``: reconstruction vs source, all pixels (the same for both edits of a method);
* ``edit_success``: fraction of images where the changed attribute now has the target value. Shape
  colour: nearest palette colour of the mean colour inside the true mask eroded by 1 px
  (``toyworld.judge.colour_edit``). Background: the same outside the true mask dilated by 1 px
  (``background_edit`` here);
* ``judge_all``: fraction where the deterministic judge (``toyworld.judge.judge``) reads the whole target
  scene (shape, shape colour and background colour) from the edited image: the edit happened *and*
  nothing else changed class;
* ``background_psnr``: shape-colour edits only: PSNR outside the true mask dilated by 1 px (background
  preservation); ``null`` for background edits, whose background is meant to change;
* ``object_psnr``: background edits only: PSNR inside the true mask eroded by 1 px (object
  preservation); ``null`` for shape-colour edits;
* ``nfe``: UNet calls of invert + this edit per image (a counting UNet wrapper on a clone of the model,
  as bench/overhead.py; a cfg > 1 evaluation is one batched cond + uncond call);
* ``wall_s``: wall time of invert + this edit per image, mean over images (one torch thread; the
  counting wrapper is on, a Python call per evaluation).

Targets are chosen deterministically: the palette colour ``SHIFT`` places after the current one (in
``toyworld.COLOURS`` order), skipping the current colour and the other part's colour, so a target is
never the background (shape edits) or the shape colour (background edits).

    scripts/py bench/edit_quality.py                                   # models/toy_model.safetensors, 24 images
    scripts/py bench/edit_quality.py --model runs/toy/toy_model.safetensors --n 4 --steps 10 --methods ddim edict
    scripts/py bench/edit_quality.py --json > edit_quality.json        # one JSON list, one record per method x edit

With ``--json`` only a JSON list is printed on stdout (progress goes to stderr). A PNG grid (rows: the
first ``--grid-rows`` images; columns: input, then per method its reconstruction and its edits) is
written to ``--grid``. This is a benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import torch  # noqa: E402
from overhead import EvalCounter  # noqa: E402  (the same UNet-call counter)

from testbed import comfyhost  # noqa: E402
from testbed.solver_nodes import FEW_STEPS  # noqa: E402
from testbed.solver_nodes import SOLVER_NODES as NODES  # noqa: E402
from toyworld import judge as J  # noqa: E402
from toyworld import world as W  # noqa: E402

#: solver node and inputs per method (the pack's node defaults, as bench/overhead.py names them)
#: the solvers at the pack's defaults (testbed.solver_nodes), under the names this bench's records use
SOLVER_NODES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": NODES["ddim"], "edict": NODES["edict"], "bdia": NODES["bdia"], "aidi_a": NODES["aidi"],
    "ees25": NODES["ees25"], "belm": NODES["belm"], "rex": NODES["rex"], "rf_solver": NODES["rf_solver"],
    "fireflow": NODES["fireflow"],
    # the few-step settings of the toy workflows (testbed.solver_nodes.FEW_STEPS)
    "edict_scaled": (NODES["edict"][0], {**NODES["edict"][1], **FEW_STEPS["edict"]}),
    "bdia_g08": (NODES["bdia"][0], {**NODES["bdia"][1], **FEW_STEPS["bdia"]}),
    # gamma 0.8 given at 25 steps, scaled to gamma^(25/steps) at other step counts
    "bdia_g08_scaled": (NODES["bdia"][0], {**NODES["bdia"][1], **FEW_STEPS["bdia"], "gamma_rule": "scaled"}),
}
METHODS = list(SOLVER_NODES)
EDITS = ("shape_colour", "background_colour")
GRID_TITLES = {"shape_colour": "shape", "background_colour": "bg"}
SHIFT = 3  # palette steps from the current colour to the target (then onwards past excluded colours)
MASK_PX = 1  # erosion (inside) / dilation (outside) of the true mask, in pixels
LOADER = "ExactInversion_ToyModelLoader"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="a toy export (.safetensors); default the pack's models/toy_model.safetensors")
    ap.add_argument("--n", type=int, default=24, help="held-out images (toyworld.held_out(n))")
    ap.add_argument("--steps", type=int, default=25, help="grid steps (normal scheduler)")
    ap.add_argument("--cfg-invert", type=float, default=1.0, help="CFG of inversion and reconstruction")
    ap.add_argument("--cfg-edit", type=float, default=4.0, help="CFG of the edits")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--bdia-gammas", nargs="+", type=float, default=[], metavar="GAMMA",
                    help="also BDIA at these gammas (methods bdia_g<gamma>; one the guard refuses is reported as such)")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    ap.add_argument("--grid", type=Path, default=REPO / "bench_output" / "edit_quality.png", help="PNG grid path")
    ap.add_argument("--grid-rows", type=int, default=4, help="images shown in the grid")
    args = ap.parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.grid_rows < 0:
        ap.error("--n and --steps must be >= 1, --grid-rows >= 0")
    if args.model is not None and (args.model.suffix != ".safetensors" or not args.model.is_file()):
        ap.error(f"--model {args.model}: not a .safetensors file")
    if any(not 0.0 < g <= 1.0 for g in args.bdia_gammas):
        ap.error("--bdia-gammas: each gamma must be in (0, 1]")
    for gamma in args.bdia_gammas:
        method = f"bdia_g{gamma:g}"
        SOLVER_NODES[method] = (NODES["bdia"][0], {**NODES["bdia"][1], "gamma": gamma})
        args.methods = [*args.methods, method]
    return args


# --- edits and judging -------------------------------------------------------------------------------------


def shifted(colour: int, avoid: int) -> int:
    """The palette colour SHIFT steps after ``colour``, moving on past ``colour`` and ``avoid``."""
    k = len(W.COLOURS)
    for step in range(SHIFT, SHIFT + k):
        c = (colour + step) % k
        if c not in (colour, avoid):
            return c
    raise AssertionError("unreachable: the palette has more than two colours")


def edit_target(edit: str, shape: int, fg: int, bg: int) -> tuple[int, int, int]:
    """(shape, fg, bg) of the target scene of ``edit`` applied to the scene (shape, fg, bg)."""
    if edit == "shape_colour":
        return shape, shifted(fg, bg), bg
    if edit == "background_colour":
        return shape, fg, shifted(bg, fg)
    raise ValueError(edit)


def background_edit(images: torch.Tensor, true_mask: torch.Tensor, target: int,
                    dilate_px: int = MASK_PX) -> dict[str, torch.Tensor]:
    """Did the background turn into colour ``target``? Nearest palette colour of the mean colour outside the
    dilated true mask (the counterpart of toyworld.judge.colour_edit for the background)."""
    rgb = J.mean_colour(images, ~J.dilate(true_mask, dilate_px))
    tgt = torch.as_tensor(target, dtype=torch.long).expand(rgb.shape[0])
    return {"success": J.nearest_colour(rgb) == tgt, "dist": (rgb - W.PALETTE[tgt]).norm(dim=1)}


def score_edit(edit: str, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
               target: tuple[int, int, int]) -> dict[str, Any]:
    """Per-image scores of one edited image (1, 3, H, W) in [-1, 1] against the source and its true mask."""
    shape, fg, bg = target
    if edit == "shape_colour":
        verdict = J.colour_edit(edited, mask, fg, MASK_PX)
        background = float(J.psnr_outside(edited, source, mask, MASK_PX)[0])
        obj = None
    else:
        verdict = background_edit(edited, mask, bg)
        background = None
        obj = float(J.psnr(edited, source, J.erode(mask, MASK_PX))[0])
    read = J.judge(edited)
    whole = int(read.shape[0]) == shape and int(read.fg[0]) == fg and int(read.bg[0]) == bg
    return {"edit_success": bool(verdict["success"][0]), "target_dist": float(verdict["dist"][0]),
            "judge_all": whole, "background_psnr": background, "object_psnr": obj}


# --- running through the nodes -----------------------------------------------------------------------------


def loader_module() -> Any:
    """The pack's nodes.toy_model as ComfyUI imported it (under the pack's folder name)."""
    return comfyhost.pack_module("nodes.toy_model")


def load_model(nodes: dict[str, Any], path: Path | None) -> tuple[Any, Any, Any]:
    """MODEL, CLIP, VAE from the loader node; ``path`` points the loader at its folder."""
    mod = loader_module()
    if path is not None:
        mod.set_model_folder(path.resolve().parent)
        mod.clear_cache()
    name = path.name if path is not None else mod.DEFAULT_FILE
    return nodes[LOADER].execute(model_file=name).result


@dataclass
class Pipeline:
    """The nodes, the counted model, its text encoder and VAE, and the sigma grid."""

    nodes: dict[str, Any]
    model: Any
    clip: Any
    vae: Any
    sigmas: torch.Tensor
    counter: EvalCounter
    _conds: dict[str, Any] = field(default_factory=dict)

    def cond(self, text: str) -> Any:
        if text not in self._conds:
            self._conds[text] = self.nodes["CLIPTextEncode"]().encode(self.clip, text)[0]
        return self._conds[text]

    def guider(self, text: str, cfg: float) -> Any:
        return self.nodes["CFGGuider"].execute(model=self.model, positive=self.cond(text), negative=self.cond(""),
                                               cfg=cfg).result[0]

    def encode(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """[-1, 1] (1, 3, H, W) -> LATENT through VAEEncode of the IMAGE in [0, 1]."""
        return self.nodes["VAEEncode"]().encode(self.vae, W.to_unit(image).movedim(1, -1).contiguous())[0]

    def decode(self, latent: dict[str, torch.Tensor]) -> torch.Tensor:
        """LATENT -> [-1, 1] (B, 3, H, W) through VAEDecode."""
        return self.nodes["VAEDecode"]().decode(self.vae, latent)[0].movedim(-1, 1).float() * 2 - 1

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, int, float]:
        """(result, UNet calls, wall seconds) of one node call."""
        before = self.counter.calls
        t0 = time.perf_counter()
        out = fn()
        return out, self.counter.calls - before, time.perf_counter() - t0


def run_image(p: Pipeline, sampler: Any, image: torch.Tensor, mask: torch.Tensor, attrs: tuple[int, int, int],
              args: argparse.Namespace) -> dict[str, Any]:
    """Invert, reconstruct and edit one image with one solver; per-image scores and decoded outputs."""
    nodes = p.nodes
    source_text = W.caption(*attrs)
    latent = p.encode(image)
    g_src = p.guider(source_text, args.cfg_invert)
    (inversion, _), inv_nfe, inv_s = p.timed(lambda: nodes["ExactInversion_Invert"].execute(
        guider=g_src, sampler=sampler, sigmas=p.sigmas, latent=latent).result)
    rec = p.decode(nodes["ExactInversion_Edit"].execute(guider=g_src, inversion=inversion).result[0])
    out: dict[str, Any] = {"recon_psnr": float(J.psnr(rec, image)[0]), "recon": rec, "edits": {}}
    for edit in EDITS:
        target = edit_target(edit, *attrs)
        g_tgt = p.guider(W.caption(*target), args.cfg_edit)
        res, nfe, secs = p.timed(lambda g=g_tgt: nodes["ExactInversion_Edit"].execute(
            guider=g, inversion=inversion).result[0])
        edited = p.decode(res)
        scores = score_edit(edit, edited, image, mask, target)
        out["edits"][edit] = {**scores, "nfe": inv_nfe + nfe, "wall_s": inv_s + secs, "image": edited,
                              "target": W.caption(*target)}
    return out


def run_method(p: Pipeline, method: str, batch: W.Batch, args: argparse.Namespace) -> list[dict[str, Any]]:
    """All images with one solver; per-image results (or one error entry if the solver fails)."""
    node, inputs = SOLVER_NODES[method]
    sampler = p.nodes[node].execute(**inputs).result[0]
    results = []
    for i in range(len(batch)):
        attrs = (int(batch.scene.shape[i]), int(batch.scene.fg[i]), int(batch.scene.bg[i]))
        results.append(run_image(p, sampler, batch.images[i:i + 1], batch.hard[i:i + 1], attrs, args))
        print(f"  {method}: image {i + 1}/{len(batch)}", file=sys.stderr, flush=True)
    return results


# --- aggregation and output --------------------------------------------------------------------------------


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def aggregate(method: str, edit: str, results: list[dict[str, Any]], batch: W.Batch,
              args: argparse.Namespace) -> dict[str, Any]:
    """One record: means over images of one method x edit, plus the per-image values."""
    per = [r["edits"][edit] for r in results]
    return {
        "method": method,
        "edit": edit,
        "recon_psnr": _mean([r["recon_psnr"] for r in results]),
        "edit_success": _mean([float(e["edit_success"]) for e in per]),
        "judge_all": _mean([float(e["judge_all"]) for e in per]),
        "target_dist": _mean([e["target_dist"] for e in per]),
        "background_psnr": _mean([e["background_psnr"] for e in per]),
        "object_psnr": _mean([e["object_psnr"] for e in per]),
        "nfe": _mean([e["nfe"] for e in per]),
        "wall_s": _mean([e["wall_s"] for e in per]),
        "n": len(per),
        "steps": args.steps,
        "cfg_invert": args.cfg_invert,
        "cfg_edit": args.cfg_edit,
        "per_image": [{"source": batch.captions[i], "target": e["target"], "recon_psnr": results[i]["recon_psnr"],
                       **{k: e[k] for k in ("edit_success", "judge_all", "target_dist", "background_psnr",
                                            "object_psnr", "nfe", "wall_s")}} for i, e in enumerate(per)],
    }


def error_records(method: str, message: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [{"method": method, "edit": edit, "error": message, "recon_psnr": None, "edit_success": None,
             "background_psnr": None, "object_psnr": None, "nfe": None, "wall_s": None, "steps": args.steps,
             "cfg_invert": args.cfg_invert, "cfg_edit": args.cfg_edit} for edit in EDITS]


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``; "-" right-aligned to the spec's width where there is no value."""
    if value is None or math.isnan(value):
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(value, spec)


def format_table(records: list[dict[str, Any]]) -> str:
    head = (f"{'method':<8} {'edit':<18} {'recon dB':>8} {'success':>7} {'judge all':>9} {'bg dB':>7} "
            f"{'obj dB':>7} {'nfe':>6} {'wall_s':>7}")
    lines = [head, "-" * len(head)]
    for r in records:
        if "error" in r:
            lines.append(f"{r['method']:<8} {r['edit']:<18} error: {r['error']}")
            continue
        lines.append(f"{r['method']:<8} {r['edit']:<18} {_fmt(r['recon_psnr'], '8.2f')} "
                     f"{_fmt(r['edit_success'], '7.2f')} {_fmt(r['judge_all'], '9.2f')} "
                     f"{_fmt(r['background_psnr'], '7.2f')} {_fmt(r['object_psnr'], '7.2f')} "
                     f"{_fmt(r['nfe'], '6.0f')} {_fmt(r['wall_s'], '7.2f')}")
    return "\n".join(lines)


def save_grid(path: Path, batch: W.Batch, outputs: dict[str, list[dict[str, Any]]], rows: int,
              scale: int = 4) -> Path | None:
    """PNG grid: one row per image; columns input, then per method reconstruction and each edit."""
    from PIL import Image, ImageDraw

    rows = min(rows, len(batch))
    if rows == 0 or not outputs:
        return None
    columns: list[tuple[str, list[torch.Tensor]]] = [("input", [batch.images[i:i + 1] for i in range(rows)])]
    for method, results in outputs.items():
        columns.append((f"{method} rec", [results[i]["recon"] for i in range(rows)]))
        for edit in EDITS:
            columns.append((f"{method} {GRID_TITLES[edit]}", [results[i]["edits"][edit]["image"]
                                                                  for i in range(rows)]))
    cell, pad, head = W.RES * scale, 4, 14
    canvas = Image.new("RGB", (len(columns) * (cell + pad) + pad, head + rows * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (title, images) in enumerate(columns):
        x = pad + c * (cell + pad)
        draw.text((x, 1), title, fill="black")
        for r, img in enumerate(images):
            arr = (W.to_unit(img[0]).permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (x, head + pad + r * (cell + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def boot_nodes() -> dict[str, Any]:
    """Boot ComfyUI for a benchmark (no progress bars, one torch thread); its node classes."""
    host = comfyhost.boot()
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    torch.set_num_threads(1)
    return host["nodes"].NODE_CLASS_MAPPINGS


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nodes = boot_nodes()
    batch = W.held_out(args.n)
    records: list[dict[str, Any]] = []
    outputs: dict[str, list[dict[str, Any]]] = {}
    with torch.inference_mode():
        try:
            model, clip, vae = load_model(nodes, args.model)
        except ValueError as exc:
            print(f"edit_quality: {exc}", file=sys.stderr)
            return 2
        counted = model.clone()
        counter = EvalCounter()
        counted.set_model_unet_function_wrapper(counter)
        sig = nodes["BasicScheduler"].execute(model=counted, scheduler="normal", steps=args.steps,
                                              denoise=1.0).result[0]
        p = Pipeline(nodes, counted, clip, vae, sig, counter)
        for method in args.methods:
            print(f"{method} ...", file=sys.stderr, flush=True)
            try:
                results = run_method(p, method, batch, args)
            except Exception as exc:  # a benchmark reports a failing solver and goes on with the others
                traceback.print_exc(file=sys.stderr)
                records += error_records(method, f"{type(exc).__name__}: {exc}", args)
                continue
            outputs[method] = results
            records += [aggregate(method, edit, results, batch, args) for edit in EDITS]
    grid = save_grid(args.grid, batch, outputs, args.grid_rows)
    if args.json:
        print(json.dumps(records))
        return 0
    source = args.model or (loader_module().model_folder() / loader_module().DEFAULT_FILE)
    print(f"edit quality on toyworld.held_out({args.n}), model {source}, {args.steps} steps (normal), "
          f"cfg invert {args.cfg_invert:g}, cfg edit {args.cfg_edit:g}, {torch.get_num_threads()} torch thread")
    print("success: the changed attribute reads as the target colour (inside the eroded / outside the dilated "
          "true mask); judge all: the judge reads the whole target scene; bg dB: PSNR outside the dilated mask "
          "(shape-colour edits); obj dB: PSNR inside the eroded mask (background edits); nfe, wall_s: invert + "
          "edit per image")
    print(format_table(records))
    if grid is not None:
        print(f"grid: {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

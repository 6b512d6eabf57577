"""The main job: every solver inverts and edits a held-out image of the embedded toy model, through real ComfyUI.

Runs ``workflows/toy_invert_edit.json`` in-process (PromptExecutor) unchanged: the *Load Embedded Toy
Model* node loads ``models/toy_model.safetensors`` (trained by scripts/train_toy.py), LoadImage reads
``workflows/toy_example.png`` (held-out image 0, "a red circle on a green background"), and each solver
inverts it with its caption (cfg 1), reconstructs it, and edits it to "a yellow circle on a green
background" (cfg 4). The outputs are judged against the image's exact mask (toyworld.judge). Then
``toy_attention_mask.json`` and ``toy_blended_edit.json`` run the same way (the word 'red' as a mask; a
plain and a blended-guidance edit from one EDICT inversion; the blended edit with local blend, the best
recipe measured, heads the grid above every solver's plain edit), then ``toy_null_text_edit.json`` (the same edit
at cfg 7.5 from a null-text inversion and from a plain DDIM inversion), and the DDIM round trip is measured on
eps, v-prediction and flow versions of a tiny SD1-shaped model.

Usage: scripts/py scripts/demo.py [--out demo_output]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

WORKFLOW = REPO / "workflows" / "toy_invert_edit.json"
BLENDED_WORKFLOWS = (REPO / "workflows" / "toy_attention_mask.json", REPO / "workflows" / "toy_blended_edit.json")
NULL_TEXT_WORKFLOW = REPO / "workflows" / "toy_null_text_edit.json"
MODEL = REPO / "models" / "toy_model.safetensors"
TARGET = ("circle", "yellow", "green")  # the workflow's target prompt, as (shape, shape colour, background)
#: the headline row: toy_blended_edit.json's EDICT inversion edited by the Blended Guidance Guider with local blend
RECIPE = "EDICT + local blend"


def comfyui_version() -> str:
    import comfyui_version as version

    return version.__version__


def load_png(path: Path) -> Any:
    """A saved PNG as a (1, 3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def run_unchanged(workflow: Path) -> tuple[dict[str, Any], dict[str, Any], float, Path]:
    """Run a workflow file as it is: (API prompt, outputs per node, wall seconds, ComfyUI's work folder)."""
    from testbed import comfyhost
    from testbed.workflow_api import comfy_input_types, ui_to_api

    booted = comfyhost.boot()
    ui = json.loads(workflow.read_text())
    prompt = ui_to_api(ui, comfy_input_types({n["type"] for n in ui["nodes"]}))
    t0 = time.perf_counter()
    outputs = comfyhost.run_prompt(prompt)
    return prompt, outputs, time.perf_counter() - t0, Path(booted["work"])


def run_workflow(out: Path) -> tuple[dict[str, dict[str, Any]], float]:
    """Run the toy workflow; per solver label: saved images and the Round-trip Check report."""
    prompt, outputs, wall, work = run_unchanged(WORKFLOW)
    results: dict[str, dict[str, Any]] = {}  # in the workflow's row order
    for node in prompt.values():
        label, _, role = node["_meta"]["title"].partition(": ")
        if role == "Round-trip Check":
            results[label] = {"images": {}}
    for node_id, node_out in outputs.items():
        label, _, role = prompt[node_id]["_meta"]["title"].partition(": ")
        entry = results.get(label)
        if entry is None:  # a shared node's own output (not one of the solver rows)
            continue
        if role == "Round-trip Check":
            entry["report"] = next(t for t in node_out.get("text", []) if "round trip" in t)
        for img in node_out.get("images", []):
            if img.get("type", "output") != "output":  # node previews (Round-trip Check's figure) live in temp/
                continue
            kind = "edit" if role == "save edit" else "reconstruction"
            dst = out / f"{label.lower()}_{kind}.png"
            shutil.copy(work / "output" / img["subfolder"] / img["filename"], dst)
            entry["images"][kind] = dst
    shutil.copy(REPO / "workflows" / "toy_example.png", out / "input.png")
    for entry in results.values():
        entry["images"]["input"] = out / "input.png"
    return results, wall


def run_saved_images(workflow: Path, out: Path, names: dict[str, str]) -> tuple[dict[str, Path], float, list[str]]:
    """Run a workflow unchanged; copy the image of each SaveImage titled as a key of ``names`` to out/<name>.
    Also the reports of its Round-trip Check nodes."""
    prompt, outputs, wall, work = run_unchanged(workflow)
    saved: dict[str, Path] = {}
    reports = [t for node_id, node_out in outputs.items()
               if prompt[node_id]["class_type"] == "ExactInversion_RoundTripCheck"
               for t in node_out.get("text", []) if "round trip" in t]
    for node_id, node_out in outputs.items():
        name = names.get(prompt[node_id]["_meta"]["title"])
        if name is not None and prompt[node_id]["class_type"] == "SaveImage":
            img = node_out["images"][0]
            saved[name] = out / name
            shutil.copy(work / "output" / img["subfolder"] / img["filename"], saved[name])
    missing = set(names.values()) - set(saved)
    if missing:
        raise SystemExit(f"{workflow.name} saved no image for {sorted(missing)}")
    return saved, wall, reports


def blended_results(out: Path) -> tuple[dict[str, Any], float]:
    """The attention-mask and blended-edit workflows: the 'red' mask, plain vs blended edit, judged."""
    from toyworld import judge as J
    from toyworld import world as W

    masks, wall_mask, _ = run_saved_images(BLENDED_WORKFLOWS[0], out, {"save mask: red": "mask_red.png"})
    edits, wall_edit, reports = run_saved_images(
        BLENDED_WORKFLOWS[1], out, {"save plain edit": "edict_plain_edit.png",
                                    "save blended edit": "edict_blended_edit.png",
                                    "save reconstruction": "edict_blended_reconstruction.png"})
    source = W.held_out(1)
    src, obj = load_png(REPO / "workflows" / "toy_example.png"), source.hard.bool()
    mask = load_png(masks["mask_red.png"])[:, :1] > 0
    res: dict[str, Any] = {"mask_iou": float(J.iou(mask, obj)[0]), "all_ones_iou": float(obj.float().mean()),
                           "images": {"input": out / "input.png", "mask 'red'": masks["mask_red.png"],
                                      "plain edit": edits["edict_plain_edit.png"],
                                      "blended edit": edits["edict_blended_edit.png"]},
                           "reconstruction": edits["edict_blended_reconstruction.png"], "report": reports[0]}
    target_fg = W.COLOURS.index(TARGET[1])
    for kind in ("plain edit", "blended edit"):
        edit = load_png(res["images"][kind])
        res[kind] = {"edit_success": bool(J.colour_edit(edit, source.hard, target_fg)["success"][0]),
                     "background_psnr": float(J.psnr_outside(edit, src, source.hard)[0]),
                     "shape_iou": float(J.shape_iou(edit, source.hard)[0])}
    return res, wall_mask + wall_edit


def null_text_results(out: Path) -> tuple[dict[str, dict[str, Any]], float]:
    """The null-text workflow: per inversion (NTI, plain DDIM; both at cfg 7.5) reconstruction and edit, judged."""
    from toyworld import judge as J
    from toyworld import world as W

    names = {f"save {kind} {what}": f"{kind}_cfg7.5_{what}.png" for kind in ("nti", "plain")
             for what in ("reconstruction", "edit")}
    saved, wall, _ = run_saved_images(NULL_TEXT_WORKFLOW, out, names)
    source = W.held_out(1)
    src = load_png(REPO / "workflows" / "toy_example.png")
    res: dict[str, dict[str, Any]] = {}
    for kind, label in (("plain", "DDIM"), ("nti", "NTI")):
        rec, edit = (load_png(saved[f"{kind}_cfg7.5_{what}.png"]) for what in ("reconstruction", "edit"))
        verdict = J.colour_edit(edit, source.hard, W.COLOURS.index(TARGET[1]))
        res[label] = {"recon_psnr": float(J.psnr(rec, src)[0]), "edit_success": bool(verdict["success"][0]),
                      "background_psnr": float(J.psnr_outside(edit, src, source.hard)[0]),
                      "images": {"input": out / "input.png",
                                 "reconstruction": saved[f"{kind}_cfg7.5_reconstruction.png"],
                                 "edit": saved[f"{kind}_cfg7.5_edit.png"]}}
    return res, wall


def judge_results(results: dict[str, dict[str, Any]]) -> None:
    """Add image-space figures: reconstruction PSNR, edit success, background PSNR, what the judge reads."""
    from toyworld import judge as J
    from toyworld import world as W

    source = W.held_out(1)
    mask = source.hard
    target_fg = W.COLOURS.index(TARGET[1])
    for entry in results.values():
        rec, edit = load_png(entry["images"]["reconstruction"]), load_png(entry["images"]["edit"])
        src = load_png(entry["images"]["input"])
        read = J.judge(edit)
        entry["recon_psnr"] = float(J.psnr(rec, src)[0])
        entry["edit_success"] = bool(J.colour_edit(edit, mask, target_fg)["success"][0])
        entry["background_psnr"] = float(J.psnr_outside(edit, src, mask)[0])
        entry["judge_reads"] = W.caption(int(read.shape[0]), int(read.fg[0]), int(read.bg[0]))


def roundtrip_table() -> list[dict]:
    """DDIM round trip per model type and cfg, through the real nodes (same guider both ways)."""
    import torch

    import nodes
    from testbed.tiny import make_cond, make_model

    m = nodes.NODE_CLASS_MAPPINGS
    base = make_model(0)
    variants = {"eps": base, "v": m["ModelSamplingDiscrete"]().patch(base, "v_prediction", False)[0],
                "flow": m["ModelSamplingSD3"]().patch(base, 3.0)[0]}
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    sampler = m["ExactInversion_DDIMSolver"].execute(inversion_label="current", state_dtype="float64").result[0]
    rows = []
    with torch.inference_mode():
        for kind, model in variants.items():
            for steps in (20, 50):
                for cfg in (1.0, 3.0, 7.5):
                    g = m["CFGGuider"].execute(model=model, positive=make_cond(1), negative=make_cond(2),
                                               cfg=cfg).result[0]
                    sig = m["BasicScheduler"].execute(model=model, scheduler="normal", steps=steps,
                                                      denoise=1.0).result[0]
                    inv, _ = m["ExactInversion_Invert"].execute(guider=g, sampler=sampler, sigmas=sig,
                                                                latent=latent).result
                    rec = m["ExactInversion_Edit"].execute(guider=g, inversion=inv).result[0]
                    max_abs, rel, psnr, _ = m["ExactInversion_RoundTripCheck"].execute(
                        original_latent=latent, result_latent=rec).result
                    rows.append({"model": kind, "steps": steps, "cfg": cfg, "sigma_max": float(sig[0]),
                                 "max_abs": max_abs, "relative": rel, "psnr_db": psnr})
    return rows


def comparison_grid(results: dict[str, dict[str, Any]], path: Path,
                    order: tuple[str, ...] = ("input", "reconstruction", "edit")) -> None:
    """One row per entry: its images in ``order``, each 32x32 image shown at 128x128."""
    from PIL import Image, ImageDraw

    tile, left, head = 128, 84, 16
    grid = Image.new("RGB", (left + tile * len(order), (tile + head) * len(results)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (label, result) in enumerate(results.items()):
        top = row * (tile + head)
        draw.multiline_text((4, top + head + tile // 2 - 6), label.replace(" + ", "\n+ "), fill="black")
        for col, kind in enumerate(order):
            img = Image.open(result["images"][kind]).convert("RGB").resize((tile, tile), Image.NEAREST)
            grid.paste(img, (left + tile * col, top + head))
            draw.text((left + tile * col + 4, top + 2), kind, fill="black")
    grid.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    args = parser.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} is missing: train it with scripts/py scripts/train_toy.py --export {MODEL}")
    args.out.mkdir(parents=True, exist_ok=True)

    plain, wall = run_workflow(args.out)
    blended, wall_blended = blended_results(args.out)
    # the headline: the best measured recipe (exact, every edit reading right, the rest untouched) above the
    # plain edits of every solver
    recipe = {"images": {"input": args.out / "input.png", "reconstruction": blended["reconstruction"],
                         "edit": blended["images"]["blended edit"]}, "report": blended["report"]}
    results = {RECIPE: recipe, **plain}
    judge_results(results)
    comparison_grid(results, args.out / "grid.png")
    comparison_grid({"EDICT": blended}, args.out / "blended_grid.png", tuple(blended["images"]))
    null_text, wall_null_text = null_text_results(args.out)
    comparison_grid(null_text, args.out / "null_text_grid.png")
    rows = roundtrip_table()
    (args.out / "roundtrip.json").write_text(json.dumps(rows, indent=1))
    (args.out / "toy_results.json").write_text(json.dumps(
        {k: {f: v for f, v in r.items() if f != "images"} for k, r in results.items()}, indent=1))
    (args.out / "blended_results.json").write_text(json.dumps(
        {k: v for k, v in blended.items() if k not in ("images", "reconstruction")}, indent=1))
    (args.out / "null_text_results.json").write_text(json.dumps(
        {k: {f: v for f, v in r.items() if f != "images"} for k, r in null_text.items()}, indent=1))

    lines = [
        "# Exact Inversion demo report", "",
        f"`workflows/toy_invert_edit.json` ran through real ComfyUI {comfyui_version()} (PromptExecutor) in "
        f"{wall:.1f} s on the CPU: "
        "the embedded toy model (`models/toy_model.safetensors`) inverts held-out image 0, \"a red circle on a green "
        "background\" (`input.png`), with each solver at cfg 1 (25 steps), reconstructs it with the same guider, "
        "and edits it to \"a yellow circle on a green background\" at cfg 4.", "",
        f"The first row, **{RECIPE}**, is the best recipe measured on the embedded model (README, *Which solver "
        "when*): the same EDICT inversion edited by the *Blended Guidance Guider* with local blend "
        "(`toy_blended_edit.json`, below): the reconstruction is exact, the edit reads right, and outside the anchor "
        "word's mask the edit keeps the exact reconstruction. The other rows are every solver's plain edit, for "
        "comparison.", "",
        "Images: `input.png`, `<solver>_reconstruction.png`, `<solver>_edit.png`, and `grid.png` (one row per "
        "row of the table: input | reconstruction | edit).", "",
        "Judged against the image's exact object mask (`toyworld.judge`, on the saved 8-bit PNGs: SaveImage "
        "truncates to 8 bits, which caps the image-space PSNR near 50 dB): reconstruction PSNR over all pixels; "
        "edit success = the object's colour (inside the mask eroded by 1 px) is now yellow; background PSNR = "
        "edit vs input outside the mask dilated by 1 px; what the judge reads from the edit. The last column is "
        "the node's own check in latent space (float).",
        "",
        "| solver | recon PSNR dB | edit success | background PSNR dB | judge reads the edit as | Round-trip Check |",
        "|---|---|---|---|---|---|",
        *[f"| {k} | {r['recon_psnr']:.1f} | {'yes' if r['edit_success'] else 'no'} | {r['background_psnr']:.1f} | "
          f"{r['judge_reads']} | {r['report']} |" for k, r in results.items()], "",
        "For the whole held-out set (24 images, two edits each) run `scripts/py bench/edit_quality.py`.", "",
        "## Keeping the edit local: attention mask and blended guidance", "",
        f"`workflows/toy_attention_mask.json` and `workflows/toy_blended_edit.json` ran in {wall_blended:.1f} s: the "
        "*Attention Mask* of the word 'red' (`mask_red.png`), and from one EDICT inversion the same edit twice, "
        "with a plain CFG guider and with the *Blended Guidance Guider* (anchor 'red', local blend on; "
        "`edict_plain_edit.png`, `edict_blended_edit.png`; `blended_grid.png`: input | mask | plain | blended).", "",
        f"Mask IoU with the exact object mask (thresholded at 0.5): {blended['mask_iou']:.3f} (an all-ones mask: "
        f"{blended['all_ones_iou']:.3f}).", "",
        "| edit | success | background PSNR dB | shape IoU |", "|---|---|---|---|",
        *[f"| {k} | {'yes' if blended[k]['edit_success'] else 'no'} | {blended[k]['background_psnr']:.1f} | "
          f"{blended[k]['shape_iou']:.2f} |" for k in ("plain edit", "blended edit")], "",
        "For 24 images, four solvers and four modes run `scripts/py bench/attention.py`.", "",
        "## Editing at cfg 7.5: null-text inversion", "",
        f"`workflows/toy_null_text_edit.json` ran in {wall_null_text:.1f} s: the same edit at cfg 7.5 from a plain "
        "DDIM inversion at cfg 7.5 and from a *Null-text Inversion* (NTI, the embedded model's settings), each "
        "reconstructed and edited with plain CFG guiders (`plain_cfg7.5_*.png`, `nti_cfg7.5_*.png`; "
        "`null_text_grid.png`: input | reconstruction | edit).", "",
        "| inversion at cfg 7.5 | recon PSNR dB | edit success | background PSNR dB |", "|---|---|---|---|",
        *[f"| {k} | {r['recon_psnr']:.1f} | {'yes' if r['edit_success'] else 'no'} | {r['background_psnr']:.1f} |"
          for k, r in null_text.items()], "",
        "For NPI, bias correction and 8 images run `scripts/py bench/nulltext.py`.", "",
        "DDIM invert -> reconstruct with the same guider on a tiny random SD1-shaped model, as eps, v-prediction "
        "and flow (`roundtrip.json`, latent space):", "",
        "| model | steps | cfg | sigma_max | max-abs | relative | PSNR dB |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['model']} | {r['steps']} | {r['cfg']} | {r['sigma_max']:.3f} | {r['max_abs']:.3e} | "
          f"{r['relative']:.3e} | {r['psnr_db']:.2f} |" for r in rows], "",
        "DDIM inversion is approximate: its error grows with cfg and falls with steps. EDICT and BDIA are exact.",
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out}/: report.md, grid.png, input.png, <solver>_reconstruction.png, "
          "<solver>_edit.png, toy_results.json, roundtrip.json, mask_red.png, edict_plain_edit.png, "
          "edict_blended_edit.png, edict_blended_reconstruction.png, blended_grid.png, blended_results.json, "
          "{nti,plain}_cfg7.5_{reconstruction,edit}.png, null_text_grid.png, null_text_results.json")


if __name__ == "__main__":
    main()

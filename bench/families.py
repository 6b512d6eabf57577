"""Which image families of this ComfyUI the pack inverts and edits: a family x feature table, every cell measured.

For each family ComfyUI loads with eps, v or flow sampling (testbed/tiny_families.py: a tiny model in
ComfyUI's own classes, seeded random weights, hand-made conditionings of the family's shapes), through the
pack's nodes as ComfyUI loaded them:

- EDICT / BDIA: Invert then Edit with the same CFGGuider (cfg 3, 6 normal steps, float32 model, float64
  state); the cell is the relative round-trip error ||rec - x|| / ||x||, or "refused: why";
- Attention Mask / Blended Guidance: the word "dog" of "a photo of a dog on grass" on an EDICT inversion;
  "works (h x w token map)" when the word's map is found in the model's text attention and is not uniform;
- Null-text Inversion: NPI with EDICT at cfg 5 (its round-trip error) and NTI with DDIM (3 steps, 2
  iterations), each "works" or "refused: why".

    scripts/py bench/families.py                 # Markdown table
    scripts/py bench/families.py --json          # one record per family
    scripts/py bench/families.py --families Flux Chroma
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from testbed import comfyhost  # noqa: E402
from testbed.solver_nodes import solver_sampler  # noqa: E402

SOURCE, TARGET, ANCHOR = "a photo of a dog on grass", "a photo of a cat on grass", "dog"
COLUMNS = ["EDICT exact", "BDIA exact", "Attention Mask", "Blended Guidance", "Null-text Inversion"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", help="family names (default: every family this ComfyUI has)")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    return ap.parse_args(argv)


def reason(err: Exception) -> str:
    """The why of a refusal, short: without the node's name, the family, the advice and what is supported."""
    text = str(err).split("\n")[0]
    shape = re.search(r"must be an image latent of shape \[batch, channels, height, width\]; got shape (\[.*?\])", text)
    if shape:
        return f"Invert takes [B, C, H, W] latents, this family's are {shape.group(1)}"
    length = re.search(r"also takes the negative's length \(([\w, ]+)\)", text)
    if length:
        return f"the negative's length is a model input ({length.group(1)})"
    text = re.sub(r"^[A-Z][\w -]*: (input '\w+': )?", "", text)
    text = re.sub(r"^the model \([\w.]+\) (is not supported: )?", "", text)
    text = re.split(r"\. Supported:|\. Connect |; use |\. Use |; supported are |, so | where |: it is ", text)[0]
    return text if len(text) <= 120 else text[:117] + "..."


class Bench:
    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = nodes

    def guider(self, model: Any, pos: list, neg: list, cfg: float) -> Any:
        return self.nodes["CFGGuider"].execute(model=model, positive=pos, negative=neg, cfg=cfg).result[0]

    def sigmas(self, model: Any, steps: int) -> Any:
        return self.nodes["BasicScheduler"].execute(model=model, scheduler="normal", steps=steps,
                                                    denoise=1.0).result[0]

    def sampler(self, name: str) -> Any:
        """EDICT and BDIA at their defaults; DDIM with the "next" label for null-text inversion."""
        return solver_sampler(self.nodes, name.lower(), **({"inversion_label": "next"} if name == "DDIM" else {}))

    def invert(self, g: Any, solver: str, steps: int, latent: dict) -> Any:
        return self.nodes["ExactInversion_Invert"].execute(guider=g, sampler=self.sampler(solver),
                                                           sigmas=self.sigmas(g.model_patcher, steps),
                                                           latent=latent).result[0]

    def edit(self, g: Any, inversion: Any) -> Any:
        return self.nodes["ExactInversion_Edit"].execute(guider=g, inversion=inversion, sigmas=None).result[0]

    def roundtrip(self, family: Any, model: Any, solver: str) -> tuple[str, float | None]:
        pos, neg, latent = family.cond(1), family.cond(2), family.random_latent()
        try:
            inv = self.invert(self.guider(model, pos, neg, 3.0), solver, 6, latent)
            rec = self.edit(self.guider(model, pos, neg, 3.0), inv)["samples"]
        except ValueError as err:
            return f"refused: {reason(err)}", None
        rel = float((rec - latent["samples"]).norm() / latent["samples"].norm())
        return f"{rel:.1e}", rel

    def attention(self, family: Any, model: Any) -> tuple[str, str]:
        import torch

        pos, tgt, neg, clip = family.cond(1), family.cond(3), family.cond(2), family.clip()
        g = self.guider(model, pos, neg, 1.0)
        try:
            inv = self.invert(g, "EDICT", 4, family.random_latent())
        except ValueError as err:
            return (f"refused: {reason(err)}",) * 2  # type: ignore[return-value]
        try:
            mask = self.nodes["ExactInversion_AttentionMask"].execute(guider=g, inversion=inv, clip=clip,
                                                                      prompt=SOURCE, words=ANCHOR).result[0]
            found = bool(torch.isfinite(mask).all()) and float(mask.amax() - mask.amin()) > 0.5
            mask_cell = "works" if found else "no map (uniform)"
        except ValueError as err:
            mask_cell = f"refused: {reason(err)}"
        try:
            b = self.nodes["ExactInversion_BlendedGuidance"].execute(
                model=model, source_positive=pos, target_positive=tgt, negative=neg, clip=clip, source_prompt=SOURCE,
                target_prompt=TARGET, anchor=ANCHOR, cfg=1.0, target_cfg=5.0, injection=0.0,
                local_blend=True).result[0]
            b.control.history = []
            self.edit(b, inv)
            grids = {tuple(r.maps.shape[-2:]) for r in b.control.history}
            anchor = b.edit_pass.map_sum
            ok = b.edit_pass.maps > 0 and anchor is not None and float(anchor.std()) > 1e-3 * float(anchor.mean())
            grid = "x".join(map(str, max(grids))) if grids else "?"
            what = "token" if family.patch is not None else "finest"
            blend_cell = f"works ({grid} {what} map)" if ok else "no map"
            if mask_cell == "works":
                mask_cell = f"works ({grid} {what} map)"
        except ValueError as err:
            blend_cell = f"refused: {reason(err)}"
        return mask_cell, blend_cell

    def null_text(self, family: Any, model: Any) -> str:
        pos = family.cond(1)
        neg = family.cond(2, None if family.fixed_length_text else max(1, pos[0][0].shape[1] // 2))
        g = self.guider(model, pos, neg, 5.0)
        latent = family.random_latent(3)
        node = self.nodes["ExactInversion_NullTextInversion"]
        cells = []
        try:
            inv = node.execute(guider=g, sampler=self.sampler("EDICT"), sigmas=self.sigmas(model, 3), latent=latent,
                               method="npi").result[0]
            rec = self.edit(g, inv)["samples"]
            cells.append(f"npi exact ({float((rec - latent['samples']).norm() / latent['samples'].norm()):.0e})")
        except ValueError as err:
            cells.append(f"npi refused: {reason(err)}")
        try:
            node.execute(guider=g, sampler=self.sampler("DDIM"), sigmas=self.sigmas(model, 3), latent=latent,
                         method="nti", inner_steps=2, early_stop=0.0)
            cells.append("nti works")
        except ValueError as err:
            cells.append(f"nti refused: {reason(err)}")
        npi, nti = cells
        if npi.startswith("npi refused") and nti.startswith("nti refused") and npi[12:] == nti[12:]:
            return f"refused: {npi[len('npi refused: '):]}"
        return "; ".join(cells)

    def family(self, family: Any) -> dict[str, Any]:
        import torch

        start = time.perf_counter()
        with torch.inference_mode():
            model = family.build(0)
            edict, edict_rel = self.roundtrip(family, model, "EDICT")
            bdia, bdia_rel = self.roundtrip(family, model, "BDIA")
            mask, blend = self.attention(family, model)
            nti = self.null_text(family, model)  # ComfyUI runs nodes in inference mode; NTI lifts it itself
        return {"family": family.name, "config": family.config, "sampling": family.sampling, "EDICT exact": edict,
                "BDIA exact": bdia, "Attention Mask": mask, "Blended Guidance": blend, "Null-text Inversion": nti,
                "edict_rel_error": edict_rel, "bdia_rel_error": bdia_rel, "tiny_model": family.notes,
                "seconds": round(time.perf_counter() - start, 2)}


def markdown(records: list[dict[str, Any]], version: str) -> str:
    head = ["family", "ComfyUI class", "sampling", *COLUMNS]
    lines = [f"ComfyUI {version}; tiny random models, float32, float64 solver state; relative round-trip errors.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lines.append("| " + " | ".join([r["family"], f"`{r['config']}`", r["sampling"], *[r[c] for c in COLUMNS]])
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = comfyhost.boot()
    from testbed import tiny_families as tf

    version = str(getattr(importlib.import_module("comfyui_version"), "__version__", "?"))
    families = [f for f in tf.available() if not args.families or f.name in args.families]
    bench = Bench(host["nodes"].NODE_CLASS_MAPPINGS)
    records = [bench.family(f) for f in families]
    print(json.dumps(records, indent=1) if args.json else markdown(records, version))
    return 0


if __name__ == "__main__":
    sys.exit(main())

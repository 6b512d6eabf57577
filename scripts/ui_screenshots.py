"""Refresh the pictures of the front end: docs/ui/*.png for the README and workflows/<name>.jpg, the
thumbnails ComfyUI's Templates browser shows for our workflows.

Runs the browser tests (tests/browser), which save full-window screenshots, then crops away the
front end's side bar and tabs and scales them down. Committed results are reviewed by eye; the tests
assert on page state, never on these pixels.

    scripts/py scripts/ui_screenshots.py        # about a minute (also: make screenshots)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: README pictures: artifact name -> docs/ui name
DOCS = {"run_check_closeup.png": "round_trip_check.png", "word_picker.png": "word_picker.png",
        "run_warning.png": "edit_warning.png", "bdia_hint.png": "bdia_hint.png",
        "templates.png": "templates.png", "node_library.png": "node_library.png",
        "attention_mask.png": "attention_mask.png",
        "thumb_toy_blended_edit.png": "toy_blended_edit.png", "thumb_toy_invert_edit.png": "toy_invert_edit.png",
        "blueprint_exact_local_edit.png": "blueprint.png", "help_page.png": "help_page.png"}
CANVAS = (56, 72)  # left side bar and top tabs of the 1920x1080 window, in pixels
THUMB_WIDTH = 512
DOC_WIDTH = 1280


def crop_canvas(image: Image.Image) -> Image.Image:
    return image.crop((CANVAS[0], CANVAS[1], image.width, image.height))


def scaled(image: Image.Image, width: int) -> Image.Image:
    return image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)


def main() -> int:
    artifacts = Path(tempfile.mkdtemp(prefix="exact-inversion-ui-"))
    env = {**os.environ, "EXACT_INVERSION_ARTIFACTS": str(artifacts)}
    # Not check=True: the thumbnail test fails until the thumbnails this script writes exist.
    tests = subprocess.run([sys.executable, "-m", "pytest", "tests/browser", "-q"], cwd=REPO, env=env)
    shots = artifacts / "browser"
    missing = [name for name in DOCS if not (shots / name).is_file()]
    if missing:
        print(f"browser tests (exit {tests.returncode}) saved no {missing}", file=sys.stderr)
        return 1
    for path in sorted(shots.glob("thumb_*.png")):  # a square around the graph, fitted to the window
        name = path.stem.removeprefix("thumb_")
        thumb = scaled(Image.open(path).convert("RGB"), THUMB_WIDTH)
        thumb.save(REPO / "workflows" / f"{name}.jpg", quality=85, optimize=True)
    (REPO / "docs" / "ui").mkdir(parents=True, exist_ok=True)
    for source, target in DOCS.items():
        image = Image.open(shots / source).convert("RGB")
        if not source.startswith(("templates", "node_library", "thumb_")):  # those are framed already
            image = crop_canvas(image)
        # 256 colours: UI screenshots stay sharp at a third of the size
        scaled(image, DOC_WIDTH).quantize(256).save(REPO / "docs" / "ui" / target, optimize=True)
    print(f"thumbnails in workflows/*.jpg, README pictures in docs/ui/ (from {shots})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

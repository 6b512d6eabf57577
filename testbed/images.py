"""A deterministic synthetic photo-like test image (no files downloaded)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def example_image(size: int = 64, seed: int = 0) -> Image.Image:
    """Smooth gradient background with a soft disc and a square: enough structure for VAE round trips."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.6 - 0.3 * xx * yy], axis=-1)
    cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [0.2]
    disc = np.clip((r - np.hypot(xx - cx, yy - cy)) * size / 2, 0, 1)[..., None]
    img = img * (1 - disc) + disc * np.array([0.85, 0.2, 0.15])
    sq = ((xx > 0.65) & (xx < 0.9) & (yy > 0.1) & (yy < 0.35))[..., None]
    img = np.where(sq, np.array([0.1, 0.2, 0.8]), img)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))

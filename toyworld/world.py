"""A procedural toy world: one coloured shape on a flat coloured background, with exact ground truth.

Every image comes with its caption (``"a red circle on a green background"``), its attributes and the
exact mask of the object, so inversion, editing and attention-mask metrics can be scored against the
truth instead of by eye.

Conventions (chosen so the images are the toy model's pixel-space latents as they are):

* Images are ``(B, 3, 32, 32)`` float32 in **[-1, 1]**, channels first. That is what ComfyUI's
  pixel-space VAE (``comfy.sd.VAE(sd={"pixel_space_vae": ...})``) makes of an IMAGE in [0, 1], so a
  rendered image, a VAEEncoded IMAGE and a model latent are the same numbers. ``to_unit`` maps to [0, 1].
* Pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]`` in pixel coordinates (x right, y down).
* Edges are anti-aliased by 4x4 supersampling: the soft mask is the covered fraction of each pixel and
  the hard mask is ``soft >= 0.5``.
* The object lies at least one pixel inside the frame, so the border pixels are pure background.
* ``size`` is the circle's radius; squares and triangles of the same size have the same area as the
  circle (square) or 81 % of it (triangle, so large ones still fit), which keeps the shape judge fair.
* Triangles are equilateral and point up; squares are axis-aligned (the captions name no orientation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RES = 32
SUPERSAMPLE = 4
MARGIN = 1.0  # object stays this many pixels inside the frame
SIZE_RANGE = (4.5, 10.0)  # circle radius in pixels

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
# RGB in [0, 1]. Chosen so any two differ by at least 0.93 (Euclidean, in [-1, 1] units): a judge with
# a threshold of half that separates them under sigma = 0.1 pixel noise.
PALETTE_UNIT = torch.tensor(
    [
        (0.90, 0.05, 0.15),  # red
        (0.10, 0.75, 0.15),  # green
        (0.05, 0.20, 1.00),  # blue
        (0.95, 1.00, 0.10),  # yellow
        (0.55, 0.10, 0.80),  # purple
        (1.00, 0.55, 0.00),  # orange
        (0.97, 0.97, 0.97),  # white
        (0.05, 0.05, 0.05),  # black
    ],
    dtype=torch.float32,
)
PALETTE = PALETTE_UNIT * 2 - 1  # in image units, [-1, 1]

SQUARE_K = math.sqrt(math.pi) / 2  # half-side / size: same area as the circle
TRIANGLE_K = 1.4  # circumradius / size
HELD_OUT_SEED = 20_240_601


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] (what ComfyUI's IMAGE holds, channels last aside)."""
    return ((images + 1) / 2).clamp(0, 1)


def caption(shape: int | str, fg: int | str, bg: int | str) -> str:
    """The caption of one scene, from indices or names."""
    s = SHAPES[shape] if isinstance(shape, int) else shape
    f = COLOURS[fg] if isinstance(fg, int) else fg
    b = COLOURS[bg] if isinstance(bg, int) else bg
    return f"a {f} {s} on a {b} background"


def parse_caption(text: str) -> tuple[int, int, int]:
    """Inverse of ``caption``: ``(shape, fg, bg)`` indices; ValueError if the text is not a toy caption."""
    words = text.strip().lower().split()
    if (len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background"
            or words[1] not in COLOURS or words[2] not in SHAPES or words[5] not in COLOURS):
        raise ValueError(f"not a toy caption: {text!r}; expected 'a <colour> <shape> on a <colour> background' "
                         f"with colours {COLOURS} and shapes {SHAPES}")
    return SHAPES.index(words[2]), COLOURS.index(words[1]), COLOURS.index(words[5])


@dataclass
class Scene:
    """Attributes of a batch of scenes: shape/fg/bg indices, size (circle radius) and object centre.

    ``cx, cy`` is the circle's or square's centre and the triangle's centroid, in pixel units.
    """

    shape: Tensor  # (B,) long
    fg: Tensor  # (B,) long
    bg: Tensor  # (B,) long
    size: Tensor  # (B,) float
    cx: Tensor  # (B,) float
    cy: Tensor  # (B,) float

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    @property
    def captions(self) -> list[str]:
        return [caption(int(s), int(f), int(b)) for s, f, b in zip(self.shape, self.fg, self.bg, strict=True)]


@dataclass
class Batch:
    """Rendered scenes: images in [-1, 1], exact soft and hard object masks, and their attributes."""

    images: Tensor  # (B, 3, 32, 32) float32 in [-1, 1]
    soft: Tensor  # (B, 1, 32, 32) float32 in [0, 1], covered fraction of each pixel
    hard: Tensor  # (B, 1, 32, 32) bool, soft >= 0.5
    scene: Scene

    @property
    def captions(self) -> list[str]:
        return self.scene.captions

    def __len__(self) -> int:
        return len(self.scene)


def half_extents(shape: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Half-width, half-height and the vertical offset (bbox centre - object centre) of each shape."""
    sq = size * SQUARE_K
    tri = size * TRIANGLE_K
    hx = torch.where(shape == 0, size, torch.where(shape == 1, sq, tri * math.sqrt(3) / 2))
    hy = torch.where(shape == 0, size, torch.where(shape == 1, sq, tri * 0.75))
    dy = torch.where(shape == 2, -tri * 0.25, torch.zeros_like(size))
    return hx, hy, dy


def inside(shape: Tensor, size: Tensor, cx: Tensor, cy: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Whether points (x, y) lie in each scene's shape. shape/size/cx/cy: (B,); x, y broadcast to (B, ...)."""
    view = (-1,) + (1,) * (x.dim())
    s, r, cx, cy = shape.view(view), size.view(view), cx.view(view), cy.view(view)
    dx, dy = x - cx, y - cy
    circle = dx * dx + dy * dy <= r * r
    half = r * SQUARE_K
    square = (dx.abs() <= half) & (dy.abs() <= half)
    big_r = r * TRIANGLE_K
    triangle = (dy <= big_r / 2) & (dx.abs() * math.sqrt(3) <= dy + big_r)
    return torch.where(s == 0, circle, torch.where(s == 1, square, triangle))


def coverage(shape: Tensor, size: Tensor, cx: Tensor, cy: Tensor, res: int = RES, ss: int = SUPERSAMPLE) -> Tensor:
    """Covered fraction of every pixel, ``(B, res, res)``, by ``ss x ss`` supersampling."""
    sub = (torch.arange(res * ss, dtype=torch.float32) + 0.5) / ss
    pts = inside(shape, size, cx, cy, sub.view(1, -1), sub.view(-1, 1)).to(torch.float32)
    return pts.view(-1, res, ss, res, ss).mean(dim=(2, 4))


def render(scene: Scene) -> Batch:
    """Render scenes to images with exact soft (anti-aliased) and hard masks."""
    soft = coverage(scene.shape, scene.size, scene.cx, scene.cy).unsqueeze(1)
    fg = PALETTE[scene.fg].view(-1, 3, 1, 1)
    bg = PALETTE[scene.bg].view(-1, 3, 1, 1)
    images = torch.lerp(bg.expand(-1, 3, RES, RES), fg.expand(-1, 3, RES, RES), soft)  # exact at soft 0 and 1
    return Batch(images=images, soft=soft, hard=soft >= 0.5, scene=scene)


def place(shape: Tensor, fg: Tensor, bg: Tensor, generator: torch.Generator) -> Scene:
    """Draw a random size and a random position (object fully inside the frame) for given attributes."""
    n = shape.shape[0]
    lo, hi = SIZE_RANGE
    size = lo + (hi - lo) * torch.rand(n, generator=generator)
    hx, hy, dy = half_extents(shape, size)
    ux, uy = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    bx = MARGIN + hx + ux * (RES - 2 * MARGIN - 2 * hx)  # bbox centre
    by = MARGIN + hy + uy * (RES - 2 * MARGIN - 2 * hy)
    return Scene(shape=shape.long(), fg=fg.long(), bg=bg.long(), size=size, cx=bx, cy=by - dy)


def random_scenes(n: int, generator: torch.Generator) -> Scene:
    """Uniform shape and colours (shape colour != background colour), random size and position."""
    shape = torch.randint(0, len(SHAPES), (n,), generator=generator)
    fg = torch.randint(0, len(COLOURS), (n,), generator=generator)
    bg = (fg + torch.randint(1, len(COLOURS), (n,), generator=generator)) % len(COLOURS)
    return place(shape, fg, bg, generator)


def random_batch(n: int, generator: torch.Generator | int) -> Batch:
    """A rendered random batch; an int seeds a fresh generator."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    return render(random_scenes(n, generator))


def scenes_for(captions: list[str], generator: torch.Generator | int) -> Scene:
    """Scenes that match given captions, with random sizes and positions."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    attrs = torch.tensor([parse_caption(c) for c in captions], dtype=torch.long).view(-1, 3)
    if bool((attrs[:, 1] == attrs[:, 2]).any()):
        raise ValueError("captions: the shape colour must differ from the background colour")
    return place(attrs[:, 0], attrs[:, 1], attrs[:, 2], generator)


def held_out_attributes(n: int = 48) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced attributes: item i has shape i % 3, shape colour i % 8 and background (i % 8 + 1 + i // 8 % 7) % 8.

    For n = 48 every shape appears 16 times, every colour 6 times as shape and 6 times as background,
    each (shape, shape colour) pair twice, and all 48 captions differ.
    """
    i = torch.arange(n)
    fg = i % len(COLOURS)
    bg = (fg + 1 + (i // len(COLOURS)) % (len(COLOURS) - 1)) % len(COLOURS)
    return i % len(SHAPES), fg, bg


def held_out(n: int = 48, seed: int = HELD_OUT_SEED) -> Batch:
    """The fixed evaluation set: balanced captions (``held_out_attributes``), sizes/positions from ``seed``."""
    shape, fg, bg = held_out_attributes(n)
    return render(place(shape, fg, bg, torch.Generator().manual_seed(seed)))

"""A deterministic judge of toy-world images, and edit metrics against the exact ground-truth mask.

The judge reads what an image shows without any learned part, so it can grade the toy model's samples
and edits:

1. background = per-channel median of the border pixels (the world keeps the object off the border);
2. rough foreground = pixels farther than ``FG_THRESHOLD`` from the background colour;
3. shape colour = per-channel median of the rough foreground (eroded by one pixel when that leaves
   enough pixels, so anti-aliased edges do not drag it);
4. object mask = pixels whose colour lies at least half way from the background to the shape colour
   (projection on the bg -> fg line): on a clean render it equals the world's hard mask;
5. colours are the nearest palette entries; the shape is the template (circle, square, upright
   triangle; same area and centroid as the mask) with the highest IoU against the mask.

All inputs are images in [-1, 1], ``(B, 3, H, W)``; masks are ``(B, 1, H, W)`` or ``(B, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .world import PALETTE, TRIANGLE_K, Scene, coverage

FG_THRESHOLD = 0.45  # about half the smallest distance between two palette colours (0.93)
MIN_CORE = 4  # pixels needed to use the eroded foreground for the shape colour


@dataclass
class Judgement:
    """What the judge read from each image; indices are -1 where nothing was found."""

    shape: Tensor  # (B,) long
    fg: Tensor  # (B,) long
    bg: Tensor  # (B,) long
    mask: Tensor  # (B, 1, H, W) bool, the object as the judge sees it
    fg_rgb: Tensor  # (B, 3)
    bg_rgb: Tensor  # (B, 3)
    shape_iou: Tensor  # (B, 3) IoU of the mask with the circle, square and triangle templates


def _as_mask(mask: Tensor) -> Tensor:
    return (mask if mask.dim() == 4 else mask.unsqueeze(1)).bool()


def nearest_colour(rgb: Tensor) -> Tensor:
    """Index of the nearest palette colour for each ``(..., 3)`` colour in [-1, 1]."""
    return torch.cdist(rgb.reshape(-1, 3).float(), PALETTE).argmin(dim=1).view(rgb.shape[:-1])


def erode(mask: Tensor, px: int = 1) -> Tensor:
    """Binary erosion with a (2 px + 1)^2 square; pixels outside the image count as outside the mask."""
    m = _as_mask(mask).float()
    if px <= 0:
        return m.bool()
    return -F.max_pool2d(-F.pad(m, (px,) * 4, value=0.0), 2 * px + 1, stride=1) > 0.5


def dilate(mask: Tensor, px: int = 1) -> Tensor:
    """Binary dilation with a (2 px + 1)^2 square."""
    m = _as_mask(mask).float()
    if px <= 0:
        return m.bool()
    return F.max_pool2d(m, 2 * px + 1, stride=1, padding=px) > 0.5


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Per-image IoU of two binary masks; 1 where both are empty."""
    a, b = _as_mask(a).flatten(1), _as_mask(b).flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _masked_median(images: Tensor, mask: Tensor) -> Tensor:
    """Per-image, per-channel median over the pixels in ``mask`` ((B, 1, H, W) bool); NaN where empty."""
    b = images.shape[0]
    vals = images.flatten(2).float().clone()  # B, 3, N
    m = mask.flatten(2).expand_as(vals)
    vals[~m] = float("nan")
    return vals.nanmedian(dim=2).values.view(b, 3)


def _templates(mask: Tensor) -> Tensor:
    """Circle, square and upright triangle with the mask's area and centroid: (B, 3, H, W) bool."""
    b, _, h, w = mask.shape
    m = mask.float().view(b, h, w)
    area = m.sum((1, 2)).clamp_min(1)
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    cx = (m * xs).sum((1, 2)) / area
    cy = (m * ys).sum((1, 2)) / area
    # size (circle radius) giving each template the mask's area
    sizes = torch.stack([
        (area / torch.pi).sqrt(),
        (area / torch.pi).sqrt(),  # the square of a given size has the circle's area
        (area / (0.75 * 3 ** 0.5 * TRIANGLE_K ** 2)).sqrt(),
    ], dim=1)
    shapes = torch.arange(3).repeat(b)
    cov = coverage(shapes, sizes.reshape(-1), cx.repeat_interleave(3), cy.repeat_interleave(3), res=h)
    return (cov >= 0.5).view(b, 3, h, w)


def judge(images: Tensor) -> Judgement:
    """Read background colour, shape colour, shape and object mask from each image (see module doc)."""
    x = images.detach().float().cpu()
    b, _, h, w = x.shape
    border = torch.ones(1, 1, h, w, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    bg_rgb = _masked_median(x, border.expand(b, 1, h, w))
    diff = x - bg_rgb.view(b, 3, 1, 1)
    rough = diff.norm(dim=1, keepdim=True) > FG_THRESHOLD
    core = erode(rough, 1)
    use_core = core.flatten(1).sum(1) >= MIN_CORE
    sel = torch.where(use_core.view(b, 1, 1, 1), core, rough)
    fg_rgb = _masked_median(x, sel)
    has_fg = rough.flatten(1).any(1)
    fg_rgb = torch.where(has_fg.view(b, 1), fg_rgb, bg_rgb)
    axis = fg_rgb - bg_rgb
    proj = (diff * axis.view(b, 3, 1, 1)).sum(1, keepdim=True) / axis.pow(2).sum(1).clamp_min(1e-6).view(b, 1, 1, 1)
    mask = (proj >= 0.5 - 1e-4) & has_fg.view(b, 1, 1, 1)  # tolerance: exact half-covered edge pixels
    tmpl = _templates(mask)
    inter = (tmpl & mask).flatten(2).sum(2).float()
    union = (tmpl | mask).flatten(2).sum(2).float().clamp_min(1)
    shape_iou = inter / union
    none = torch.full((b,), -1, dtype=torch.long)
    has_obj = mask.flatten(1).any(1)
    return Judgement(
        shape=torch.where(has_obj, shape_iou.argmax(1), none),
        fg=torch.where(has_fg, nearest_colour(fg_rgb), none),
        bg=nearest_colour(bg_rgb),
        mask=mask,
        fg_rgb=fg_rgb,
        bg_rgb=bg_rgb,
        shape_iou=shape_iou,
    )


def agreement(j: Judgement, scene: Scene) -> dict[str, Tensor]:
    """Per-image correctness (bool tensors) of shape, shape colour (fg), background colour (bg) and all three."""
    shape = j.shape == scene.shape
    fg = j.fg == scene.fg
    bg = j.bg == scene.bg
    return {"shape": shape, "fg": fg, "bg": bg, "all": shape & fg & bg}


def accuracy(images: Tensor, scene: Scene) -> dict[str, float]:
    """Fraction of images whose shape, shape colour, background colour and all three match ``scene``."""
    return {k: float(v.float().mean()) for k, v in agreement(judge(images), scene).items()}


# ----------------------------------------------------------------------------------------------------
# Edit metrics against the true mask of the source image


def mean_colour(images: Tensor, mask: Tensor) -> Tensor:
    """Mean colour over the pixels in ``mask``, (B, 3); NaN where the mask is empty."""
    m = _as_mask(mask).float()
    n = m.flatten(1).sum(1)
    s = (images.float() * m).flatten(2).sum(2)
    return torch.where(n.view(-1, 1) > 0, s / n.clamp_min(1).view(-1, 1), torch.full_like(s, float("nan")))


def colour_inside(images: Tensor, true_mask: Tensor, erode_px: int = 1) -> Tensor:
    """Mean colour inside the eroded true object mask (falls back to the mask itself if erosion empties it)."""
    m = _as_mask(true_mask)
    core = erode(m, erode_px)
    empty = ~core.flatten(1).any(1)
    core = torch.where(empty.view(-1, 1, 1, 1), m, core)
    return mean_colour(images, core)


def colour_edit(images: Tensor, true_mask: Tensor, target: Tensor | int, erode_px: int = 1) -> dict[str, Tensor]:
    """Did the object turn into colour ``target``? Per image: success (nearest palette colour is the target)
    and the distance of the mean inside colour to the target colour (in [-1, 1] units)."""
    rgb = colour_inside(images, true_mask, erode_px)
    tgt = torch.as_tensor(target, dtype=torch.long).expand(rgb.shape[0])
    return {"success": nearest_colour(rgb) == tgt, "dist": (rgb - PALETTE[tgt]).norm(dim=1)}


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None, peak_to_peak: float = 2.0) -> Tensor:
    """Per-image PSNR in dB over the pixels in ``mask`` (all if None); peak-to-peak 2 for [-1, 1] images."""
    se = (a.float() - b.float()).pow(2)
    m = torch.ones_like(se[:, :1], dtype=torch.bool) if mask is None else _as_mask(mask)
    mf = m.float().expand_as(se)
    mse = (se * mf).flatten(1).sum(1) / mf.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(peak_to_peak ** 2 / mse.clamp_min(1e-20))


def psnr_outside(edited: Tensor, source: Tensor, true_mask: Tensor, dilate_px: int = 1) -> Tensor:
    """Background fidelity: PSNR against the source over pixels at least ``dilate_px`` outside the true mask."""
    return psnr(edited, source, ~dilate(true_mask, dilate_px))


def shape_iou(images: Tensor, true_mask: Tensor) -> Tensor:
    """IoU of the object mask the judge reads from ``images`` with the true (hard) mask."""
    return iou(judge(images).mask, true_mask)

"""Synthetic defects pasted into normal images, with exact masks: how scoring is chosen without test labels.

`paste_defects(images, generator)` returns, for every image, one copy per defect kind:
  patch    a rectangle copied from another place of another normal image, flipped (a texture or
           structure that is normal elsewhere but wrong here, as CutPaste does);
  scratch  a thin line, brighter or darker than the image around it;
  stain    a blob of slightly changed brightness fading out with no edge (low contrast);
  smooth   a region whose fine structure is washed out (blurred), colours kept.
Sizes are fractions of the image, amplitudes multiples of the image's own standard deviation, so the
same settings suit textures and objects of any scale. The mask marks the pixels the defect changed
by more than 2 % of the image's range. Pure tensor functions; nothing here knows the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("patch", "scratch", "stain", "smooth")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _ellipse_distance(
    shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float
) -> torch.Tensor:
    """Each pixel's distance (H, W) from `centre` in units of the turned ellipse's radii: 1 on its outline."""
    y, x = torch.meshgrid(torch.arange(shape[0]).float(), torch.arange(shape[1]).float(), indexing="ij")
    dx, dy = x - centre[1], y - centre[0]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return torch.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2)


def _ellipse(
    shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float
) -> torch.Tensor:
    """Soft ellipse weight (H, W) in [0, 1]: 1 inside, falling to 0 over about a pixel at the edge."""
    return ((1 - _ellipse_distance(shape, centre, radii, angle)) * min(radii) + 0.5).clamp(0, 1)


def _blob(
    shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float
) -> torch.Tensor:
    """Gaussian bump (H, W) in [0, 1] with no edge: 1 at the centre, 0.14 on the ellipse of `radii`."""
    return torch.exp(-2 * _ellipse_distance(shape, centre, radii, angle) ** 2)


def _line(
    shape: tuple[int, int], centre: tuple[float, float], length: float, width: float, angle: float
) -> torch.Tensor:
    """Soft line weight (H, W) in [0, 1] through `centre`."""
    y, x = torch.meshgrid(torch.arange(shape[0]).float(), torch.arange(shape[1]).float(), indexing="ij")
    dx, dy = x - centre[1], y - centre[0]
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    return ((width / 2 + 0.5 - across.abs()).clamp(0, 1)) * (along.abs() <= length / 2)


def paste_defect(
    image: torch.Tensor, donor: torch.Tensor, kind: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One defect of `kind` in a copy of image (C, H, W); donor: another normal image -> (image, mask (H, W) bool)."""
    c, h, w = image.shape
    side = min(h, w)
    centre = (_uniform(generator, 0.2, 0.8) * h, _uniform(generator, 0.2, 0.8) * w)
    angle = _uniform(generator, 0, math.pi)
    spread = float(image.std()) + 1e-3
    sign = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
    if kind == "patch":
        dh, dw = donor.shape[-2:]
        ph, pw = (max(4, round(_uniform(generator, 0.08, 0.2) * side)) for _ in range(2))
        ph, pw = min(ph, dh, h), min(pw, dw, w)
        top, left = round(min(max(centre[0] - ph / 2, 0), h - ph)), round(min(max(centre[1] - pw / 2, 0), w - pw))
        sy, sx = (
            int(torch.randint(0, dh - ph + 1, (), generator=generator)),
            int(torch.randint(0, dw - pw + 1, (), generator=generator)),
        )
        out = image.clone()
        out[:, top : top + ph, left : left + pw] = donor[:, sy : sy + ph, sx : sx + pw].flip(-1, -2)
    elif kind == "scratch":
        weight = _line((h, w), centre, _uniform(generator, 0.15, 0.4) * side, _uniform(generator, 1.0, 2.0), angle)
        out = image + sign * _uniform(generator, 1.5, 3.0) * spread * weight
    elif kind == "stain":  # no edge for the gradient similarity to catch, like a real discolouration
        radii = (_uniform(generator, 0.05, 0.12) * side, _uniform(generator, 0.05, 0.12) * side)
        out = image + sign * _uniform(generator, 0.3, 0.8) * spread * _blob((h, w), centre, radii, angle)
    elif kind == "smooth":
        radii = (_uniform(generator, 0.06, 0.12) * side, _uniform(generator, 0.06, 0.12) * side)
        weight = _ellipse((h, w), centre, radii, angle)
        blurred = F.avg_pool2d(F.pad(image[None], (3, 3, 3, 3), mode="replicate"), 7, stride=1)[0]
        out = image * (1 - weight) + blurred * weight
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    out = out.clamp(min(0.0, float(image.min())), max(1.0, float(image.max())))  # as a camera clips
    mask = (out - image).abs().amax(dim=0) > 0.02 * (float(image.max() - image.min()) + 1e-6)
    return out, mask


def paste_defects(
    images: list[torch.Tensor], generator: torch.Generator, one_each: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every image with each defect kind, its donor the next image -> (defective images, masks),
    len(images) * len(KINDS); with `one_each`, one defect per image, the kinds taken in turn
    (len(images): a quarter of the work, for checks repeated every epoch)."""
    defective, masks = [], []
    for i, image in enumerate(images):
        donor = images[(i + 1) % len(images)]
        for kind in (KINDS[i % len(KINDS)],) if one_each else KINDS:
            out, mask = paste_defect(image, donor, kind, generator)
            if not mask.any():  # e.g. a patch copied onto identical pixels: draw again once
                out, mask = paste_defect(image, donor, kind, generator)
            defective.append(out)
            masks.append(mask)
    return defective, masks

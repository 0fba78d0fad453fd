"""Pictures for people: anomaly maps coloured and laid over their images, written as PNG.

Maps are coloured on one fixed scale [0, vmax] shared by all images of a run, never per-image
min-max: a defect-free image must look calm, not as hot as the worst defect.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import atomic_write

# Inferno colormap, sampled at 8 evenly spaced points (RGB 0-255).
_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) non-negative values -> (H, W, 3) uint8 inferno colours, saturating at vmax."""
    t = np.clip(values / max(vmax, 1e-12), 0, 1) * (len(_INFERNO) - 1)
    low = np.floor(t).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (t - low)[..., None]
    return (_INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac).round().astype(np.uint8)


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


MARK_COLOUR = (0, 255, 255)  # cyan: apart from every colour of the inferno scale


def overlay_panel(
    base: np.ndarray,
    anomaly_map: np.ndarray,
    vmax: float,
    mask: np.ndarray | None = None,
    mark: tuple[float, float] | None = None,
) -> Image.Image:
    """Side by side: the image (H, W, 3) uint8, the heatmap blended over it, and the mask if given.

    mark: (x, y) as fractions of width and height, ringed on the heatmap (where a flagged image's score was found).
    """
    heat = colorize(anomaly_map, vmax)
    h, w = anomaly_map.shape
    if base.shape[:2] != (h, w):
        base = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
    blended = (0.5 * base + 0.5 * heat).round().astype(np.uint8)
    if mark is not None:
        blended = ringed(blended, mark[0] * w, mark[1] * h)
    panels = [base, blended]
    if mask is not None:
        panels.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
    return Image.fromarray(np.concatenate(panels, axis=1))


def ringed(picture: np.ndarray, x: float, y: float) -> np.ndarray:
    """(H, W, 3) uint8 with a ring around pixel position (x, y), its radius a twentieth of the shorter side (>= 4 px)."""
    radius = max(4.0, min(picture.shape[:2]) / 20)
    image = Image.fromarray(picture)
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), outline=MARK_COLOUR, width=2)
    return np.asarray(image)


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """PNG bytes -> a data: URI, so the HTML report is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

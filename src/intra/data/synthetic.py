"""A small synthetic defect dataset in MVTec AD layout, made by code (no downloads): demo and tests.

Normal images are a ridged surface: a sinusoidal grating with per-image random phase, slightly
jittered period (about 10 px) and angle, a gentle illumination slope, a colour tint and sensor
noise. Defects, each with its mask:
  scratch  a thin bright or dark line,
  spot     a dark blob with a soft edge,
  smudge   a patch where the ridges are washed out to a flat colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEFECT_KINDS = ("scratch", "spot", "smudge")


def texture(rng: np.random.Generator, size: int, period: float = 8.0) -> np.ndarray:
    """One defect-free image: (size, size, 3) float in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    gray = np.full((size, size), 0.5)
    for direction, amplitude in ((0.0, 0.16), (np.pi / 2, 0.10)):  # warp and weft threads
        angle = direction + rng.normal(0, 0.01)
        phase = rng.uniform(0, 2 * np.pi)
        gray += amplitude * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    slope = rng.normal(0, 0.05, 2)
    gray += (slope[0] * x + slope[1] * y) / size  # gentle illumination gradient
    tint = np.array([0.85, 0.7, 0.5]) + rng.normal(0, 0.02, 3)
    rgb = gray[..., None] * tint * 1.3 + rng.normal(0, 0.015, (size, size, 3))
    return np.clip(rgb, 0, 1)


def _ellipse(size: int, centre: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - centre[0], y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of `kind` into a copy of image -> (image, mask (size, size) bool)."""
    size = image.shape[0]
    centre = rng.uniform(0.2 * size, 0.8 * size, 2)
    angle = rng.uniform(0, np.pi)
    out = image.copy()
    if kind == "scratch":
        length, width = rng.uniform(0.1, 0.3) * size, rng.uniform(0.6, 1.4)
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        along = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
        across = -(x - centre[0]) * np.sin(angle) + (y - centre[1]) * np.cos(angle)
        alpha = np.clip(width + 0.5 - np.abs(across), 0, 1) * (np.abs(along) < length / 2) * rng.uniform(0.4, 0.8)
        value = 0.95 if rng.random() < 0.5 else 0.05
        out = out * (1 - alpha[..., None]) + value * alpha[..., None]
    elif kind == "spot":
        d = _ellipse(size, centre, rng.uniform(0.02, 0.05, 2) * size, angle)
        alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.3, 0.6)
        out = out * (1 - alpha[..., None]) + 0.08 * alpha[..., None]
    elif kind == "smudge":
        d = _ellipse(size, centre, rng.uniform(0.04, 0.08, 2) * size, angle)
        alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.5, 0.9)
        flat = image.reshape(-1, 3).mean(0) * rng.uniform(0.9, 1.15)
        out = out * (1 - alpha[..., None]) + flat * alpha[..., None]
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return np.clip(out, 0, 1), alpha > 0.25


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)


def make_dataset(
    root: str | Path, size: int = 128, train: int = 80, test_good: int = 20, per_defect: int = 12, seed: int = 0
) -> Path:
    """Write the dataset under root (MVTec layout); returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(train):
        _save(texture(rng, size), root / "train" / "good" / f"{i:03d}.png")
    for i in range(test_good):
        _save(texture(rng, size), root / "test" / "good" / f"{i:03d}.png")
    for kind in DEFECT_KINDS:
        for i in range(per_defect):
            image, mask = add_defect(texture(rng, size), kind, rng)
            _save(image, root / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(np.float64), root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root

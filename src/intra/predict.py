"""Predict on new images: one record per image (path, pred_score) and a heatmap overlay PNG."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import torch

from .data import is_image, list_images, load_image
from .errors import IntraError
from .inference import Detector
from .report import overlay_panel, save_png, to_rgb_uint8


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, without repeats."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path, "input"))
        elif path.is_file():
            paths.append(path)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if is_image(Path(p)))
            if not matches:
                raise IntraError(f"no images match {item!r}")
            paths.extend(matches)
        else:
            raise IntraError(f"input not found: {item}")
    return list(dict.fromkeys(paths))


def predict_paths(
    detector: Detector, paths: list[Path], out_dir: Path | None = None, batch_size: int = 8
) -> Iterator[dict]:
    """Score images in batches, yielding {"path", "pred_score"} per image; overlays go to out_dir."""
    cfg = detector.cfg
    vmax = float(detector.stats.get("overlay_vmax", 0.0))
    for first in range(0, len(paths), batch_size):
        chunk = paths[first : first + batch_size]
        images = torch.stack([load_image(p, cfg.model.image_size, cfg.data.color) for p in chunk])
        maps, scores = detector.predict(images)
        for path, image, amap, score in zip(chunk, images, maps, scores):
            if out_dir is not None:
                scale = vmax or float(amap.max())
                save_png(overlay_panel(to_rgb_uint8(image), amap.numpy(), scale), out_dir / f"{path.stem}_overlay.png")
            yield {"path": str(path), "pred_score": float(score)}

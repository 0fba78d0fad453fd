"""Evaluate a Detector on an MVTec-layout test set: metrics.json, scores.csv and heatmap overlays.

metrics.json holds `image_auroc`, `pixel_auroc`, `aupro` (FPR <= 0.3) and `per_kind` (image AUROC
of each defect kind against the good images), plus timing and the settings that produced them.
Pixel metrics are computed at `eval_size` (default: the model's image size): anomaly maps are
resized bilinearly, masks read from their files with nearest-neighbour resizing.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics
from .anomaly_map import filter_sizes
from .checkpoint import atomic_write, write_json
from .data import GOOD, Sample, load_image, load_mask, test_samples
from .inference import Detector
from .report import overlay_panel, save_png, to_rgb_uint8


def evaluate(
    detector: Detector,
    root: str | Path,
    out_dir: str | Path,
    eval_size: int | None = None,
    batch_size: int = 8,
    heatmaps: bool = True,
    progress: bool = False,
) -> dict:
    """Score every test image of `root`, write results into `out_dir`, return the metrics dict."""
    out_dir = Path(out_dir)
    cfg = detector.cfg
    size = cfg.model.image_size
    eval_size = eval_size or size
    samples = test_samples(root)
    maps = np.zeros((len(samples), eval_size, eval_size), dtype=np.float32)
    masks = np.zeros((len(samples), eval_size, eval_size), dtype=bool)
    scores = np.zeros(len(samples), dtype=np.float64)
    pictures = []  # uint8 copies of the inputs, for the overlays
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress, leave=False)
    for first in range(0, len(samples), batch_size):
        chunk = samples[first : first + batch_size]
        images = torch.stack([load_image(s.path, size, cfg.data.color) for s in chunk])
        batch_maps, batch_scores = detector.predict(images)
        if eval_size != size:
            batch_maps = F.interpolate(batch_maps[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[:, 0]
        maps[first : first + len(chunk)] = batch_maps.numpy()
        pictures.extend(to_rgb_uint8(image) for image in images)
        scores[first : first + len(chunk)] = batch_scores.numpy()
        for i, sample in enumerate(chunk):
            if sample.mask_path is not None:
                masks[first + i] = load_mask(sample.mask_path, eval_size).numpy()
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - start

    labels = np.array([s.label for s in samples])
    with_masks = any(s.mask_path is not None for s in samples)
    pixel = (maps, masks) if with_masks else (None, None)  # image labels only: no pixel metrics
    result = metrics.evaluation_metrics(scores, labels, [s.kind for s in samples], *pixel)
    result.update(
        images=len(samples),
        eval_size=eval_size,
        seconds=round(seconds, 2),
        ms_per_image=round(1000 * seconds / len(samples), 2),
        device=str(detector.device),
        threads=torch.get_num_threads(),
        anomaly_map_filters=filter_sizes(cfg.score),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_scores(out_dir / "scores.csv", samples, scores, root)
    if heatmaps:
        _write_heatmaps(out_dir / "heatmaps", samples, pictures, maps, masks, progress)
    write_json(out_dir / "metrics.json", result)
    return result


def _write_scores(path: Path, samples: list[Sample], scores: np.ndarray, root: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "kind", "label", "pred_score"])
    for sample, score in zip(samples, scores):
        writer.writerow([sample.path.relative_to(root), sample.kind, sample.label, f"{score:.8g}"])
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def _write_heatmaps(
    folder: Path, samples: list[Sample], pictures: list[np.ndarray], maps: np.ndarray, masks: np.ndarray, progress: bool
) -> None:
    """One PNG per test image: image | heatmap overlay | mask, on one colour scale for all images."""
    vmax = float(np.quantile(maps, 0.999))
    for i, sample in enumerate(tqdm(samples, desc="heatmaps", disable=not progress, leave=False)):
        mask = masks[i] if sample.kind != GOOD else None
        panel = overlay_panel(pictures[i], maps[i], vmax, mask)
        save_png(panel, folder / sample.kind / f"{sample.path.stem}.png")

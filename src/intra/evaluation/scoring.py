"""Scoring a test set: every image of an MVTec-layout test folder through a Detector, then its metrics.

`evaluate(detector, root)` returns an `Evaluation`: the metrics (`image_auroc`, `pixel_auroc`,
`aupro` at FPR <= 0.3, `per_kind` image AUROC, `thresholds`: the run's stored thresholds with the F1
they reach here beside the F1-optimal ones, `inpainting`: the network's error on the good test
images against trivial fills, `localisation`: how often the image score's peak and the map's maximum
fall on the defect, and how many flagged images have no region, timing and settings) and the per-image arrays they come from.
Nothing is written: `outputs.write_evaluation` writes the files. Pixel metrics are computed at the
resolution each image is scored at (`data.resize`: model.image_size squared, or the image's own
aspect at one scale), or with `eval_size` at a short side of that many pixels: anomaly maps are
resized bilinearly, masks read from their files with nearest-neighbour resizing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import ScoreConfig
from ..core.anomaly_map import filter_sizes
from ..data.datasets import GOOD, Sample, test_samples
from ..data.geometry import Geometry, warn_distorted
from ..data.images import image_size, load_image, load_mask
from ..errors import IntraError
from ..inference.detector import Detector
from ..pictures import to_rgb_uint8
from ..runtime import machine
from . import metrics
from .inpainting import best_fill, fill_errors, squared_error

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """A scored test set: the metrics and the arrays behind them, one entry per sample."""

    root: Path
    samples: list[Sample]
    scores: np.ndarray  # (n,) image scores
    peaks: np.ndarray  # (n, 2) where each score was found: (x, y) as fractions of width and height
    maps: list[np.ndarray]  # (h, w) float32 anomaly maps at the metric resolution
    masks: list[np.ndarray] | None  # (h, w) bool ground truth (good images: empty); None: image labels only
    pictures: list[np.ndarray]  # (h, w, 3) uint8 inputs at the map's resolution, for overlays
    metrics: dict
    kind_rows: list[dict]  # per_kind_rows

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])


def evaluate(
    detector: Detector, root: str | Path, eval_size: int | None = None, batch_size: int = 8, progress: bool = False
) -> Evaluation:
    """Score every test image of `root` (MVTec AD layout) and compute the metrics; writes nothing."""
    root = Path(root)
    cfg = detector.cfg
    geometry = Geometry.of(cfg)
    samples = test_samples(root)
    labels_only = all(s.mask_path is None for s in samples)
    # Every image's metric resolution, and its mask, first: a bad mask fails before the long inference.
    sizes = [image_size(s.path) for s in samples]
    shapes = [metric_shape(geometry.target(*size), eval_size) for size in sizes]
    distorted = warn_distorted(
        geometry, [s.path for s in samples], sizes, "test", "resized unlike the training images, so less reliable"
    )
    masks = [
        np.zeros(shape, bool) if s.mask_path is None else load_mask(s.mask_path, shape).numpy()
        for s, shape in zip(samples, shapes)
    ]
    if not labels_only and not any(mask.any() for mask in masks):
        raise IntraError(
            f"every mask in {root / 'ground_truth'} is empty{' at --eval-size ' + str(eval_size) if eval_size else ''}: "
            "pixel metrics need defect pixels"
        )
    maps, pictures, scores, peaks = [], [], np.zeros(len(samples)), np.zeros((len(samples), 2))
    good_error, good_fills, good_count = 0.0, dict.fromkeys(("ring", "smooth", "flat"), 0.0), 0
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress, leave=False)
    for first in range(0, len(samples), batch_size):
        chunk = samples[first : first + batch_size]
        images = [load_image(s.path, geometry, cfg.data.color) for s in chunk]
        seen = detector.inspect(images)
        good = [i for i, s in enumerate(chunk) if s.kind == GOOD]
        if good:  # inpainting quality on the held-out normal images
            shown, rebuilt = [seen.images[i].cpu() for i in good], [seen.reconstructions[i].cpu() for i in good]
            good_error += float(squared_error(rebuilt, shown).sum())
            for name, value in fill_errors(shown, cfg.model.patch_size).items():
                good_fills[name] += value * len(shown)
            good_count += len(shown)
        for image, amap, shape in zip(images, seen.maps, shapes[first : first + len(chunk)]):
            maps.append(resized(amap, shape).numpy().astype(np.float32))
            pictures.append(to_rgb_uint8(resized(image, shape)))
        scores[first : first + len(chunk)] = seen.scores.numpy()
        peaks[first : first + len(chunk)] = seen.peaks.numpy()
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - start

    labels = np.array([s.label for s in samples])
    pixel_masks = None if labels_only else masks
    result = metrics.evaluation_metrics(
        scores, labels, [s.kind for s in samples], None if labels_only else maps, pixel_masks
    )
    result["thresholds"] = metrics.f1_report(scores, labels, None if labels_only else maps, pixel_masks, detector.stats)
    if not labels_only:
        result["localisation"] = metrics.localisation(peaks, maps, masks, scores, detector.stats)
    if good_count:
        fills = {name: value / good_count for name, value in good_fills.items()}
        network = good_error / good_count
        result["inpainting"] = {"images": good_count, "network": network, **fills, "ratio": network / best_fill(fills)}
    result.update(
        images=len(samples),
        resized_unlike_training=distorted,  # test images stretched or enlarged (Geometry.distortion)
        eval_size=eval_size or "as scored",
        seconds=round(seconds, 2),
        ms_per_image=round(1000 * seconds / len(samples), 2),
        device=str(detector.device),
        threads=torch.get_num_threads(),
        backend=detector.backend.describe(),
        machine=machine(detector.device),
        model=_geometry_text(cfg),
        anomaly_map_filters=filter_sizes(cfg.score),
        anomaly_map_difference=difference_text(cfg.score),
        anomaly_map_normalisation=normalisation(cfg.score),
        # The image score: the anomaly map's maximum, or that of a named scoring's own map (score.image_scoring).
        image_score=f"max of the {cfg.score.image_scoring} map"
        if cfg.score.image_scoring
        else "max of the anomaly map",
    )
    rows = per_kind_rows(samples, scores, maps, pixel_masks, detector.stats.get("image_threshold"))
    return Evaluation(root, samples, scores, peaks, maps, pixel_masks, pictures, result, rows)


def difference_text(score: ScoreConfig) -> str:
    """What the anomaly map compares at each scale, in words."""
    signed = f"{score.signed_weight:g} x |smoothed signed difference|"
    return {"gms": "1 - GMS", "signed": signed, "both": f"1 - GMS + {signed}"}[score.difference]


def normalisation(score: ScoreConfig) -> str:
    """How the anomaly map uses the training statistics, in words."""
    if not score.normalize:
        return "none"
    return "z-score" if score.zscore else "squared deviation from the mean map"


def metric_shape(scored: tuple[int, int], eval_size: int | None) -> tuple[int, int]:
    """The (height, width) pixel metrics use for an image scored at `scored`: that, or a short side of eval_size."""
    if not eval_size:
        return scored
    factor = eval_size / min(scored)
    return max(1, round(scored[0] * factor)), max(1, round(scored[1] * factor))


def resized(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(h, w) or (C, h, w) -> the same at `shape`, bilinear; unchanged when already there."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    batch = x[None, None] if x.dim() == 2 else x[None]
    out = F.interpolate(batch.float(), size=shape, mode="bilinear", align_corners=False)
    return out[0, 0] if x.dim() == 2 else out[0]


def _geometry_text(cfg) -> str:
    m, d = cfg.model, cfg.data
    size = f"{m.image_size} px square" if d.resize == "square" else f"aspect kept at scale {d.scale:.3g}"
    return f"{size}, patch {m.patch_size}, window {m.window}, statistics per {'pixel' if d.kind == 'object' else 'border distance'}"


KIND_COLUMNS = ["kind", "images", "image_auroc", "pixel_auroc", "aupro", "defect_pixels", "mean_score", "flagged"]


def per_kind_rows(
    samples: list[Sample],
    scores: np.ndarray,
    maps: list[np.ndarray],
    masks: list[np.ndarray] | None,
    threshold: float | None,
) -> list[dict]:
    """One row per kind (good first): AUROCs and AUPRO of the kind against the good images, its share of
    all the test set's defect pixels (its weight in the pooled pixel AUROC), flagged share.

    masks None (image labels only): no pixel columns.
    """
    kinds = np.array([s.kind for s in samples])
    labels = np.array([s.label for s in samples])
    good = kinds == GOOD
    defect_pixels = np.array([0 if masks is None else int(masks[i].sum()) for i in range(len(samples))])
    all_defect_pixels = max(int(defect_pixels.sum()), 1)
    rows = []
    for kind in [GOOD] + sorted(set(kinds) - {GOOD}):
        chosen = kinds == kind
        row = {
            "kind": kind,
            "images": int(chosen.sum()),
            "image_auroc": None,
            "pixel_auroc": None,
            "aupro": None,
            "defect_pixels": None if masks is None else float(defect_pixels[chosen].sum() / all_defect_pixels),
            "mean_score": float(scores[chosen].mean()),
            "flagged": None if threshold is None else float(np.mean(scores[chosen] >= threshold)),
        }
        if kind != GOOD:
            both = np.flatnonzero(chosen | good)
            row["image_auroc"] = metrics.auroc(scores[both], labels[both])
            if masks is not None and not any(masks[i].any() for i in np.flatnonzero(chosen)):
                log.warning("test/%s: its masks hold no defect pixel, so it has no pixel metrics", kind)
            elif masks is not None:
                pick_maps, pick_masks = [maps[i] for i in both], [masks[i] for i in both]
                row.update(
                    pixel_auroc=metrics.pixel_auroc(pick_maps, pick_masks), aupro=metrics.aupro(pick_maps, pick_masks)
                )
        rows.append(row)
    return rows

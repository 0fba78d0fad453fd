"""Calibration: what a trained network needs before it can score, as one named stage after training.

`calibrate(detector, train_images, val_images)`:
1. the mean (and standard deviation) of the training images' difference maps (`score.normalize`,
   `score.zscore`), from the training split only, never the held-out images;
2. the decision thresholds, from the held-out normal (validation) images scored with those maps.
   A user's validation set usually holds no anomaly, and an F1-optimal threshold fitted on such a
   set is the lowest score (everything flagged). So the stored thresholds are quantiles of what
   the held-out *normal* images produce: the image threshold is the
   `score.image_threshold_quantile` (0.99) quantile of their image scores, the pixel threshold the
   `score.pixel_threshold_quantile` (0.999) quantile of all their anomaly-map pixels. A score or
   pixel at or above its threshold is anomalous (anomalib's `pred_label`, `pred_mask`).

`fit` calls it once training is over; `rescore` calls it again whenever scoring settings change
after training (`intra evaluate --set score.KEY=...`, benchmark `score` rows), on the same training
and validation images `fit` used (the split is drawn again from the run's seed), so statistics,
thresholds and the overlay colour scale always belong to the scoring in use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, ScoreConfig, with_score_overrides
from ..core import anomaly_map
from ..data.datasets import training_images, validation_split
from ..data.defects import paste_defects
from ..data.geometry import Geometry
from ..data.images import load_images, standardize
from ..errors import IntraError
from . import choice
from .detector import Detector, Images

log = logging.getLogger(__name__)

# Score keys that change how the network runs, not what it scores: no recalibration needed.
RUNTIME_KEYS = ("chunk_windows", "memory_mb")


def statistics_subset(images: Images, cfg: Config) -> Images:
    """The training images the statistics average: all, or `score.mean_map_images` of them evenly spaced."""
    count = cfg.score.mean_map_images
    if not count or count >= len(images):
        return images
    chosen = torch.linspace(0, len(images) - 1, count).round().long()
    return images[chosen] if isinstance(images, torch.Tensor) else [images[i] for i in chosen]


def batches(images: Images, size: int) -> list[Images]:
    """Consecutive batches of at most `size` images (tensor slices, or sub-lists)."""
    return [images[i : i + size] for i in range(0, len(images), size)]


def statistics_of(cfg: Config, diffs: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of training difference maps (each (H, W)).

    data.kind = object: per pixel, (H, W), and every map must have one size; texture: per border
    bin ((depth + 1)^2, see `core.anomaly_map.border_bins`), over maps of any sizes.
    """
    depth = anomaly_map.statistics_depth(cfg.model)
    total = squares = count = None
    for diff in diffs:
        diff = diff.double()
        if cfg.data.kind == "object":
            if total is not None and total.shape != diff.shape:
                raise IntraError(
                    f"data.kind = object needs every training image at one size, found {tuple(total.shape)} and "
                    f"{tuple(diff.shape)} (use data.kind = texture, or data.resize = square)"
                )
            values, squared, ones = diff, diff * diff, torch.ones_like(diff)
        else:
            bins = anomaly_map.border_bins(tuple(diff.shape), depth, diff.device).flatten()
            zero = torch.zeros((depth + 1) ** 2, dtype=torch.float64, device=diff.device)
            flat = diff.flatten()
            values, squared, ones = (zero.scatter_add(0, bins, v) for v in (flat, flat * flat, torch.ones_like(flat)))
        total = values if total is None else total + values
        squares = squared if squares is None else squares + squared
        count = ones if count is None else count + ones
    if total is None:
        raise IntraError("no training images to compute the mean difference map from")
    if cfg.data.kind != "object":
        shape = (depth + 1, depth + 1)
        total, squares, count = total.view(shape), squares.view(shape), count.view(shape)
    mean = total / count.clamp_min(1)
    return mean.float(), (squares / count.clamp_min(1) - mean**2).clamp_min(0).sqrt().float()


def difference_statistics(detector: Detector, batched: Iterable[Images]) -> tuple[torch.Tensor, torch.Tensor]:
    """`statistics_of` the difference maps of training images given in batches."""
    return statistics_of(detector.cfg, (diff for images in batched for diff in detector.difference_maps(images)))


def _pairs(detector: Detector, images: Images, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image as the network saw it, reconstruction) for every image, reconstructed `size` at a time."""
    pairs = []
    for batch in batches(images, size):
        prepared = detector.prepare(batch)
        pairs.extend(zip(prepared, detector.reconstruct(prepared)))
    return pairs


def choose_scoring(detector: Detector, train_images: Images, val_images: Images, size: int) -> tuple[Config, dict]:
    """The candidate scoring that finds defects pasted into the validation images best (see `choice`)."""
    cfg = detector.cfg
    generator = torch.Generator().manual_seed(cfg.train.seed + 2)
    normal = _pairs(detector, val_images, size)
    defective, masks = paste_defects([x for x, _ in normal], generator)
    name, report = choice.choose(
        cfg, statistics_of, _pairs(detector, statistics_subset(train_images, cfg), size), normal,
        _pairs(detector, defective, size), masks,
    )  # fmt: skip
    log.info("scoring chosen on synthetic defects: %s (%s)", name, report[name])
    return choice.with_scoring(cfg, name), {"chosen": name, "candidates": report}


def thresholds(val_scores: np.ndarray, val_maps, cfg: ScoreConfig) -> dict:
    """Thresholds from normal images: scores (n,) and anomaly maps ((n, H, W) or a list of (h, w)) -> stats entries."""
    val_scores = np.asarray(val_scores, np.float64)
    pixels = np.concatenate([np.asarray(m, np.float32).ravel() for m in val_maps])
    return {
        "image_threshold": float(np.quantile(val_scores, cfg.image_threshold_quantile)),
        "pixel_threshold": float(np.quantile(pixels, cfg.pixel_threshold_quantile)),
        "threshold_source": f"{len(val_scores)} held-out normal images; quantiles "
        f"{cfg.image_threshold_quantile} (image), {cfg.pixel_threshold_quantile} (pixel)",
        "val_score_max": float(val_scores.max()),
        # Overlays saturate at twice the hottest pixel seen on held-out normal images.
        "overlay_vmax": 2 * float(pixels.max()),
    }


def calibrate(
    detector: Detector, train_images: Images, val_images: Images, progress: bool = False, choose: bool = True
) -> Detector:
    """The calibration stage: the scoring (chosen on synthetic defects when score.choose = auto and
    `choose`), the training statistics, then the thresholds from the validation images.

    train_images and val_images as read ((n, C, H, W), or lists of (C, h, w)). Returns a Detector on
    the same network, device, dtype, compile setting and backend, with the statistics and
    thresholds of its scoring (detector.cfg.score); detector's other stats (epochs, timings) are kept.
    """
    cfg = detector.cfg
    if len(val_images) < 10:
        log.warning("thresholds calibrated on only %d validation image(s): expect them to be rough", len(val_images))
    raw = detector.like(cfg, None, None, {})
    size = max(1, cfg.score.chunk_windows // raw.plan((cfg.model.grid, cfg.model.grid)).passes)
    stats = dict(detector.stats)
    if choose and cfg.score.choose == "auto":
        cfg, stats["scoring_choice"] = choose_scoring(raw, train_images, val_images, size)
        raw = detector.like(cfg, None, None, {})
    chosen = batches(statistics_subset(train_images, cfg), size)
    mean_map, std_map = difference_statistics(raw, tqdm(chosen, desc="mean map", disable=not progress, leave=False))
    calibrated = detector.like(cfg, mean_map, std_map, stats)
    val_maps, val_scores = [], []
    for images in batches(val_images, size):
        maps, scores = calibrated.predict(images)
        val_maps.extend(maps)
        val_scores.append(scores)
    calibrated.stats.update(
        val_images=len(val_images), **thresholds(torch.cat(val_scores).numpy(), val_maps, cfg.score)
    )
    return calibrated


def training_split(data: str | Path, cfg: Config) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The (training, validation) images `fit` used for a run of `cfg` on `data`, read again."""
    paths = training_images(data)
    train_idx, val_idx = validation_split(len(paths), cfg.train, torch.Generator().manual_seed(cfg.train.seed))
    geometry = Geometry.of(cfg)

    def read(indices: torch.Tensor) -> list[torch.Tensor]:
        images = load_images([paths[i] for i in indices], geometry, cfg.data.color)
        return [standardize(x) for x in images] if cfg.data.standardize else images

    return read(train_idx), read(val_idx)


def rescore(detector: Detector, overrides: dict[str, Any], data: str | Path | None) -> Detector:
    """`detector` with score.* keys changed and, unless only runtime keys changed, calibrated again on `data`.

    Keeps the caller's device, dtype, compile setting and backend.
    """
    cfg = with_score_overrides(detector.cfg, overrides)
    changed = [name for name in vars(cfg.score) if getattr(cfg.score, name) != getattr(detector.cfg.score, name)]
    if all(name in RUNTIME_KEYS for name in changed):
        return detector.like(cfg, detector.mean_map, detector.std_map, dict(detector.stats))
    if data is None:
        raise IntraError(f"changing score.{changed[0]} needs the training data (--data) to calibrate again")
    train, val = training_split(data, cfg)
    log.info(
        "calibrating again for score.%s on %d training and %d validation images",
        ", ".join(changed),
        len(train),
        len(val),
    )
    return calibrate(detector.like(cfg, None, None, dict(detector.stats)), train, val, choose=False)

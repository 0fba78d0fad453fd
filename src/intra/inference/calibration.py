"""Calibration: the statistics and thresholds a trained network needs before it can score, and rescoring.

Decision thresholds are calibrated on normal images at training time. A user's validation set
usually holds no anomaly, and an F1-optimal threshold fitted on such a set is the lowest score
(everything flagged). So the stored thresholds are quantiles of what the held-out *normal* images
produce: the image threshold is the `score.image_threshold_quantile` (0.99) quantile of their
image scores, the pixel threshold the `score.pixel_threshold_quantile` (0.999) quantile of all
their anomaly-map pixels. A score or pixel at or above its threshold is anomalous (anomalib's
`pred_label`, `pred_mask`).

Changing the scoring settings of a trained detector without retraining (score.* at evaluate time):

The stored training mean map was computed with the training-time values of `score.scales`,
`score.mean_filter`, `score.gaussian_sigma` (the map), `score.cover_spacing` (the
reconstructions) and `score.mean_map_images`; when any of them changes, the mean map is
recomputed from the same training images `fit` used (the images of `data` minus the validation
split, which `split_validation` draws again from the run's seed). `score.normalize` and
`score.chunk_windows` need no refit.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ScoreConfig, apply_overrides
from ..data.datasets import training_images
from ..data.images import load_images
from ..errors import IntraError
from .detector import Detector

log = logging.getLogger(__name__)


def calibrate(val_scores: np.ndarray, val_maps: np.ndarray, cfg: ScoreConfig) -> dict:
    """Thresholds from normal images: scores (n,) and anomaly maps (n, H, W) -> stats entries."""
    val_scores, val_maps = np.asarray(val_scores, np.float64), np.asarray(val_maps, np.float32)
    return {
        "image_threshold": float(np.quantile(val_scores, cfg.image_threshold_quantile)),
        "pixel_threshold": float(np.quantile(val_maps, cfg.pixel_threshold_quantile)),
        "threshold_source": f"{len(val_scores)} held-out normal images; quantiles "
        f"{cfg.image_threshold_quantile} (image), {cfg.pixel_threshold_quantile} (pixel)",
    }


MAP_KEYS = ("scales", "mean_filter", "gaussian_sigma", "cover_spacing", "mean_map_images")


def with_score_overrides(detector: Detector, overrides: dict[str, Any], data: str | Path | None) -> Detector:
    """A Detector sharing detector's model, with score.* keys set; the mean map refitted if needed."""
    from ..training.fit import mean_map_subset, split_validation  # train imports inference; keep this module light

    bad = [key for key in overrides if not key.startswith("score.")]
    if bad:
        raise IntraError(f"only score.* keys can change after training, not {', '.join(bad)}")
    cfg = apply_overrides(copy.deepcopy(detector.cfg), overrides)
    changed = any(getattr(cfg.score, k) != getattr(detector.cfg.score, k) for k in MAP_KEYS)
    changed = changed or (cfg.score.zscore and detector.std_map is None)  # a run from before zscore
    new = Detector(
        detector.model, cfg, detector.mean_map, detector.device, dict(detector.stats), std_map=detector.std_map
    )
    if changed and cfg.score.normalize:
        if data is None:
            raise IntraError("changing score.scales or the filters needs the training data to refit the mean map")
        paths = training_images(data)
        train_idx, _ = split_validation(len(paths), cfg, torch.Generator().manual_seed(cfg.train.seed))
        chosen = mean_map_subset([paths[i] for i in train_idx], cfg)
        images = load_images(chosen, cfg.model.image_size, cfg.data.color)
        log.info("refitting the training mean map on %d images for the new score settings", len(images))
        new.fit_mean_map(images.split(max(1, cfg.score.chunk_windows // cfg.model.grid**2)))
    return new

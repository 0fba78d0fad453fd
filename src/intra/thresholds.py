"""Decision thresholds: calibrated on normal images at training time, compared with F1 at evaluation.

A user's validation set usually holds no anomaly, and an F1-optimal threshold fitted on such a set
is the lowest score (everything flagged: F1 cannot tell better with no positives). So the stored
thresholds are quantiles of what the held-out *normal* images produce: the image threshold is the
`score.image_threshold_quantile` (0.99) quantile of their image scores, the pixel threshold the
`score.pixel_threshold_quantile` (0.999) quantile of all their anomaly-map pixels. A score or pixel
at or above its threshold is anomalous (anomalib's `pred_label`, `pred_mask`).

At evaluation, with labelled anomalies, `f1_report` adds the F1-optimal thresholds and the F1 the
stored ones reach, for information: the stored thresholds are never replaced.
"""

from __future__ import annotations

import numpy as np

from . import metrics
from .config import ScoreConfig


def calibrate(val_scores: np.ndarray, val_maps: np.ndarray, cfg: ScoreConfig) -> dict:
    """Thresholds from normal images: scores (n,) and anomaly maps (n, H, W) -> stats entries."""
    val_scores, val_maps = np.asarray(val_scores, np.float64), np.asarray(val_maps, np.float32)
    return {
        "image_threshold": float(np.quantile(val_scores, cfg.image_threshold_quantile)),
        "pixel_threshold": float(np.quantile(val_maps, cfg.pixel_threshold_quantile)),
        "threshold_source": f"{len(val_scores)} held-out normal images; quantiles "
        f"{cfg.image_threshold_quantile} (image), {cfg.pixel_threshold_quantile} (pixel)",
    }


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of predicting positive for score >= threshold (as `metrics.f1_max`)."""
    predicted, labels = np.asarray(scores).ravel() >= threshold, np.asarray(labels).ravel().astype(bool)
    tp = float(np.sum(predicted & labels))
    denominator = float(predicted.sum() + labels.sum())
    return 2 * tp / denominator if denominator else 0.0


def f1_report(
    scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None, masks: np.ndarray | None, stored: dict
) -> dict:
    """metrics.json "thresholds": per level, the stored threshold and its F1, the F1-optimal one and its F1.

    Without masks (a test set with image labels only) there is no pixel level.
    """
    report = {}
    for level, values, truth in (("image", scores, labels), ("pixel", maps, masks)):
        if values is None or truth is None:
            continue
        best_f1, best_threshold = metrics.f1_max(values, truth)
        entry = {"f1_optimal_threshold": best_threshold, "f1_max": best_f1}
        threshold = stored.get(f"{level}_threshold")
        if threshold is not None:
            entry = {"stored_threshold": threshold, "f1_at_stored": f1_at(values, truth, threshold), **entry}
        report[level] = entry
    return report

"""Evaluation metrics as pure functions of numpy arrays: ROC/AUROC, PRO/AUPRO, F1-max, F1 at a threshold.

`auroc` is exact (ties count one half, as scikit-learn's `roc_auc_score`). `aupro` follows the
MVTec AD reference: every connected defect region (8-connectivity) counts equally; the PRO curve
is the mean per-region overlap against the false-positive rate on defect-free pixels, integrated
up to FPR 0.3 and divided by 0.3, so a perfect detector scores 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral of y over x (numpy renamed trapz between versions)."""
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _ranked_curve(
    scores: np.ndarray, gains: np.ndarray, costs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (costs, gains) at every distinct threshold, from the highest score down.

    Returns (x, y, thresholds) with a leading (0, 0) point, x and y the running sums of costs
    and gains over all items scoring >= threshold.
    """
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    x = np.cumsum(costs[order], dtype=np.float64)
    y = np.cumsum(gains[order], dtype=np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    return np.r_[0.0, x[last_of_tie]], np.r_[0.0, y[last_of_tie]], np.r_[np.inf, scores[last_of_tie]]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for scores (n,) and binary labels (n,)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("ROC needs both positive and negative labels")
    fp, tp, thresholds = _ranked_curve(scores, labels.astype(np.float64), (~labels).astype(np.float64))
    return fp / negatives, tp / positives, thresholds


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal over distinct thresholds)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return trapezoid(tpr, fpr)


def flatten(arrays) -> np.ndarray:
    """Every value of an array, or of a sequence of arrays of any shapes (maps of images of several sizes), in order."""
    if isinstance(arrays, np.ndarray):
        return arrays.ravel()
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


def pixel_auroc(maps, masks) -> float:
    """AUROC over every pixel: maps and masks (n, H, W) or sequences of (h, w) arrays of matching shapes."""
    return auroc(flatten(maps), flatten(masks))


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, pro, thresholds) for anomaly maps and boolean masks: (n, H, W) arrays or sequences of (h, w) arrays."""
    values = flatten(maps).astype(np.float32)
    truth = flatten(masks).astype(bool)
    regions = []
    count = 0
    for mask in masks:
        labelled, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3)))
        regions.append(np.where(labelled > 0, labelled + count, 0).ravel())
        count += n
    regions = np.concatenate(regions)
    background = (~truth).sum()
    if count == 0 or background == 0:
        raise ValueError("PRO needs at least one defect region and some defect-free pixels")
    areas = np.bincount(regions, minlength=count + 1).astype(np.float64)
    gains = np.where(regions > 0, 1.0 / (count * areas[regions]), 0.0)
    costs = (~truth) / float(background)
    return _ranked_curve(values, gains, costs)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit."""
    fpr, pro, _ = pro_curve(maps, masks)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) for x in [0, limit], y interpolated linearly at the limit."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < len(x):
        nxt = keep.sum()
        y_limit = np.interp(limit, [x[nxt - 1], x[nxt]], [y[nxt - 1], y[nxt]])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return trapezoid(ys, xs)


def f1_max(scores, labels) -> tuple[float, float]:
    """(best F1, the threshold reaching it), predicting positive for score >= threshold."""
    scores = flatten(scores).astype(np.float64)
    labels = flatten(labels).astype(bool)
    fp, tp, thresholds = _ranked_curve(scores, labels.astype(np.float64), (~labels).astype(np.float64))
    fn = labels.sum() - tp
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def evaluation_metrics(
    scores: np.ndarray, labels: np.ndarray, kinds: list[str], maps: np.ndarray | None, masks: np.ndarray | None
) -> dict:
    """metrics.json content: image_auroc, pixel_auroc, aupro, per_kind {kind: image AUROC vs good}.

    Without masks (a set with image labels only) pixel_auroc and aupro are None.
    """
    scores, labels, kinds_arr = np.asarray(scores), np.asarray(labels), np.asarray(kinds)
    per_kind = {}
    for kind in sorted(set(kinds) - {"good"}):
        chosen = (kinds_arr == kind) | (labels == 0)
        per_kind[kind] = auroc(scores[chosen], labels[chosen])
    return {
        "image_auroc": auroc(scores, labels),
        "pixel_auroc": None if masks is None else pixel_auroc(maps, masks),
        "aupro": None if masks is None else aupro(maps, masks),
        "per_kind": per_kind,
    }


def counts_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives) of predicting positive for score >= threshold."""
    predicted, labels = flatten(scores) >= threshold, flatten(labels).astype(bool)
    tp, fp = int(np.sum(predicted & labels)), int(np.sum(predicted & ~labels))
    return tp, fp, int(labels.sum()) - tp, int((~labels).sum()) - fp


def _rates(tp: int, fp: int, fn: int, tn: int) -> tuple[float, float]:
    """(true positive rate, false positive rate) of those counts; 0 for an empty class."""
    return (tp / (tp + fn) if tp + fn else 0.0), (fp / (fp + tn) if fp + tn else 0.0)


def _f1(tp: int, fp: int, fn: int, tn: int) -> float:
    """F1 of those counts (0 when nothing is positive or predicted positive)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def rates_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(true positive rate, false positive rate) of predicting positive for score >= threshold; 0 for an empty class."""
    return _rates(*counts_at(scores, labels, threshold))


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of predicting positive for score >= threshold (as `f1_max`)."""
    return _f1(*counts_at(scores, labels, threshold))


def f1_report(
    scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None, masks: np.ndarray | None, stored: dict
) -> dict:
    """metrics.json "thresholds": per level, the stored threshold with its F1 and what it flags (`tpr_at_stored`:
    the share of the defective images or pixels at or above it, `fpr_at_stored`: the share of the normal
    ones: the false alarms a user of `intra predict` will see), then the F1-optimal threshold and its F1.

    Without masks (a test set with image labels only) there is no pixel level.
    """
    report = {}
    for level, values, truth in (("image", scores, labels), ("pixel", maps, masks)):
        if values is None or truth is None:
            continue
        values, truth = flatten(values), flatten(truth)  # every pixel of every map, once
        best_f1, best_threshold = f1_max(values, truth)
        entry = {"f1_optimal_threshold": best_threshold, "f1_max": best_f1}
        threshold = stored.get(f"{level}_threshold")
        if threshold is not None:
            counts = counts_at(values, truth, threshold)
            tpr, fpr = _rates(*counts)
            entry = {
                "stored_threshold": threshold,
                "f1_at_stored": _f1(*counts),
                "tpr_at_stored": tpr,
                "fpr_at_stored": fpr,
                **entry,
            }
        report[level] = entry
    return report


def localisation(
    peaks: np.ndarray,
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    scores: np.ndarray,
    stored: dict,
) -> dict:
    """metrics.json "localisation": does what a user is shown point at the defect?

    On the defective images (those with defect pixels): the share whose image-score peak (`peaks`, (n, 2)
    (x, y) as fractions of width and height) lies on the defect, and the share whose anomaly-map maximum
    does; a peak counts within a 32nd of the mask's shorter side (at least 1 px) of a defect pixel, as
    smoothed maps put a thin scratch's peak beside it. On every test image: how many the stored
    image threshold flags, and how many of those have no pixel above the stored pixel threshold
    (a verdict without a region).
    """
    on_score, on_map = [], []
    for (x, y), amap, mask in zip(peaks, maps, masks):
        if not mask.any():
            continue
        h, w = mask.shape
        tolerance = max(1, round(min(h, w) / 32))
        near = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=tolerance)
        on_score.append(bool(near[min(int(y * h), h - 1), min(int(x * w), w - 1)]))
        on_map.append(bool(near.flat[int(np.argmax(amap))]))
    report = {
        "defective_images": len(on_score),
        "tolerance": "1/32 of the shorter side",
        "score_peak_on_defect": float(np.mean(on_score)) if on_score else None,
        "map_max_on_defect": float(np.mean(on_map)) if on_map else None,
    }
    image_threshold, pixel_threshold = stored.get("image_threshold"), stored.get("pixel_threshold")
    if image_threshold is not None and pixel_threshold is not None:
        flagged = np.asarray(scores) >= image_threshold
        regionless = [bool(f) and float(amap.max()) < pixel_threshold for f, amap in zip(flagged, maps)]
        report.update(flagged=int(flagged.sum()), flagged_without_region=int(sum(regionless)))
    return report

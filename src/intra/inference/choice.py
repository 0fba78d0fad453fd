"""Choosing the scoring from normal images alone (`score.choose = auto`, beyond the paper).

How an inpainting error becomes an anomaly map decides much of a detector's quality, and the right
choice depends on the data: small defects on a texture want fine scales and little smoothing, the
paper's coarse scales suit objects, dividing by the training standard deviation (`score.zscore`)
helps where normal images vary unevenly. Test labels are never used to choose. Instead, after
training, defects are pasted into the held-out normal images (`data.defects`: patches from
elsewhere, scratches, low-contrast stains, washed-out regions, each with an exact mask), every
candidate below is calibrated on the same training reconstructions, and the candidate with the best
mean of image AUROC, pixel AUROC and AUPRO on those synthetic defects is kept. The networks'
reconstructions are computed once: candidates differ only in the pure map functions.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from ..config import Config
from ..core import anomaly_map
from ..evaluation import metrics

log = logging.getLogger(__name__)

# Candidate scorings: the paper's (scales 1/2 and 1/4, 21 px mean filter, sigma 4), a fine one that
# keeps thin defects (scales 1 and 1/2, 7 px, sigma 2), one between, each with and without z-scores.
CANDIDATES: dict[str, dict] = {
    "paper": {"scales": (0.5, 0.25), "mean_filter": 21, "gaussian_sigma": 4.0, "zscore": False},
    "paper-z": {"scales": (0.5, 0.25), "mean_filter": 21, "gaussian_sigma": 4.0, "zscore": True},
    "middle": {"scales": (1.0, 0.5, 0.25), "mean_filter": 11, "gaussian_sigma": 3.0, "zscore": False},
    "middle-z": {"scales": (1.0, 0.5, 0.25), "mean_filter": 11, "gaussian_sigma": 3.0, "zscore": True},
    "fine": {"scales": (1.0, 0.5), "mean_filter": 7, "gaussian_sigma": 2.0, "zscore": False},
    "fine-z": {"scales": (1.0, 0.5), "mean_filter": 7, "gaussian_sigma": 2.0, "zscore": True},
}


def with_scoring(cfg: Config, name: str) -> Config:
    """cfg with the score settings of candidate `name` (normalised by the training statistics)."""
    chosen = copy.deepcopy(cfg)
    for key, value in CANDIDATES[name].items():
        setattr(chosen.score, key, value)
    chosen.score.normalize = True
    return chosen


def synthetic_metrics(
    normal: list[torch.Tensor], defective: list[torch.Tensor], masks: list[torch.Tensor]
) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of anomaly maps of normal and defective images (each (H, W)), and their mean."""
    maps = [m.cpu().numpy() for m in [*normal, *defective]]
    truth = [np.zeros(m.shape, bool) for m in normal] + [mask.cpu().numpy() for mask in masks]
    scores = np.array([m.max() for m in maps])
    labels = np.array([0] * len(normal) + [1] * len(defective))
    result = {
        "image_auroc": metrics.auroc(scores, labels),
        "pixel_auroc": metrics.pixel_auroc(maps, truth),
        "aupro": metrics.aupro(maps, truth),
    }
    result["score"] = float(np.mean(list(result.values())))
    return result


def choose(
    cfg: Config,
    statistics,
    train_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    normal_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    defect_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    masks: list[torch.Tensor],
) -> tuple[str, dict[str, dict]]:
    """The best candidate on the synthetic defects, and every candidate's metrics.

    Pairs are (image (C, H, W), reconstruction (C, H, W)); `statistics(cfg, diffs)` returns the
    (mean, std) statistics of training difference maps (see `calibration.statistics_of`).
    """
    report = {}
    for name in CANDIDATES:
        candidate = with_scoring(cfg, name)
        mean, std = statistics(candidate, _differences(candidate, train_pairs))
        normal = _normalized(candidate, _differences(candidate, normal_pairs), mean, std)
        defects = _normalized(candidate, _differences(candidate, defect_pairs), mean, std)
        report[name] = synthetic_metrics(normal, defects, masks)
        log.info("scoring %s on synthetic defects: %s", name, report[name])
    best = max(report, key=lambda name: report[name]["score"])  # the first listed on ties
    return best, report


def _differences(cfg: Config, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Difference maps (H, W) of (image, reconstruction) pairs under cfg's scoring."""
    return [anomaly_map.difference_map(x[None], r[None], cfg.score)[0] for x, r in pairs]


def _normalized(cfg: Config, diffs: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    """Anomaly maps from difference maps and the training statistics, as `Detector` computes them."""
    depth = anomaly_map.statistics_depth(cfg.model)
    out = []
    for diff in diffs:
        shape = tuple(diff.shape)
        mean_map = anomaly_map.expand_statistic(mean, shape, cfg.data.kind, depth)
        std_map = anomaly_map.expand_statistic(std, shape, cfg.data.kind, depth) if cfg.score.zscore else None
        out.append(anomaly_map.normalize(diff[None], mean_map, std_map, anomaly_map.std_floor(std))[0])
    return out

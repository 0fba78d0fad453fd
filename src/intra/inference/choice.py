"""Choosing the scoring from normal images alone (`score.choose = auto`, beyond the paper).

How an inpainting error becomes an anomaly map decides much of a detector's quality, and the right
choice depends on the data: small defects on a texture want fine scales and little smoothing, the
paper's coarse scales suit objects, dividing by the training standard deviation (`score.zscore`)
helps where normal images vary unevenly. It also depends on the task: a z-scored map ranks images
well because it discounts regions that vary on normal images, and for the same reason hides
defects there, which a raw map still outlines. So two scorings are chosen, one for the anomaly map
and one for the image score (`score.image_scoring`).

Test labels are never used to choose. Instead, after training, defects are pasted into the held-out
normal images (`data.defects`: patches from elsewhere, scratches, low-contrast stains, washed-out
regions, each with an exact mask), every candidate scoring (`config.IMAGE_SCORINGS`: the named
scorings on 1 - GMS plus the signed difference, see there why) is calibrated on the same training
reconstructions, and the map keeps the raw scoring (`config.MAP_SCORINGS`: no training mean map
subtracted) with the best mean of pixel AUROC and AUPRO on those synthetic defects, the image score
the candidate with the best image AUROC (ties, common when every pasted defect is found, go to the
one whose scores clear the normal images' by the widest margin). The network's reconstructions are
computed once: scorings differ only in the pure map functions.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..config import IMAGE_SCORINGS, MAP_SCORINGS, Config, ScoreConfig, scoring
from ..core import anomaly_map
from ..evaluation import metrics

log = logging.getLogger(__name__)


def with_scoring(cfg: Config, map_name: str, image_name: str | None = None) -> Config:
    """cfg with the anomaly map of scoring `map_name` and the image score of `image_name` (default: the map's)."""
    chosen = copy.deepcopy(cfg)
    chosen.score = scoring(cfg.score, map_name)
    chosen.score.image_scoring = "" if image_name in (None, map_name) else image_name
    return chosen


def synthetic_metrics(
    normal: list[torch.Tensor], defective: list[torch.Tensor], masks: list[torch.Tensor], pixels: bool = True
) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AUPRO of anomaly maps of normal and defective images (each (H, W)),
    and the two criteria: `map` (mean of the pixel metrics) and `image` (image AUROC). Without `pixels`
    the pixel metrics and `map` are None: they take most of the time, and only map candidates need them."""
    maps = [m.cpu().numpy() for m in [*normal, *defective]]
    truth = [np.zeros(m.shape, bool) for m in normal] + [mask.cpu().numpy() for mask in masks]
    scores = np.array([m.max() for m in maps])
    labels = np.array([0] * len(normal) + [1] * len(defective))
    result = {"image_auroc": metrics.auroc(scores, labels), "pixel_auroc": None, "aupro": None, "map": None}
    if pixels:
        result.update(pixel_auroc=metrics.pixel_auroc(maps, truth), aupro=metrics.aupro(maps, truth))
        result["map"] = (result["pixel_auroc"] + result["aupro"]) / 2
    result["image"] = result["image_auroc"]
    result["image_margin"] = image_margin(scores[labels == 0], scores[labels == 1])
    return result


def image_margin(normal: np.ndarray, defective: np.ndarray) -> float:
    """How far the median defective image's score clears the highest normal one, in standard deviations
    of the normal scores: what tells apart image scorings whose image AUROC is tied (often at 1.0)."""
    return float((np.median(defective) - normal.max()) / (normal.std() + 1e-12))


@dataclass
class Chosen:
    """What `choose` found: the map's scoring, the image score's, every scoring's metrics on the synthetic
    defects (`report`), and every scoring's training statistics (mean, std), which calibration then keeps
    for the chosen ones instead of computing them again."""

    map: str
    image: str
    report: dict[str, dict]
    statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]


def choose(
    cfg: Config,
    statistics,
    train_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    normal_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    defect_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    masks: list[torch.Tensor],
    every_pixel_metric: bool = False,
    candidates: tuple[str, ...] = IMAGE_SCORINGS,
) -> Chosen:
    """The best scoring of MAP_SCORINGS for the map and the best of `candidates` for the image score on the
    synthetic defects, every candidate's metrics (pixel metrics only for the map candidates, unless
    `every_pixel_metric`) and training statistics.

    Pairs are (image (C, H, W), reconstruction (C, H, W)); `statistics(cfg, diffs)` returns the
    (mean, std) statistics of training difference maps (see `calibration.statistics_of`). `candidates`
    (names of SCORINGS, holding MAP_SCORINGS, in SCORINGS order) is wider only in experiments.
    """
    if not set(MAP_SCORINGS) <= set(candidates):
        raise ValueError(f"the candidates {candidates} must hold every map candidate {MAP_SCORINGS}")
    report, kept, key, shared = {}, {}, None, None
    for name in candidates:
        candidate = with_scoring(cfg, name)
        # Scorings that differ only in normalisation share their difference maps and statistics; SCORINGS
        # (and so the candidates) lists them one after another, so the last ones computed are kept, and no more.
        if _difference_settings(candidate.score) != key:
            key = _difference_settings(candidate.score)
            shared = (
                statistics(candidate, differences(candidate, train_pairs)),
                differences(candidate, normal_pairs),
                differences(candidate, defect_pairs),
            )
        (mean, std), normal_diffs, defect_diffs = shared
        kept[name] = (mean, std)
        normal = _normalized(candidate, normal_diffs, mean, std)
        defects = _normalized(candidate, defect_diffs, mean, std)
        report[name] = synthetic_metrics(normal, defects, masks, pixels=every_pixel_metric or name in MAP_SCORINGS)
        log.info("scoring %s on synthetic defects: %s", name, report[name])
    # The first listed wins ties: the paper's scoring before the others. Pasted defects are often all
    # found (image AUROC 1.0 for several scorings), so there the wider margin decides.
    best_map = max(MAP_SCORINGS, key=lambda name: report[name]["map"])
    best_image = max(report, key=lambda name: (report[name]["image"], report[name]["image_margin"]))
    return Chosen(best_map, best_image, report, kept)


def _difference_settings(score: ScoreConfig) -> tuple:
    """The settings a difference map depends on (not its normalisation)."""
    return (tuple(score.scales), score.mean_filter, score.gaussian_sigma, score.difference, score.signed_weight)


def differences(cfg: Config, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Difference maps (H, W) of (image, reconstruction) pairs under cfg's scoring."""
    return [anomaly_map.difference_map(x[None], r[None], cfg.score)[0] for x, r in pairs]


def _normalized(cfg: Config, diffs: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    """Anomaly maps from difference maps and the training statistics, as `Detector` computes them."""
    if not cfg.score.normalize:
        return diffs
    depth = anomaly_map.statistics_depth(cfg.model)
    out = []
    for diff in diffs:
        shape = tuple(diff.shape)
        mean_map = anomaly_map.expand_statistic(mean, shape, cfg.data.kind, depth)
        std_map = anomaly_map.expand_statistic(std, shape, cfg.data.kind, depth) if cfg.score.zscore else None
        out.append(anomaly_map.normalize(diff[None], mean_map, std_map, anomaly_map.std_floor(std))[0])
    return out

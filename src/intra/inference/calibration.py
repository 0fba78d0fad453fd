"""Calibration: what a trained network needs before it can score, as one named stage after training.

`calibrate(detector, train_images, val_images)`:
1. the mean (and standard deviation) of the training images' difference maps (`score.normalize`,
   `score.zscore`), from the training split only, never the held-out images; for the anomaly map's
   scoring and, when the image score has its own (`score.image_scoring`), for that one too;
2. the decision thresholds, from the held-out normal (validation) images scored with those maps.
   A user's validation set usually holds no anomaly, and an F1-optimal threshold fitted on such a
   set is the lowest score (everything flagged). So the stored thresholds are quantiles of what
   the held-out *normal* images produce: the image threshold is the
   `score.image_threshold_quantile` (0.99) quantile of their image scores (with
   `score.image_threshold_tail = auto`, at least a Gumbel fit's to the scores or to their logarithms,
   which few images need), the pixel threshold the
   `score.pixel_threshold_quantile` (0.999) quantile of all their anomaly-map pixels. A score or
   pixel at or above its threshold is anomalous (anomalib's `pred_label`, `pred_mask`).
With `score.choose = auto` the scoring is chosen first (`choice`): step 1 keeps the statistics the choice
computed for the chosen scorings, and step 2 reuses its reconstructions: the network sees each image once.

`fit` calls it once training is over; `rescore` calls it again whenever scoring settings change
after training (`intra evaluate --set score.KEY=...`, benchmark `score` rows), on the same training
and validation images `fit` used (the split is drawn again from the run's seed), so statistics,
thresholds and the overlay colour scale always belong to the scoring in use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from ..config import Config, ScoreConfig, reading_mismatch, with_score_overrides
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


class Moments:
    """Running mean and standard deviation of training difference maps (each (H, W)), one map at a time.

    data.kind = object: per pixel, (H, W), and every map must have one size; texture: per border
    bin ((depth + 1)^2, see `core.anomaly_map.border_bins`), over maps of any sizes.
    """

    def __init__(self, cfg: Config):
        self.object = cfg.data.kind == "object"
        self.depth = anomaly_map.statistics_depth(cfg.model)
        self.total = self.squares = self.count = None

    def add(self, diff: torch.Tensor) -> None:
        diff = diff.double()
        if self.object:
            if self.total is not None and self.total.shape != diff.shape:
                raise IntraError(
                    f"data.kind = object needs every training image at one size, found {tuple(self.total.shape)} "
                    f"and {tuple(diff.shape)} (use data.kind = texture, or data.resize = square)"
                )
            values, squared, ones = diff, diff * diff, torch.ones_like(diff)
        else:
            bins = anomaly_map.border_bins(tuple(diff.shape), self.depth, diff.device).flatten()
            zero = torch.zeros((self.depth + 1) ** 2, dtype=torch.float64, device=diff.device)
            flat = diff.flatten()
            values, squared, ones = (zero.scatter_add(0, bins, v) for v in (flat, flat * flat, torch.ones_like(flat)))
        self.total = values if self.total is None else self.total + values
        self.squares = squared if self.squares is None else self.squares + squared
        self.count = ones if self.count is None else self.count + ones

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as float32."""
        if self.total is None:
            raise IntraError("no training images to compute the mean difference map from")
        total, squares, count = self.total, self.squares, self.count
        if not self.object:
            shape = (self.depth + 1, self.depth + 1)
            total, squares, count = total.view(shape), squares.view(shape), count.view(shape)
        mean = total / count.clamp_min(1)
        std = (squares / count.clamp_min(1) - mean**2).clamp_min(0).sqrt()
        if not self.object:
            mean, std = _fill_unseen_bins(mean, std, count)
        return mean.float(), std.float()


def _fill_unseen_bins(mean: torch.Tensor, std: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Border bins no training pixel fell in (training images too small to reach those distances from the
    border) take the statistics of the nearest bin that was seen (the deepest of equally near ones): a
    larger test image is then scored against the deepest interior seen, not against a mean and std of 0."""
    seen = count > 0
    if seen.all() or not seen.any():
        return mean, std
    cells = torch.stack(torch.meshgrid(*(torch.arange(n) for n in mean.shape), indexing="ij"), -1).view(-1, 2)
    known = cells[seen.flatten().cpu()]
    distance = (cells[:, None, :] - known[None, :, :]).abs().amax(-1).double()  # (bins, seen bins), Chebyshev
    nearest = known[(distance - 1e-3 * known.sum(-1)).argmin(dim=1)]  # ties: the deeper bin
    return mean[nearest[:, 0], nearest[:, 1]].view_as(mean), std[nearest[:, 0], nearest[:, 1]].view_as(std)


def statistics_of(cfg: Config, diffs: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of training difference maps (each (H, W)); see `Moments`."""
    moments = Moments(cfg)
    for diff in diffs:
        moments.add(diff)
    return moments.result()


def difference_statistics(
    detector: Detector, batched: Iterable[Images], scorings: list[ScoreConfig] | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`statistics_of` the difference maps of training images given in batches, for each of `scorings`
    (default: the detector's), from one reconstruction of every image."""
    return pair_statistics(detector.cfg, reconstructed(detector, batched), scorings or [detector.cfg.score])


def pair_statistics(
    cfg: Config, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], scorings: list[ScoreConfig]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`statistics_of` the difference maps of (image, reconstruction) pairs under each of `scorings`."""
    moments = [Moments(cfg) for _ in scorings]
    for x, r in pairs:
        for score, moment in zip(scorings, moments):
            moment.add(anomaly_map.difference_map(x[None], r[None], score)[0])
    return [moment.result() for moment in moments]


def reconstructed(detector: Detector, batched: Iterable[Images]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image as the network saw it, reconstruction) for every image of the batches, a batch at a time."""
    for images in batched:
        prepared = detector.prepare(images)
        yield from zip(prepared, detector.reconstruct(prepared))


def reconstruction_pairs(detector: Detector, images: Images, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image as the network saw it, reconstruction) for every image, reconstructed `size` at a time."""
    return list(reconstructed(detector, batches(images, size)))


def images_per_batch(detector: Detector) -> int:
    """Images reconstructed together while calibrating: as many as fill one chunk of `score.chunk_windows`."""
    cfg = detector.cfg
    return max(1, cfg.score.chunk_windows // detector.plan((cfg.model.grid, cfg.model.grid)).passes)


def pasted_validation(cfg: Config, normal: Images) -> tuple[Images, list[torch.Tensor]]:
    """The defects the scoring is chosen on, pasted into the validation images as the network saw them,
    drawn from the run's seed: (defective images, masks)."""
    return paste_defects(list(normal), torch.Generator().manual_seed(cfg.train.seed + 2))


@dataclass
class Choice:
    """What choosing the scoring gives calibration: the config with the chosen scoring, the record of the
    choice, the training statistics of the chosen scorings (the map's, then the image score's if it has
    its own) and the validation images' reconstructions, which the thresholds then reuse."""

    cfg: Config
    record: dict
    statistics: list[tuple[torch.Tensor, torch.Tensor]]
    val_pairs: list[tuple[torch.Tensor, torch.Tensor]]


def choose_scoring(detector: Detector, train_images: Images, val_images: Images, size: int) -> Choice:
    """The candidate scoring that finds defects pasted into the validation images best (see `choice`)."""
    cfg = detector.cfg
    normal = reconstruction_pairs(detector, val_images, size)
    train = reconstruction_pairs(detector, statistics_subset(train_images, cfg), size)
    defective, masks = pasted_validation(cfg, [x for x, _ in normal])
    chosen = choice.choose(cfg, statistics_of, train, normal, reconstruction_pairs(detector, defective, size), masks)
    report = chosen.report
    log.info("scoring chosen on synthetic defects: map %s (%s)", chosen.map, report[chosen.map])
    log.info("scoring chosen on synthetic defects: image score %s (%s)", chosen.image, report[chosen.image])
    record = {"chosen": chosen.map, "image_chosen": chosen.image, "candidates": report}
    names = [chosen.map] + ([chosen.image] if chosen.image != chosen.map else [])
    statistics = [chosen.statistics[name] for name in names]
    return Choice(choice.with_scoring(cfg, chosen.map, chosen.image), record, statistics, normal)


def _gumbel_fit(scores: np.ndarray, log: bool) -> tuple[float, float, float]:
    """A Gumbel distribution fitted by moments (closed form) to the scores or to their logarithms: its
    location and scale, and the log-likelihood it gives the scores themselves (so two fits compare)."""
    values = np.log(scores) if log else scores
    scale = float(values.std()) * np.sqrt(6) / np.pi
    location = float(values.mean()) - np.euler_gamma * scale
    likelihood = float(stats.gumbel_r.logpdf(values, location, scale).sum())
    if log:  # the density of a score s is the log-fit's density at ln s times d(ln s)/ds = 1/s
        likelihood -= float(values.sum())
    return location, scale, likelihood


def image_threshold_tail(val_scores: np.ndarray, tail: str = "auto") -> str:
    """The tail `image_threshold` reads: `tail` itself, or for "auto" whichever of "gumbel" and "log-gumbel"
    fits the scores more likely (see `ScoreConfig.image_threshold_tail`)."""
    scores = np.asarray(val_scores, np.float64)
    if tail not in ("auto", "log-gumbel") or len(scores) < 2 or scores.std() == 0:
        return tail
    if scores.min() <= 0:  # z-scored maps can score below zero: no logarithm
        return "gumbel"
    if tail == "log-gumbel":
        return tail
    linear, logarithmic = (_gumbel_fit(scores, log)[2] for log in (False, True))
    return "log-gumbel" if logarithmic > linear else "gumbel"


def image_threshold(val_scores: np.ndarray, quantile: float, tail: str = "auto") -> float:
    """The `quantile` of normal images' scores: empirical, or the larger of that and the quantile of a
    Gumbel distribution fitted by moments to the scores ("gumbel"), to their logarithms ("log-gumbel"), or
    to whichever of the two they fit better ("auto"); see `ScoreConfig.image_threshold_tail`."""
    scores = np.asarray(val_scores, np.float64)
    empirical = float(np.quantile(scores, quantile))
    if tail == "empirical" or len(scores) < 2 or quantile >= 1 or scores.std() == 0:
        return empirical
    log = image_threshold_tail(scores, tail) == "log-gumbel"
    location, scale, _ = _gumbel_fit(scores, log)
    fitted = float(stats.gumbel_r.ppf(quantile, location, scale))
    return max(empirical, float(np.exp(fitted)) if log else fitted)


def thresholds(val_scores: np.ndarray, val_maps, cfg: ScoreConfig) -> dict:
    """Thresholds from normal images: scores (n,) and anomaly maps ((n, H, W) or a list of (h, w)) -> stats entries."""
    val_scores = np.asarray(val_scores, np.float64)
    pixels = np.concatenate([np.asarray(m, np.float32).ravel() for m in val_maps])
    tail = image_threshold_tail(val_scores, cfg.image_threshold_tail)  # "auto" resolved once, and named below
    named = cfg.image_threshold_tail if tail == cfg.image_threshold_tail else f"{cfg.image_threshold_tail}: {tail}"
    return {
        "image_threshold": image_threshold(val_scores, cfg.image_threshold_quantile, tail),
        "pixel_threshold": float(np.quantile(pixels, cfg.pixel_threshold_quantile)),
        "threshold_source": f"{len(val_scores)} held-out normal images; quantiles "
        f"{cfg.image_threshold_quantile} (image, {named}), "
        f"{cfg.pixel_threshold_quantile} (pixel)",
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
    size = images_per_batch(raw)
    stats = dict(detector.stats)
    stats.pop("scoring_choice", None)  # the record of an earlier choice describes a scoring no longer in use
    if choose and cfg.score.choose == "auto":  # the choice's statistics and reconstructions, computed once
        chosen = choose_scoring(raw, train_images, val_images, size)
        cfg, stats["scoring_choice"] = chosen.cfg, chosen.record
        statistics, val_pairs = chosen.statistics, chosen.val_pairs
    else:  # reconstructed a batch at a time as they are used, none kept
        bar = tqdm(
            batches(statistics_subset(train_images, cfg), size), desc="mean map", disable=not progress, leave=False
        )
        image_score = raw.image_score_config()
        scorings = [cfg.score] + ([image_score] if image_score else [])
        statistics = pair_statistics(cfg, reconstructed(raw, bar), scorings)
        val_pairs = reconstructed(raw, batches(val_images, size))
    (mean_map, std_map), *image_statistics = statistics
    calibrated = detector.like(cfg, mean_map, std_map, stats, *image_statistics)
    val_maps, val_scores = [], []
    for pairs in batches(list(val_pairs), size):  # scored in the batches they were reconstructed in
        maps, scores = calibrated.score(*_stacked(pairs))
        val_maps.extend(maps)
        val_scores.append(scores)
    calibrated.stats.update(
        val_images=len(val_images), **thresholds(torch.cat(val_scores).numpy(), val_maps, cfg.score)
    )
    return calibrated


def _stacked(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Images, Images]:
    """Pairs -> (images, reconstructions): stacked when all of one size, as `prepare` batches them, else lists."""
    images, reconstructions = [x for x, _ in pairs], [r for _, r in pairs]
    if len({tuple(x.shape) for x in images}) == 1:
        return torch.stack(images), torch.stack(reconstructions)
    return images, reconstructions


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

    `score.choose = auto` among the overrides chooses the scoring again on synthetic defects (the other
    score keys then only set what the choice does not). Keeps the caller's device, dtype, compile
    setting and backend.
    """
    cfg = with_score_overrides(detector.cfg, overrides)
    if reading_mismatch(cfg):
        log.warning("%s", reading_mismatch(cfg))
    choose = overrides.get("score.choose") == "auto"
    changed = [name for name in vars(cfg.score) if getattr(cfg.score, name) != getattr(detector.cfg.score, name)]
    if not choose and all(name in RUNTIME_KEYS for name in changed):
        return detector.like(
            cfg,
            detector.mean_map,
            detector.std_map,
            dict(detector.stats),
            (detector.image_mean_map, detector.image_std_map),
        )
    if data is None:
        what = "choosing the scoring again" if choose else f"changing score.{changed[0]}"
        raise IntraError(f"{what} needs the training data (--data) to calibrate again")
    train, val = training_split(data, cfg)
    log.info(
        "calibrating again for score.%s on %d training and %d validation images",
        ", ".join(changed or ["choose"]),
        len(train),
        len(val),
    )
    return calibrate(detector.like(cfg, None, None, dict(detector.stats)), train, val, choose=choose)

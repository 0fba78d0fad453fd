"""Change the scoring settings of a trained detector without retraining (score.* at evaluate time).

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

import torch

from .config import apply_overrides
from .data import load_images, training_images
from .errors import IntraError
from .inference import Detector

log = logging.getLogger(__name__)

MAP_KEYS = ("scales", "mean_filter", "gaussian_sigma", "cover_spacing", "mean_map_images")


def with_score_overrides(detector: Detector, overrides: dict[str, Any], data: str | Path | None) -> Detector:
    """A Detector sharing detector's model, with score.* keys set; the mean map refitted if needed."""
    from .train import mean_map_subset, split_validation  # train imports inference; keep this module light

    bad = [key for key in overrides if not key.startswith("score.")]
    if bad:
        raise IntraError(f"only score.* keys can change after training, not {', '.join(bad)}")
    cfg = apply_overrides(copy.deepcopy(detector.cfg), overrides)
    changed = any(getattr(cfg.score, k) != getattr(detector.cfg.score, k) for k in MAP_KEYS)
    changed = changed or (cfg.score.zscore and detector.std_map is None)  # a run from before zscore
    new = Detector(detector.model, cfg, detector.mean_map, detector.device, dict(detector.stats), std_map=detector.std_map)
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

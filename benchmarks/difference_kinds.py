"""The paper's gradient-magnitude difference against plain pixel differences, on one trained run.

    python benchmarks/difference_kinds.py --run RUN --data DATA --threads 2

The anomaly map starts from a per-pixel difference between an image and its inpainted
reconstruction: 1 - GMS (the paper's, `core.similarity.gms_map`), or the absolute (L1) or squared
(L2) difference of the pixel values, averaged over channels. GMS is blind to a change of level
without edges (a faint stain, uneven light); a pixel difference sees it. This script reconstructs
the run's training-statistics images and its test images once, then scores the test set with each
difference under each named filter set of `config.SCORINGS` (scales, mean filter, Gaussian), raw
and z-scored against the training images (as `score.zscore`), and prints image AUROC, pixel AUROC,
AUPRO and the image AUROC of every defect kind. Test labels choose nothing here: an experiment
script for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from intra.config import scoring
from intra.core import anomaly_map
from intra.data.datasets import GOOD, test_samples
from intra.data.geometry import Geometry
from intra.data.images import load_image, load_mask
from intra.evaluation import metrics
from intra.inference.calibration import statistics_of, statistics_subset, training_split
from intra.inference.detector import Detector

DIFFERENCES = {
    "gms": anomaly_map.gms_difference,
    "l1": lambda x, r: (x - r).abs().mean(dim=1, keepdim=True),
    "l2": lambda x, r: ((x - r) ** 2).mean(dim=1, keepdim=True),
}


def difference_map(x: torch.Tensor, r: torch.Tensor, score, kind: str) -> torch.Tensor:
    """`core.anomaly_map.difference_map` with the per-pixel difference `kind`: (C, H, W) x 2 -> (H, W)."""
    return anomaly_map.difference_map(x[None], r[None], score, DIFFERENCES[kind])[0]


def reconstructed(detector: Detector, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    for start in range(0, len(images), 8):
        prepared = detector.prepare(images[start : start + 8])
        pairs.extend(zip(prepared, detector.reconstruct(prepared)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, help="the run's MVTec-layout root (training and test images)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.run, device="cpu")
    cfg = detector.cfg
    train, _ = training_split(args.data, cfg)
    samples = test_samples(args.data)
    training = reconstructed(detector, statistics_subset(train, cfg))
    test = reconstructed(detector, [load_image(s.path, Geometry.of(cfg), cfg.data.color) for s in samples])
    masks = [
        None if s.mask_path is None else load_mask(s.mask_path, tuple(x.shape[-2:])).numpy()
        for s, (x, _) in zip(samples, test)
    ]
    with_masks = any(mask is not None for mask in masks)
    masks = [np.zeros(x.shape[-2:], bool) if m is None else m for m, (x, _) in zip(masks, test)]
    labels, kinds = np.array([s.label for s in samples]), np.array([s.kind for s in samples])
    depth = anomaly_map.statistics_depth(cfg.model)
    print("| difference | filters | normalised | image AUROC | pixel AUROC | AUPRO | per kind (image AUROC) |")
    print("|---|---|---|--:|--:|--:|---|")
    rows = []
    for kind in DIFFERENCES:
        for filters in ("paper", "middle", "fine"):
            score = scoring(cfg.score, filters)
            mean, std = statistics_of(cfg, (difference_map(x, r, score, kind) for x, r in training))
            floor = anomaly_map.std_floor(std)
            raw = [difference_map(x, r, score, kind) for x, r in test]
            for normalised in ("raw", "z"):
                maps = raw
                if normalised == "z":
                    expand = lambda stat, d: anomaly_map.expand_statistic(stat, tuple(d.shape), cfg.data.kind, depth)  # noqa: E731
                    maps = [(d - expand(mean, d)) / expand(std, d).clamp_min(floor) for d in raw]
                maps = [m.numpy() for m in maps]
                scores = np.array([m.max() for m in maps])
                row = {"difference": kind, "filters": filters, "normalised": normalised}
                row["image_auroc"] = metrics.auroc(scores, labels)
                row["pixel_auroc"] = metrics.pixel_auroc(maps, masks) if with_masks else None
                row["aupro"] = metrics.aupro(maps, masks) if with_masks else None
                row["per_kind"] = {
                    k: metrics.auroc(scores[(kinds == k) | (labels == 0)], labels[(kinds == k) | (labels == 0)])
                    for k in sorted(set(kinds) - {GOOD})
                }
                rows.append(row)
                cells = [f"{row[k]:.3f}" if row[k] is not None else "" for k in ("image_auroc", "pixel_auroc", "aupro")]
                per_kind = ", ".join(f"{k} {v:.2f}" for k, v in row["per_kind"].items())
                print(f"| {kind} | {filters} | {normalised} | {' | '.join(cells)} | {per_kind} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Scoring-only ablations of one trained run: reconstruct once, score many ways.

    python benchmarks/score_sweep.py --run RUN --data DATA --threads 2 --eval-size 256 \
        --variant paper: --variant scales-1-.5-.25:scales=1,0.5,0.25 --variant no-norm:normalize=false

The reconstructions of the training images (score.mean_map_images of them, as `fit` picks) and of
every test image are computed once; each variant (NAME:key=value;key=value over score.*) then
recomputes only the difference maps, the training mean map and the metrics, which take seconds.
The numbers equal `intra evaluate --set score.KEY=VALUE` on the same run (up to the subset of
training images in the mean map). Prints one JSON line per variant and writes RUN/score_sweep.json.
An experiment script for docs/benchmarks.md, not part of the library.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from intra.config import apply_overrides
from intra.core import anomaly_map
from intra.data.datasets import test_samples, training_images
from intra.data.images import load_image, load_images, load_mask
from intra.evaluation import metrics
from intra.files import write_json
from intra.inference.detector import Detector
from intra.runtime import configure_threads
from intra.training.fit import mean_map_subset, split_validation


def reconstruct_all(detector: Detector, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    return torch.cat([detector.reconstruct(chunk) for chunk in images.split(batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="trained run folder")
    parser.add_argument("--data", required=True, help="MVTec-layout dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--eval-size", type=int, default=256, help="pixel metrics at N x N")
    parser.add_argument("--mean-map-images", type=int, default=200, help="training images in the mean map (0 = all)")
    parser.add_argument("--variant", action="append", required=True, help="NAME:key=value;key=value (score.* keys)")
    parser.add_argument("--out", help="JSON output (default RUN/score_sweep.json)")
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run, device="cpu")
    cfg = detector.cfg
    cfg.score.mean_map_images = args.mean_map_images

    start = time.perf_counter()
    paths = training_images(args.data)
    train_idx, _ = split_validation(len(paths), cfg, torch.Generator().manual_seed(cfg.train.seed))
    train = load_images(mean_map_subset([paths[i] for i in train_idx], cfg), cfg.model.image_size, cfg.data.color)
    samples = test_samples(args.data)
    test = torch.stack([load_image(s.path, cfg.model.image_size, cfg.data.color) for s in samples])
    masks = np.stack(
        [
            load_mask(s.mask_path, args.eval_size).numpy() if s.mask_path else np.zeros((args.eval_size,) * 2, bool)
            for s in samples
        ]
    )
    train, test = detector.prepare(train), detector.prepare(test)
    train_rec, test_rec = reconstruct_all(detector, train), reconstruct_all(detector, test)
    seconds = time.perf_counter() - start
    print(json.dumps({"reconstructed": len(train) + len(test), "seconds": round(seconds, 1)}), flush=True)

    labels = np.array([s.label for s in samples])
    kinds = [s.kind for s in samples]
    results = []
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        overrides = {
            f"score.{k.strip()}": v.strip() for k, v in (item.split("=", 1) for item in settings.split(";") if item)
        }
        vcfg = apply_overrides(copy.deepcopy(cfg), overrides).score
        train_maps = anomaly_map.difference_map(train, train_rec, vcfg)
        mean_map, std_map = train_maps.mean(0), train_maps.std(0, unbiased=False)
        diff = anomaly_map.difference_map(test, test_rec, vcfg)
        maps = anomaly_map.normalize(diff, mean_map if vcfg.normalize else None, std_map if vcfg.zscore else None)
        scores = anomaly_map.image_score(maps).numpy()
        if args.eval_size != maps.shape[-1]:
            maps = F.interpolate(maps[:, None], size=(args.eval_size,) * 2, mode="bilinear", align_corners=False)[:, 0]
        result = metrics.evaluation_metrics(scores, labels, kinds, maps.numpy(), masks)
        result = {"variant": name, "overrides": overrides, **result}
        results.append(result)
        print(json.dumps(result), flush=True)
    write_json(
        Path(args.out or Path(args.run) / "score_sweep.json"),
        {"data": args.data, "eval_size": args.eval_size, "mean_map_images": args.mean_map_images, "results": results},
    )


if __name__ == "__main__":
    main()

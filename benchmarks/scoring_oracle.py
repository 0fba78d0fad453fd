"""Every named scoring on the defects `score.choose = auto` pastes, beside the same scoring on the real test defects.

    python benchmarks/scoring_oracle.py --run RUN --data DATA --threads 2

The automatic choice sees only pasted defects; this shows how well that stands in for the labelled
test set. The network reconstructs the training-statistics images, the validation images (with
their pasted defects, drawn as calibration draws them) and the test images once; then every scoring
of `config.SCORINGS` is calibrated on the same training reconstructions and scored on both sets with
the same function as the choice (`choice.choose`, at the model's resolution). Test labels are only
reported here, never used to choose. On a set with image labels only (ELPV), or with --image-only,
the test side reports image AUROC alone, scored as `intra evaluate` scores. Prints a markdown
table, and one JSON line with --json. An experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from intra.config import IMAGE_SCORINGS, MAP_SCORINGS, SCORINGS
from intra.data.datasets import test_samples
from intra.data.geometry import Geometry
from intra.data.images import load_image, load_mask, standardize
from intra.evaluation import metrics
from intra.inference import calibration, choice
from intra.inference.detector import Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument(
        "--data", required=True, help="the run's dataset, MVTec AD layout (without masks: image columns only)"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--image-only", action="store_true", help="test image AUROC only (no pixel metrics: faster)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = Detector.load(args.run, device="cpu")
    cfg = detector.cfg
    raw = detector.like(cfg, None, None, {})
    size = calibration.images_per_batch(raw)
    train, val = calibration.training_split(args.data, cfg)
    train_pairs = calibration.reconstruction_pairs(raw, calibration.statistics_subset(train, cfg), size)
    normal = calibration.reconstruction_pairs(raw, val, size)
    pasted, pasted_masks = calibration.pasted_validation(cfg, [x for x, _ in normal])
    pasted_pairs = calibration.reconstruction_pairs(raw, pasted, size)
    on_pasted = choice.choose(
        cfg, calibration.statistics_of, train_pairs, normal, pasted_pairs, pasted_masks, True, tuple(SCORINGS)
    ).report

    geometry = Geometry.of(cfg)
    samples = test_samples(args.data)
    images = [load_image(s.path, geometry, cfg.data.color) for s in samples]
    images = [standardize(x) for x in images] if cfg.data.standardize else images
    test_pairs = calibration.reconstruction_pairs(raw, images, size)
    good = [pair for pair, s in zip(test_pairs, samples) if s.label == 0]
    defective = [(pair, s, x) for pair, s, x in zip(test_pairs, samples, images) if s.label == 1]
    if not args.image_only and all(s.mask_path is not None for _, s, _ in defective):
        masks = [load_mask(s.mask_path, tuple(x.shape[-2:])) for _, s, x in defective]
        on_test = choice.choose(
            cfg,
            calibration.statistics_of,
            train_pairs,
            good,
            [pair for pair, _, _ in defective],
            masks,
            every_pixel_metric=True,
            candidates=tuple(SCORINGS),
        ).report
    else:  # image labels only (ELPV), or --image-only: the image column alone
        on_test = image_aurocs_on_test(raw, train_pairs, good, [pair for pair, _, _ in defective])

    chosen = detector.stats.get("scoring_choice", {})
    print(f"run {args.run}: map {chosen.get('chosen', '-')}, image score {chosen.get('image_chosen', '-')} as saved")
    print("| scoring | pasted: image AUROC | pixel AUROC | AUPRO | test: image AUROC | pixel AUROC | AUPRO |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name in on_pasted:
        p, t = on_pasted[name], on_test[name]
        role = (
            "map and image candidate" if name in MAP_SCORINGS else "image candidate" if name in IMAGE_SCORINGS else ""
        )
        label = name + (f" ({role})" if role else "")
        cells = [p["image_auroc"], p["pixel_auroc"], p["aupro"], t["image_auroc"], t["pixel_auroc"], t["aupro"]]
        print(f"| {label} | " + " | ".join("-" if value is None else f"{value:.3f}" for value in cells) + " |")
    if args.json:
        print(json.dumps({"run": args.run, "data": args.data, "saved": chosen, "pasted": on_pasted, "test": on_test}))


def image_aurocs_on_test(raw: Detector, train_pairs: list, good: list, defective: list) -> dict[str, dict]:
    """Every named scoring's test image AUROC, scored as `intra evaluate` scores (the maximum of its map)."""
    report = {}
    labels = np.array([0] * len(good) + [1] * len(defective))
    for name in SCORINGS:
        cfg = choice.with_scoring(raw.cfg, name)
        ((mean, std),) = calibration.pair_statistics(cfg, train_pairs, [cfg.score])
        scorer = raw.like(cfg, mean, std, {})
        scores = [float(scorer.score(x[None], r[None])[1][0]) for x, r in [*good, *defective]]
        nothing = {"pixel_auroc": None, "aupro": None}
        report[name] = {"image_auroc": metrics.auroc(np.array(scores), labels), **nothing}
    return report


if __name__ == "__main__":
    main()

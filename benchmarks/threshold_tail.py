"""How often normal images exceed an image threshold calibrated on a few of them, by `score.image_threshold_tail`.

    python benchmarks/threshold_tail.py --eval RUN/eval [RUN2/eval ...] --images 8 20 50

A threshold at the 0.99 quantile of normal scores promises about 1 % false alarms. Calibration
reads that quantile from the held-out validation images, often a few dozen or fewer. This stands
the good test images of an `intra evaluate` folder (`scores.csv`) in for validation sets: it draws
N of them at random (seeded), calibrates the threshold on those with `calibration.image_threshold`
(each tail), and counts how many of the other good images (false alarms) and of the defective ones
(recall) score at or above it, averaged over the draws. Labels are only counted, never fitted. An
experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from intra.inference.calibration import image_threshold

TAILS = ("empirical", "gumbel", "log-gumbel", "auto")


def read_scores(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(good, defective) image scores of an evaluation folder's scores.csv."""
    with open(folder / "scores.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    scores = {label: np.array([float(r["pred_score"]) for r in rows if r["label"] == label]) for label in "01"}
    return scores["0"], scores["1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", nargs="+", required=True, type=Path, help="intra evaluate output folders")
    parser.add_argument("--images", nargs="+", type=int, default=[8, 20, 50], help="validation set sizes")
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"| evaluation | validation images | {' | '.join(f'{t}: false alarms, recall' for t in TAILS)} |")
    print("|---|--:|" + "--:|" * len(TAILS))
    for folder in args.eval:
        good, defective = read_scores(folder)
        for n in args.images:
            if n >= len(good):
                continue
            rng = np.random.default_rng(args.seed)
            rates = {tail: [] for tail in TAILS}
            for _ in range(args.draws):
                order = rng.permutation(len(good))
                val, rest = good[order[:n]], good[order[n:]]
                for tail in TAILS:
                    threshold = image_threshold(val, args.quantile, tail)
                    rates[tail].append(((rest >= threshold).mean(), (defective >= threshold).mean()))
            cells = [f"{np.mean([a for a, _ in r]):.3f}, {np.mean([b for _, b in r]):.3f}" for r in rates.values()]
            print(f"| {folder} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

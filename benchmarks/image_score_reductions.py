"""The image score as the mean of a map's highest pixels instead of its maximum.

    python benchmarks/image_score_reductions.py --run RUN --data DATA --threads 2

The image score is the maximum of its map (the paper; `core/anomaly_map.image_score`), so one noisy
pixel of a normal image can outrank a defect that covers a wide region faintly (magnetic tile's
`uneven` bands, ELPV's darker regions). This scores the run's test set once with the image score's
own scoring as the map, then ranks the images by the mean of each map's highest share of pixels
(share 0: the maximum itself, which must give the run's image AUROC) and prints image AUROC overall
and per kind as a markdown table. Test labels only rank the reductions here, as an experiment;
nothing is chosen from them. An experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse

import numpy as np

from intra.data.datasets import GOOD
from intra.evaluation import metrics
from intra.evaluation.scoring import evaluate
from intra.inference.choice import with_scoring
from intra.inference.detector import Detector
from intra.runtime import configure_threads

SHARES = (0.0, 0.001, 0.005, 0.01, 0.03, 0.1, 1.0)


def top_mean(amap: np.ndarray, share: float) -> float:
    """Mean of the highest `share` of the map's pixels (at least one: share 0 is the maximum)."""
    values = np.sort(amap.ravel())[::-1]
    return float(values[: max(1, int(share * len(values)))].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run)
    name = detector.cfg.score.image_scoring
    if name:  # the image score has its own scoring: make it the map, with its own statistics
        statistics = (detector.image_mean_map, detector.image_std_map)
        detector = detector.like(with_scoring(detector.cfg, name), *statistics, detector.stats)
    evaluation = evaluate(detector, args.data)
    labels, kinds = evaluation.labels, np.array([s.kind for s in evaluation.samples])
    defect_kinds = sorted(set(kinds) - {GOOD})
    print(
        f"{args.run}: image score of the {name or 'anomaly map'} scoring, as stored {evaluation.metrics['image_auroc']:.3f}"
    )
    print("| image score | image AUROC | " + " | ".join(defect_kinds) + " |")
    print("|---|--:|" + "--:|" * len(defect_kinds))
    for share in SHARES:
        scores = np.array([top_mean(m, share) for m in evaluation.maps])
        per_kind = []
        for kind in defect_kinds:
            pick = (kinds == kind) | (kinds == GOOD)
            per_kind.append(f"{metrics.auroc(scores[pick], labels[pick]):.3f}")
        label = "maximum" if share == 0 else f"mean of the highest {100 * share:g} %"
        print(f"| {label} | {metrics.auroc(scores, labels):.3f} | " + " | ".join(per_kind) + " |")


if __name__ == "__main__":
    main()

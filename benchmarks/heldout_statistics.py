"""Training statistics from the images the network trained on, or from held-out ones.

    python benchmarks/heldout_statistics.py --run RUN --data DATA --threads 2

Calibration z-scores a map against the mean and spread of the difference maps of the training
images (`inference/calibration.py`), the images the network learned from. A network that has
learned them better than unseen normal images would make those statistics too narrow, and the
longer it trains the more so: a suspect for why longer training has lowered magnetic tile's image
AUROC. This calibrates the run's stored scoring twice, with statistics from its training split
and from its held-out validation split (position-free statistics for textures pool many pixels
per bin, so 20 images suffice there), evaluates the test set each way and prints both. An
experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse

from intra.evaluation.scoring import evaluate
from intra.inference.calibration import calibrate, training_split
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run)
    train, val = training_split(args.data, detector.cfg)
    print(f"{args.run}: {len(train)} training and {len(val)} held-out images")
    print("| statistics from | image AUROC | pixel AUROC | AUPRO |")
    print("|---|--:|--:|--:|")
    for label, source in (("the training images", train), ("the held-out images", val)):
        # the run's stored scoring, its statistics recomputed from `source`, thresholds from the held-out images
        calibrated = calibrate(detector.like(detector.cfg, None, None, dict(detector.stats)), source, val, choose=False)
        m = evaluate(calibrated, args.data).metrics
        pixel = "-" if m.get("pixel_auroc") is None else f"{m['pixel_auroc']:.3f}"
        aupro = "-" if m.get("aupro") is None else f"{m['aupro']:.3f}"
        print(f"| {label} ({len(source)}) | {m['image_auroc']:.3f} | {pixel} | {aupro} |")


if __name__ == "__main__":
    main()

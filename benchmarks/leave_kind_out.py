"""How much one defect kind weighs in a run's pixel metrics. A diagnostic for docs/benchmarks.md.

    python benchmarks/leave_kind_out.py --run RUN --data DATA --kind stain --threads 2

Pixel AUROC and AUPRO pool every defect pixel of the test set, so a kind with large masks decides
them. This scores the test set once (as `intra evaluate` does, at the model's resolution) and
prints, as one JSON line, each kind's share of the defect pixels, the pixel metrics over every
image, and the same metrics without the images of --kind. An experiment script, not the library.
"""

from __future__ import annotations

import argparse
import json

import torch

from intra.evaluation import metrics
from intra.evaluation.scoring import evaluate
from intra.inference.detector import Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--kind", required=True, help="the defect kind to leave out")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scored = evaluate(Detector.load(args.run), args.data)
    if scored.masks is None:
        raise SystemExit(f"{args.data} has no masks: no pixel metrics")
    kinds = [sample.kind for sample in scored.samples]
    pixels = {kind: sum(int(m.sum()) for m, k in zip(scored.masks, kinds) if k == kind) for kind in sorted(set(kinds))}
    total = sum(pixels.values())
    kept = [i for i, kind in enumerate(kinds) if kind != args.kind]
    maps, masks = [scored.maps[i] for i in kept], [scored.masks[i] for i in kept]
    print(
        json.dumps(
            {
                "run": args.run,
                "defect_pixel_share": {kind: round(n / total, 3) for kind, n in pixels.items() if n},
                "pixel_auroc": scored.metrics["pixel_auroc"],
                "aupro": scored.metrics["aupro"],
                "left_out": args.kind,
                "pixel_auroc_without": metrics.pixel_auroc(maps, masks),
                "aupro_without": metrics.aupro(maps, masks),
            }
        )
    )


if __name__ == "__main__":
    main()

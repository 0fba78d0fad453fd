"""Does averaging two readings of every patch make a better detector? A trained run, scored twice.

    python benchmarks/plan_ensemble.py --run RUN --data DATA --threads 2

Every patch is inpainted once by the run's own plan (`score.cover_spacing`: a tiling of windows,
each read in s*s lattice passes). The second reading uses the same lattice passes on a finer tiling,
with `--extra` more windows per axis, so each patch is read again from another place in another
window; the two reconstructions are averaged. Both versions are calibrated the same way on the
run's training and validation images (`score.choose = auto`: the scoring chosen again on pasted
defects, then the statistics and thresholds) and evaluated on the test set; the second version
also with the scorings chosen for the first, so that a change of choice is not mistaken for a
change of reconstruction. Prints, per version,
the inpainting error on the good test images against the better trivial fill, the metrics, the
chosen scorings and the time per image. The second reading is added for this process only, by
wrapping `Detector.reconstruct`; the library reads every patch once.
"""

from __future__ import annotations

import argparse
import json

import torch

from intra.core import windows
from intra.evaluation.scoring import evaluate
from intra.inference import engine
from intra.inference.calibration import calibrate, rescore, training_split
from intra.inference.choice import with_scoring
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def read_twice(extra: int) -> None:
    """Make every Detector of this process average its plan's reconstruction with the finer tiling's."""
    once = Detector.reconstruct

    @torch.inference_mode()
    def twice(self: Detector, images):
        first = once(self, images)
        listed = [x.to(self.device, torch.float32) for x in images]
        k, window, spacing = self.cfg.model.patch_size, self.cfg.model.window, self.cfg.score.cover_spacing
        plans = [
            windows.lattice_plan((x.shape[-2] // k, x.shape[-1] // k), window, spacing, extra).to(self.device)
            for x in listed
        ]
        second = engine.reconstruct(self.backend, listed, plans, k, self.chunk_windows(), self.backend.compiled)
        if isinstance(first, torch.Tensor):
            return (first + torch.stack(second)) / 2
        return [(x + y) / 2 for x, y in zip(first, second)]

    Detector.reconstruct = twice


def scored(run: str, data: str, scorings: tuple[str, str] | None = None) -> dict:
    """Calibrated again and evaluated: the scorings chosen on pasted defects, or the (map, image) ones named."""
    detector = Detector.load(run)
    if scorings is None:
        detector = rescore(detector, {"score.choose": "auto"}, data)
        scorings = detector.stats["scoring_choice"]["chosen"], detector.stats["scoring_choice"]["image_chosen"]
    else:
        cfg = with_scoring(detector.cfg, *scorings)
        cfg.score.choose = "off"
        detector = calibrate(detector.like(cfg, None, None, {}), *training_split(data, cfg), choose=False)
    metrics = evaluate(detector, data).metrics
    inpainting = metrics["inpainting"]
    return {
        "inpainting_ratio": round(inpainting["ratio"], 3),
        "image_auroc": round(metrics["image_auroc"], 3),
        "pixel_auroc": round(metrics.get("pixel_auroc") or float("nan"), 3),
        "aupro": round(metrics.get("aupro") or float("nan"), 3),
        "map": scorings[0],
        "image_score": scorings[1],
        "ms_per_image": round(metrics["ms_per_image"], 1),
        "per_kind": {kind: round(auroc, 3) for kind, auroc in metrics.get("per_kind", {}).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", type=int, default=1, help="windows added per axis in the second tiling")
    args = parser.parse_args()
    configure_threads(args.threads)
    rows = {"once": scored(args.run, args.data)}
    read_twice(args.extra)
    twice = f"twice (+{args.extra} windows per axis)"
    rows[twice] = scored(args.run, args.data)
    once = rows["once"]["map"], rows["once"]["image_score"]
    rows[f"{twice}, scored as once"] = scored(args.run, args.data, once)
    print("| reading | inpainting / best fill | image AUROC | pixel AUROC | AUPRO | map / image scoring | ms/image |")
    print("|---|--:|--:|--:|--:|---|--:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['inpainting_ratio']} | {r['image_auroc']} | {r['pixel_auroc']} | {r['aupro']} "
            f"| {r['map']} / {r['image_score']} | {r['ms_per_image']} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Does detection of pasted defects follow detection of the real ones from epoch to epoch?

    python benchmarks/epoch_detection.py --data ../shared/data/magnetic-tile --out runs/mt-epochs [--set KEY=VALUE ...]

Trains the `cpu` preset (plus the --set overrides) with the library's `fit`, keeping a copy of the
validated weights after every epoch. Then, for every epoch from the second on, those weights are
calibrated as `fit` calibrates (the scoring chosen again on defects pasted into the held-out
images) and evaluated on DATA/test. One JSON line per epoch (also RUN/epochs.json): the held-out
inpainting ratio, the pasted defects' metrics (the raw fine map, and the scorings chosen) and the
real test metrics. About 3.5 minutes per epoch on 2 cores for magnetic tile. An experiment script
for docs/benchmarks.md ("Which epoch to keep").
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from intra.config import apply_overrides, preset
from intra.evaluation.scoring import evaluate
from intra.inference.calibration import calibrate, training_split
from intra.inference.detector import Detector
from intra.runtime import configure_threads, reuse_freed_memory
from intra.training import fit as fitting
from intra.training import state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MVTec-layout dataset")
    parser.add_argument("--out", required=True, help="run folder (replaced)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    args = parser.parse_args()
    reuse_freed_memory()
    configure_threads(args.threads)
    cfg = preset("cpu")
    cfg.train.threads = args.threads
    apply_overrides(cfg, dict(item.split("=", 1) for item in args.set))

    weights = []  # (epoch, validated weights) after every epoch, taken where fit saves the training state
    capture = state.capture

    def keep_weights(trainer, **extra):
        weights.append((trainer.epoch, copy.deepcopy(trainer.eval_model.state_dict())))
        return capture(trainer, **extra)

    state.capture = keep_weights
    start = time.time()
    result = fitting.fit(cfg, args.data, args.out, overwrite=True)
    state.capture = capture
    print(f"trained in {time.time() - start:.0f} s, kept epoch {result.stats['best_epoch']}", flush=True)

    out = Path(args.out)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    fitted = result.detector
    train, val = training_split(args.data, fitted.cfg)
    rows = []
    for epoch, state_dict in weights[1:]:
        model = copy.deepcopy(fitted.model)
        model.load_state_dict(state_dict)
        detector = calibrate(Detector(model, fitted.cfg, stats={}), train, val)  # chooses the scoring again
        choice = detector.stats["scoring_choice"]
        candidates = choice["candidates"]
        metrics = evaluate(detector, args.data).metrics
        rows.append(
            {
                "epoch": epoch,
                "val_inpaint_ratio": log[epoch - 1]["val_inpaint_ratio"],
                "pasted_fine_raw": candidates["fine-raw"],
                "chosen_map": choice["chosen"],
                "pasted_map": candidates[choice["chosen"]]["map"],
                "chosen_image": choice["image_chosen"],
                "pasted_image_auroc": candidates[choice["image_chosen"]]["image"],
                **{key: metrics.get(key) for key in ("image_auroc", "pixel_auroc", "aupro")},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (out / "epochs.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

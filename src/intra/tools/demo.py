"""`intra demo`: generate the synthetic dataset, train the `cpu` preset, evaluate, write heatmaps.

Everything lands under one folder: OUT/data (the dataset), OUT/run (the trained model),
OUT/evaluation (metrics.json, scores.csv, heatmaps/).
"""

from __future__ import annotations

from pathlib import Path

from ..config import preset
from ..data.synthetic import make_dataset
from ..evaluation.outputs import write_evaluation
from ..evaluation.scoring import evaluate
from ..training.fit import fit

DEMO_MINUTES = 2.5  # training budget; the whole demo stays well under 5 minutes on 2 cores
# 10 of the 80 generated training images held out: the thresholds want at least 10 (fewer draw a
# warning, which a newcomer would read as a fault of the demo).
DEMO_VAL_FRACTION = 0.125


def run_demo(
    out: str | Path, threads: int = 0, seed: int = 0, progress: bool = False, minutes: float = DEMO_MINUTES
) -> dict:
    """Run the whole pipeline on synthetic data, training for `minutes`; returns the evaluation metrics."""
    out = Path(out)
    data = make_dataset(out / "data", seed=seed)
    cfg = preset("cpu")
    cfg.train.max_minutes = minutes
    cfg.train.val_fraction = DEMO_VAL_FRACTION
    cfg.train.threads = threads
    cfg.train.seed = seed
    result = fit(cfg, data, out / "run", progress=progress, overwrite=True)  # a rerun replaces the demo's run
    evaluation = evaluate(result.detector, data, progress=progress)
    write_evaluation(evaluation, out / "evaluation", progress=progress)
    return evaluation.metrics

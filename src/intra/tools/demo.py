"""`intra demo`: generate the synthetic dataset, train the `cpu` preset, evaluate, write heatmaps.

Everything lands under one folder: OUT/data (the dataset), OUT/run (the trained model),
OUT/evaluation (metrics.json, scores.csv, heatmaps/).
"""

from __future__ import annotations

from pathlib import Path

from ..config import preset
from ..errors import IntraError

DEMO_MINUTES = 2.5  # training budget; the whole demo stays well under 5 minutes on 2 cores
# 10 of the 80 generated training images held out: the thresholds want at least 10 (fewer draw a
# warning, which a newcomer would read as a fault of the demo).
DEMO_VAL_FRACTION = 0.125
# Written into OUT first, so that a rerun may replace what an earlier demo wrote there, and nothing else.
DEMO_MARK = ".intra-demo"


def run_demo(
    out: str | Path, threads: int = 0, seed: int = 0, progress: bool = False, minutes: float = DEMO_MINUTES
) -> dict:
    """Run the whole pipeline on synthetic data, training for `minutes`; returns the evaluation metrics."""
    # Imported here: the command line reads DEMO_MINUTES from this module before it needs torch.
    from ..data.synthetic import make_dataset
    from ..evaluation.outputs import write_evaluation
    from ..evaluation.scoring import evaluate
    from ..training.fit import fit

    out = claim_demo_folder(Path(out))
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


def claim_demo_folder(out: Path) -> Path:
    """Make `out` the demo's folder: new, empty or an earlier demo's (which the demo then overwrites).

    A folder holding anything else is refused, so a mistyped --out cannot mix generated images into
    a real dataset or replace a real run at OUT/run.
    """
    if out.exists() and not out.is_dir():
        raise IntraError(f"--out {out} is a file; the demo needs a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_MARK).is_file():
        raise IntraError(
            f"--out {out} already holds files that an earlier `intra demo` did not write; "
            "choose a new or empty folder (the demo writes OUT/data, OUT/run and OUT/evaluation)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text(
        "written by intra demo; a rerun with this --out replaces the folder's data, run and evaluation\n"
    )
    return out

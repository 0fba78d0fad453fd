"""Plot validation loss and image AUROC against training time for runs made by curves.py.

    python benchmarks/plot_curves.py --out docs/training-curves.png --variant s1-.5-f7-2-z \
        "D 64, 5 blocks=runs/curves/F15" "D 96, 3 blocks=runs/curves/M15"

Each LABEL=RUN folder holds train_log.jsonl (validation loss per epoch) and snap-<minutes>/
folders scored by score_sweep.py (snap-*/score_sweep.json, plotted for --variant) or by
`curves.py evaluate` (snap-*/metrics.json, plotted without --variant). Needs matplotlib (not a
library dependency). docs/benchmarks.md ("Quality per training minute") has the full commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument(
        "--variant",
        default="",
        help="scoring variant of score_sweep.json to plot (default: the metrics.json of curves.py evaluate)",
    )
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args()
    fig, (loss_ax, auroc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for spec in args.runs:
        label, _, folder = spec.partition("=")
        folder = Path(folder)
        log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        loss_ax.plot([r["seconds"] / 60 for r in log], [r["val_loss"] for r in log], label=label)
        points = []
        for snap in (p for p in folder.glob("snap-*") if p.is_dir()):
            sweep, metrics = snap / "score_sweep.json", snap / "metrics.json"
            stats = json.loads((snap / "model.json").read_text())["stats"]
            if args.variant and sweep.is_file():
                result = next(r for r in json.loads(sweep.read_text())["results"] if r["variant"] == args.variant)
                points.append((stats["minutes"], result["image_auroc"]))
            elif not args.variant and metrics.is_file():  # curves.py evaluate: the run's own scoring
                points.append((stats["minutes"], json.loads(metrics.read_text())["image_auroc"]))
        points.sort()
        auroc_ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    loss_ax.set(xlabel="training minutes", ylabel="validation loss", yscale="log", title="validation loss")
    auroc_ax.set(
        xlabel="training minutes",
        ylabel="image AUROC",
        title=f"image AUROC (scoring: {args.variant or 'as configured'})",
    )
    for ax in (loss_ax, auroc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()

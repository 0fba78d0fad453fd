"""Plot each run's inpainting error on held-out normal images against training time, beside the trivial fills.

    python benchmarks/plot_inpainting.py --out docs/inpainting-per-minute.png \
        "magnetic tile=runs/mt" "synthetic objects=runs/objects" "synthetic texture=runs/texture"

Reads RUN/train_log.jsonl (written by `intra train`): per epoch, `val_inpaint` (the network's mean
squared error on the held-out images, read as scoring reads them) and `val_fills` (the same error
for the ring-mean, smooth and flat fills). One panel per run: the network's error per training
minute, and the ring and smooth fills as horizontal lines. A network inpaints where its curve
lies clearly below the smooth fill. Needs matplotlib (a dependency of the package).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    fig = Figure(figsize=(4.2 * len(args.runs), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(args.runs), squeeze=False)[0]
    for ax, spec in zip(axes, args.runs):
        label, _, folder = spec.partition("=")
        log = [r for r in read_log(Path(folder)) if "val_inpaint" in r]
        minutes = [r["seconds"] / 60 for r in log]
        ax.plot(minutes, [r["val_inpaint"] for r in log], "o-", color="#c2410c", label="network")
        fills = log[-1]["val_fills"]
        for name, colour in (("smooth", "#2563eb"), ("ring", "#6b7280")):
            ax.axhline(fills[name], color=colour, ls="--", lw=1, label=f"{name} fill")
        ax.set(title=label, xlabel="training minutes", ylabel="MSE on held-out normal images", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

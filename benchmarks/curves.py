"""Quality against training time: train once, keep snapshots, evaluate each snapshot.

    python benchmarks/curves.py train --data DATA --out RUN --minutes 8 --snapshots 2,4,8 \
        --threads 1 --set train.lr=1e-3 ...
    python benchmarks/curves.py evaluate --data DATA --out RUN --threads 1 [--eval-size 256]

`train` runs the real `Trainer` (preset `cpu` plus the --set overrides) and, at the first
validation after each snapshot time, saves the best weights so far as RUN/snap-<minutes>/ (a run
folder without mean map). `evaluate` fits the training mean map for each snapshot (on
score.mean_map_images training images) and evaluates it on DATA/test, writing
RUN/snap-<minutes>/metrics.json and RUN/curve.json (validation loss per epoch, metrics per
snapshot). An experiment script for docs/benchmarks.md, not part of the library.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from intra.checkpoint import load_checkpoint, save_checkpoint
from intra.config import apply_overrides, preset
from intra.core.model import InpaintingTransformer
from intra.data.datasets import training_images, validation_split
from intra.data.geometry import Geometry, resolve_geometry
from intra.data.images import image_size, load_images, resolve_color, standardize
from intra.evaluation.scoring import evaluate
from intra.files import write_json
from intra.inference.calibration import calibrate, training_split
from intra.inference.detector import Detector
from intra.runtime import configure_threads
from intra.training.trainer import SELECTION, Trainer


class SnapshotTrainer(Trainer):
    """A Trainer that saves the best weights so far when a snapshot time has passed."""

    def __init__(self, *args, run_dir: Path, snapshots: list[float], **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir, self.pending, self.t0 = run_dir, sorted(snapshots), time.perf_counter()

    def validate(self) -> dict:
        record = super().validate()
        metric = record[SELECTION[self.cfg.train.select]]
        minutes = (time.perf_counter() - self.t0) / 60
        best = self.eval_model.state_dict() if metric < self.best_metric else self.best_state
        while self.pending and minutes >= self.pending[0] - 0.05:
            model = copy.deepcopy(self.model)
            model.load_state_dict(best)
            stats = {
                "minutes": round(minutes, 3),
                "step": self.step,
                "epoch": self.epoch,
                "selected_by": SELECTION[self.cfg.train.select],
                "best_metric": min(metric, self.best_metric),
            }
            save_checkpoint(self.run_dir / f"snap-{self.pending.pop(0):g}", model, self.cfg, {}, stats)
        return record


def train(args: argparse.Namespace) -> None:
    cfg = preset("cpu")
    apply_overrides(cfg, dict(item.split("=", 1) for item in args.set))
    snapshots = [float(x) for x in args.snapshots.split(",")] if args.snapshots else []
    cfg.train.max_minutes = args.minutes
    cfg.train.threads = args.threads
    paths = training_images(args.data)
    cfg.data.color = resolve_color(cfg.data.color, paths)
    cfg.model.channels = 1 if cfg.data.color == "gray" else 3
    configure_threads(args.threads)
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    sizes = [image_size(p) for p in paths]
    resolve_geometry(cfg, sizes)  # as fit resolves it
    images = load_images(paths, Geometry.of(cfg), cfg.data.color)
    if cfg.data.standardize:
        images = [standardize(x) for x in images]
    train_idx, val_idx = validation_split(len(images), cfg.train, generator)
    train, val = [images[i] for i in train_idx], [images[i] for i in val_idx]
    pixels = torch.cat([x.flatten(1) for x in train], dim=1)
    model = InpaintingTransformer(cfg.model)
    model.set_pixel_stats(pixels.mean(dim=1), pixels.std(dim=1))
    trainer = SnapshotTrainer(model, train, val, cfg, generator, run_dir=out, snapshots=snapshots)
    stats = trainer.run(out / "train_log.jsonl")
    print(json.dumps(stats))


def evaluate_snapshots(args: argparse.Namespace) -> None:
    configure_threads(args.threads)
    out = Path(args.out)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    points = []
    for snap in sorted(out.glob("snap-*"), key=lambda p: float(p.name[5:])):
        if not (snap / "metrics.json").is_file():
            cfg, model, _, stats = load_checkpoint(snap)
            if args.mean_map_images:
                cfg.score.mean_map_images = args.mean_map_images
            start = time.perf_counter()
            detector = calibrate(Detector(model, cfg, stats=stats), *training_split(args.data, cfg))
            metrics = evaluate(detector, args.data, args.eval_size).metrics
            metrics.update(snapshot=stats, mean_map_seconds=round(time.perf_counter() - start - metrics["seconds"], 1))
            write_json(snap / "metrics.json", metrics)
        metrics = json.loads((snap / "metrics.json").read_text())
        points.append(
            {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "per_kind", "snapshot", "ms_per_image")}
        )
        print(snap.name, json.dumps(points[-1]))
    write_json(out / "curve.json", {"train_log": log, "snapshots": points})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train with snapshots")
    t.add_argument("--minutes", type=float, required=True, help="training budget")
    t.add_argument("--snapshots", default="", help="comma-separated snapshot times in minutes")
    t.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    e = commands.add_parser("evaluate", help="evaluate every snapshot")
    e.add_argument("--eval-size", type=int, default=256, help="pixel metrics at N x N")
    e.add_argument("--mean-map-images", type=int, default=0, help="training images for the mean map (0 = config)")
    for sub in (t, e):
        sub.add_argument("--data", required=True, help="MVTec-layout dataset")
        sub.add_argument("--out", required=True, help="run folder")
        sub.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    (train if args.command == "train" else evaluate_snapshots)(args)


if __name__ == "__main__":
    main()

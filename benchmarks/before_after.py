"""CPU throughput of the committed code against the code before the speed work (issue 3).

    git worktree add /tmp/intra-before 4ec6ad4          # main before the speed branch was merged
    PYTHONPATH=/tmp/intra-before/src python benchmarks/before_after.py --label before
    PYTHONPATH=src python benchmarks/before_after.py --label after

Times, with the same random weights and images and the same thread count, what both versions
share: `Detector.reconstruct` (every window of every image, the inference hot path) and
`Trainer.train_step` (sample, forward, loss, backward, Adam), for the `cpu` preset's network
(D 64, 5 blocks, K 8, L 7, 128 px) and the paper's (256 px). The training rows use the cpu
task of one covered patch per window with a constant learning rate and no clipping, which the
old code also has. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import torch

from intra.config import preset
from intra.core.model import InpaintingTransformer
from intra.inference.detector import Detector
from intra.training.trainer import Trainer


def network_config(name: str):
    cfg = preset(name)
    cfg.model.channels = 3
    cfg.model.head = "covered"  # the same network in both versions (the old cpu preset used "mean")
    # Quality options of the new code off, so that both run the same computation.
    for key, value in {"cover_spacing": 0, "schedule": "constant", "grad_clip": 0.0}.items():
        if hasattr(cfg.train, key):
            setattr(cfg.train, key, value)
    return cfg


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def inference(name: str, images: int, repeat: int) -> dict:
    cfg = network_config(name)
    torch.manual_seed(0)
    detector = Detector(InpaintingTransformer(cfg.model), cfg)
    size = cfg.model.image_size
    batch = torch.rand(images, 3, size, size)
    seconds = best_seconds(lambda: detector.reconstruct(batch), repeat)
    windows = images * cfg.model.grid**2
    return {
        "what": "inference",
        "preset": name,
        "images": images,
        "windows_per_s": windows / seconds,
        "ms_per_image": 1000 * seconds / images,
    }


def training(name: str, steps: int) -> dict:
    cfg = network_config(name)
    torch.manual_seed(0)
    size = cfg.model.image_size
    images = torch.rand(8, 3, size, size)
    trainer = Trainer(InpaintingTransformer(cfg.model), images, images[:2], cfg, torch.Generator().manual_seed(0))
    # The old code's train_step took a batch number it never used; the new one takes none.
    takes_number = "batch_number" in inspect.signature(trainer.train_step).parameters
    step = (lambda: trainer.train_step(1)) if takes_number else trainer.train_step
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {
        "what": "training",
        "preset": name,
        "batch": cfg.train.batch_size,
        "windows_per_s": steps * cfg.train.batch_size / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="a name for this code version (before, after)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [inference("cpu", 16, 3), training("cpu", 40), inference("paper", 1, 2)]
    for row in rows:
        print(json.dumps({"label": args.label, "threads": args.threads, "torch": torch.__version__, **row}))


if __name__ == "__main__":
    main()

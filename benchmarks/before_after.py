"""The committed code against an older version of intra, side by side in one run, on one machine.

    git worktree add /tmp/intra-f766 f766024          # the version to compare against
    python benchmarks/before_after.py --old /tmp/intra-f766/src --threads 2 --rounds 3

Each measurement runs in a fresh subprocess with the version's `src` first on the import path,
alternating old and new within every round so that a change in the machine's load falls on both;
the best of the rounds is kept. Each version runs its own `cpu` preset, as `intra train` and
`intra predict` would (its own placement plan, batch size and training task), on random weights
and random 128 px images:

- inference: milliseconds per image of `Detector.reconstruct` (the network's share of `predict`),
  with the C allocator set up as the version's `intra` command sets it;
- training: windows per second of `Trainer.train_step` (sample, forward, loss, backward, step), and
  covered patches per second: the targets those windows hold, each version's own lattice.

Prints a markdown table with the ratios, and one JSON line per measurement with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Runs inside the subprocess: only names both versions have (their modules moved between them).
WORKER = r"""
import json, sys, time, torch
what, threads, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
from intra.config import preset
try:
    from intra.core.model import InpaintingTransformer
    from intra.inference.detector import Detector
    from intra.training.trainer import Trainer
except ImportError:  # the flat layout before the restructure
    from intra.model import InpaintingTransformer
    from intra.inference import Detector
    from intra.train import Trainer
try:  # as the `intra` command does at start-up, in the versions that have it
    from intra.runtime import reuse_freed_memory
    reuse_freed_memory()
except ImportError:
    pass
cfg = preset("cpu")
cfg.model.channels = 3
torch.manual_seed(0)
size = cfg.model.image_size
batch = torch.rand(images, 3, size, size)
model = InpaintingTransformer(cfg.model)

def best(fn, repeat):
    fn()  # warm-up: packing, first allocations
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)

if what == "inference":
    detector = Detector(model.eval(), cfg)
    seconds = best(lambda: detector.reconstruct(batch), 3)
    print(json.dumps({"ms_per_image": 1000 * seconds / images}))
else:
    trainer = Trainer(model, batch, batch[:2], cfg, torch.Generator().manual_seed(0))
    params = __import__("inspect").signature(trainer.train_step).parameters
    step = (lambda: trainer.train_step(1)) if "batch_number" in params else trainer.train_step
    steps = 30
    seconds = best(lambda: [step() for _ in range(steps)], 2)
    # tools.speed.covered_per_window's formula, written out: the old code has no such function.
    spacing = getattr(cfg.train, "cover_spacing", 0)  # each position is covered with probability 1/s
    covered = (cfg.model.window / spacing) ** 2 if spacing else 1.0
    rate = steps * cfg.train.batch_size / seconds
    print(json.dumps({"windows_per_s": rate, "batch": cfg.train.batch_size, "covered_per_window": covered}))
"""


def measure(src: Path, what: str, threads: int, images: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, what, str(threads), str(images)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the older version's src folder")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16, help="images per inference batch")
    parser.add_argument("--json", action="store_true", help="also print every measurement as a JSON line")
    args = parser.parse_args()
    best: dict[tuple[str, str], dict] = {}
    for round_number in range(args.rounds):
        for what in ("inference", "training"):
            for label, src in (("old", args.old), ("new", args.new)):
                row = measure(src, what, args.threads, args.images)
                if args.json:
                    print(json.dumps({"round": round_number, "version": label, "what": what, **row}))
                key, value = (what, label), row.get("ms_per_image", -row.get("windows_per_s", 0))
                if key not in best or value < best[key]["value"]:
                    best[key] = {**row, "value": value}
    inf_old, inf_new = best[("inference", "old")], best[("inference", "new")]
    tr_old, tr_new = best[("training", "old")], best[("training", "new")]
    print(f"| cpu preset, {args.threads} threads, best of {args.rounds} | old | new | ratio |")
    print("|---|---|---|---|")
    old_ms, new_ms = inf_old["ms_per_image"], inf_new["ms_per_image"]
    print(f"| inference, ms per 128 px image | {old_ms:.1f} | {new_ms:.1f} | {old_ms / new_ms:.2f}x faster |")
    old_w, new_w = tr_old["windows_per_s"], tr_new["windows_per_s"]
    print(
        f"| training, windows per s (batch {tr_old['batch']} / {tr_new['batch']}) | {old_w:.0f} | {new_w:.0f} "
        f"| {new_w / old_w:.2f}x |"
    )
    # What a training step teaches: the covered patches it predicts (each version's own lattice).
    old_p, new_p = old_w * tr_old["covered_per_window"], new_w * tr_new["covered_per_window"]
    print(
        f"| training, covered patches per s ({tr_old['covered_per_window']:.2f} / {tr_new['covered_per_window']:.2f} "
        f"per window) | {old_p:.0f} | {new_p:.0f} | {new_p / old_p:.2f}x |"
    )


if __name__ == "__main__":
    main()

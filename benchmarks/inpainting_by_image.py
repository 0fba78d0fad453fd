"""Which normal images a network inpaints well, and which barely better than smoothing.

    python benchmarks/inpainting_by_image.py --run RUN --data DATA --threads 2 [--every 13]

`intra evaluate` and `train_log.jsonl` report one ratio over many images: the network's mean
squared error over the smooth fill's (`evaluation/inpainting.py`), so the images with the largest
errors weigh most. This splits it: on the run's held-out validation images and on every N-th of its
training images (as `fit` split them, read and standardised as the run reads them), each image's
ratio to its own smooth fill, then the images grouped by terciles of their mean brightness and of
their contrast (pixel standard deviation), each group's ratio of means; and the ratio of means on
the outermost patches (one patch wide along every border) against the rest, since the paper's
window placement covers a border patch in training a seventh as often as an inner one
(`train.window_placement`). Prints a markdown table.
An experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from intra.evaluation.inpainting import smooth_fill
from intra.inference.calibration import training_split
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def border_band(shape: tuple[int, int], patch: int) -> torch.Tensor:
    """(H, W) bool: the pixels of the outermost patches, one patch wide along every border."""
    band = torch.ones(shape, dtype=torch.bool)
    band[patch:-patch, patch:-patch] = False
    return band


def per_image(detector: Detector, images: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Each image's network and smooth-fill errors (whole, border patches, inner patches), brightness, contrast."""
    patch = detector.cfg.model.patch_size
    reconstructions = detector.reconstruct(images)
    out: dict[str, list[float]] = {}
    for x, r in zip(images, reconstructions):
        band = border_band(tuple(x.shape[-2:]), patch)
        for name, filled in (("network", r), ("smooth", smooth_fill(x[None], patch)[0])):
            error = (filled - x).square().mean(dim=0)  # (H, W)
            out.setdefault(name, []).append(float(error.mean()))
            out.setdefault(f"{name} border", []).append(float(error[band].mean()))
            out.setdefault(f"{name} inner", []).append(float(error[~band].mean()))
        out.setdefault("brightness", []).append(float(x.mean()))
        out.setdefault("contrast", []).append(float(x.std()))
    return {name: np.array(values) for name, values in out.items()}


def row(label: str, network: np.ndarray, smooth: np.ndarray) -> str:
    """One markdown row: images, ratio of mean errors (as reported), median and range of per-image ratios."""
    ratio = network / smooth
    return (
        f"| {label} | {len(ratio)} | {network.mean() / smooth.mean():.2f} | {np.median(ratio):.2f} "
        f"| {ratio.min():.2f}-{ratio.max():.2f} |"
    )


def rows(name: str, r: dict[str, np.ndarray]) -> list[str]:
    """Markdown rows: all images, border and inner patches, then terciles of brightness and of contrast."""
    out = [row(f"{name}, all", r["network"], r["smooth"])]
    for part in ("border", "inner"):
        out.append(row(f"{name}, {part} patches only", r[f"network {part}"], r[f"smooth {part}"]))
    for key in ("brightness", "contrast"):
        edges = np.quantile(r[key], [0, 1 / 3, 2 / 3, 1])
        for low, high, label in zip(edges[:-1], edges[1:], ("lowest", "middle", "highest")):
            keep = (r[key] >= low) & (r[key] <= high)
            out.append(
                row(f"{name}, {label} third of {key} ({low:.3f}-{high:.3f})", r["network"][keep], r["smooth"][keep])
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, help="the run's training data")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--every", type=int, default=13, help="every N-th training image (default 13)")
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run)
    train, val = training_split(args.data, detector.cfg)
    print("| images | count | ratio of means (as reported) | median of per-image ratios | range |")
    print("|---|--:|--:|--:|--:|")
    for name, images in (("validation", val), (f"training, every {args.every}th", train[:: args.every])):
        print("\n".join(rows(name, per_image(detector, images))))


if __name__ == "__main__":
    main()

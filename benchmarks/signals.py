"""Which anomaly signals separate a dataset's defects? A diagnostic for docs/benchmarks.md.

    python benchmarks/signals.py --run RUN --data DATA --threads 2 [--train-images 300]

For one trained run and one MVTec-layout dataset of one image size (objects, or `data.resize =
square`), scores the test set with six maps, all at the model's image size and all z-scored per
pixel against the same training images (the images of
DATA/train/good that the run did not hold out for validation, the first --train-images of them;
for the kNN maps, half of them form the bank and the other half give the statistics):

- `intra`: the run's own anomaly map (its reconstruction difference map, as `intra evaluate`).
- `texture energy`: no learning at all; the local energy of the image minus its Gaussian blur
  (sigma 2 px), averaged over a 17 px square and divided by the image's median energy.
- `intensity, darker` and `intensity, either way`: no learning either; the gray level, smoothed
  (Gaussian, sigma 2 px), z-scored per pixel against the training images: how much darker than
  normal each pixel is (the negated z-score), and how far from normal in either direction (|z|).
  The classic "variation model" of aligned-part inspection, one-sided and two-sided.
- `kNN raw patches`: each K x K patch's distance to its nearest training patch (pixels as features).
- `kNN encoder`: the same with the run's transformer features of the patch (window tokens with no
  patch covered, after the last block and LayerNorm): what the network learned, read PatchCore-style.

Prints image AUROC (the map's maximum), pixel AUROC, and both per defect kind (each kind against
the normal test images; a dataset with image labels only gets image AUROC alone), and writes them
as JSON to --out. An experiment script, not the library.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from intra.core.similarity import gaussian_filter, mean_filter
from intra.core.windows import lattice_plan, patchify
from intra.data.datasets import test_samples, training_images, validation_split
from intra.data.images import load_images, load_mask
from intra.evaluation.metrics import auroc
from intra.files import write_json
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def texture_energy(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) log local high-pass energy relative to the image's median."""
    gray = images.mean(1, keepdim=True)
    energy = mean_filter((gray - gaussian_filter(gray, 2.0)) ** 2, 17)[:, 0]
    return (energy / energy.flatten(1).median(1).values[:, None, None].clamp_min(1e-12)).clamp_min(1e-12).log()


@torch.inference_mode()
def encoder_features(detector: Detector, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """(B, C, H, W) -> (B, M*N, D): every patch's features from a window that holds it, nothing covered."""
    net, m = detector.model, detector.cfg.model
    plan = lattice_plan((m.grid, m.grid), m.window, 1)  # windows tiling the grid; each patch owned once
    tokens, owned = plan.tokens, plan.read
    out = torch.empty(len(images), m.grid * m.grid, m.dim)
    for start in range(0, len(images), batch):
        embedded = net.embed_patches(patchify(detector.prepare(images[start : start + batch]), m.patch_size))
        n = len(embedded)
        for window, own in zip(tokens, owned):
            x = net.tokens(embedded[:, window], torch.zeros(n, len(window), dtype=torch.bool), window.expand(n, -1))
            features = net.norm(net.forward_blocks(x))  # (n, L*L, D)
            out[start : start + n, window[own]] = features[:, own]
    return out


def knn_map(features: torch.Tensor, bank: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """Distance of every patch feature (B, M*N, F) to its nearest bank row (R, F) -> (B, size, size)."""
    queries = features.reshape(-1, features.shape[-1])
    nearest = torch.cat([torch.cdist(q, bank).amin(1) for q in queries.split(4096)])
    grid_map = nearest.view(len(features), 1, grid, grid)
    return F.interpolate(grid_map, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def zscore(test: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    mean, std = train.mean(0), train.std(0)
    return (test - mean) / std.clamp_min(0.01 * float(std.mean()) + 1e-12)


def gray_level(images: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) the mean over channels, Gaussian-smoothed."""
    return gaussian_filter(images.mean(1, keepdim=True), sigma)[:, 0]


def scores_by_kind(maps: np.ndarray, masks: np.ndarray | None, kinds: np.ndarray) -> dict:
    """Image AUROC (map maximum) and pixel AUROC (None: image labels only, no pixel metrics), overall
    and per defect kind against the normal images."""
    image = maps.reshape(len(maps), -1).max(1)
    normal = kinds == "good"
    result = {"image_auroc": auroc(image, kinds != "good")}
    if masks is not None:
        result["pixel_auroc"] = auroc(maps.ravel(), masks.ravel())
    for kind in sorted(set(kinds) - {"good"}):
        pick = normal | (kinds == kind)
        result[f"image_{kind}"] = auroc(image[pick], kinds[pick] == kind)
        if masks is not None:
            result[f"pixel_{kind}"] = auroc(maps[pick].ravel(), masks[pick].ravel())
    return result


def summary(r: dict) -> str:
    """One line of scores_by_kind's results: image (/ pixel) AUROC, overall and per kind."""
    pixels = "pixel_auroc" in r
    pair = lambda kind: f"{r['image_' + kind]:.3f}" + (f"/{r['pixel_' + kind]:.3f}" if pixels else "")  # noqa: E731
    kinds = [k[6:] for k in r if k.startswith("image_") and k != "image_auroc"]
    overall = f"image / pixel {pair('auroc')}" if pixels else f"image {r['image_auroc']:.3f}"
    return f"{overall} | per kind: " + "  ".join(f"{kind} {pair(kind)}" for kind in kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="trained run folder")
    parser.add_argument("--data", required=True, help="MVTec-layout dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--train-images", type=int, default=300, help="training images for the statistics and the kNN bank"
    )
    parser.add_argument("--out", help="JSON output (default RUN/signals.json)")
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run, device="cpu")
    cfg, m = detector.cfg, detector.cfg.model
    if cfg.data.resize == "scale" and not (cfg.data.height and cfg.data.width):
        parser.error(f"{args.run} scores images of many sizes (a texture run): per-pixel statistics need one size")
    samples = test_samples(args.data)
    kinds = np.array([s.kind for s in samples])
    masks = None  # image labels only (no ground_truth folder): no pixel metrics
    if any(s.mask_path for s in samples):
        masks = np.stack(
            [
                load_mask(s.mask_path, m.image_size).numpy() if s.mask_path else np.zeros((m.image_size,) * 2, bool)
                for s in samples
            ]
        )
    paths = training_images(args.data)
    train_index, _ = validation_split(len(paths), cfg.train, torch.Generator().manual_seed(cfg.train.seed))
    train_paths = [paths[i] for i in train_index][: args.train_images]
    test, train = (
        torch.stack(load_images(p, m.image_size, cfg.data.color)) for p in ([s.path for s in samples], train_paths)
    )

    def intra_maps(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([detector.difference_maps(b) for b in images.split(16)])

    def raw(images: torch.Tensor) -> torch.Tensor:  # pixels as features: (B, M*N, P)
        return patchify(detector.prepare(images), m.patch_size)

    grid, size = m.grid, m.image_size
    signals = {
        "intra": (intra_maps(test), intra_maps(train)),
        "texture energy": (texture_energy(test), texture_energy(train)),
    }
    # Already z-scored against the training images (None: no second z-score below).
    darker = zscore(gray_level(test), gray_level(train)).neg()
    signals["intensity, darker"] = (darker, None)
    signals["intensity, either way"] = (darker.abs(), None)
    # kNN: the bank is the first half of the training images; the z-score statistics come from the
    # second half (a bank image would be its own nearest neighbour).
    half = len(train) // 2
    for name, test_rows, train_rows in (
        ("kNN raw patches", raw(test), raw(train)),
        ("kNN encoder", encoder_features(detector, test), encoder_features(detector, train)),
    ):
        bank = train_rows[:half].reshape(-1, train_rows.shape[-1])
        signals[name] = (knn_map(test_rows, bank, grid, size), knn_map(train_rows[half:], bank, grid, size))

    results = {}
    for name, (test_maps, train_maps) in signals.items():
        scored = test_maps if train_maps is None else zscore(test_maps, train_maps)
        results[name] = r = scores_by_kind(scored.numpy(), masks, kinds)
        print(f"{name:21s} {summary(r)}", flush=True)
    out = Path(args.out) if args.out else Path(args.run) / "signals.json"
    write_json(out, {"run": str(args.run), "data": str(args.data), "train_images": len(train), "results": results})
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Which defect kinds a run's anomaly map misses, what weight they carry, and whether statistics of
local appearance would find them instead. A diagnostic for docs/benchmarks.md, not the library.

    python benchmarks/texture_statistics.py --run RUN --data DATA --threads 2 [--train-images 120] [--set score.KEY=VALUE]

Scores the test set as `intra evaluate` does (the run's stored scoring, or as `--set` changes it,
calibrated again: `--set score.choose=auto` chooses it again as training now would), then prints, per defect
kind: its share of all defect pixels (its weight in the pooled pixel AUROC), its pixel AUROC against
the good images, and the pooled pixel AUROC with that kind left out. Then the same per-kind pixel
AUROC for maps that need no inpainting, each a Mahalanobis distance of a local description from one
Gaussian fitted on the training images (position-free, as for a texture):

- `patches/d`: the raw 8 x 8 pixel patches (stride 4) of the image shrunk d times;
- `tokens/b`: the network's own token features after block b, windows tiling the patch grid with
  nothing covered.

A kind that every one of them misses as well is not told apart by these local descriptions of
appearance, learned or not: choosing among scorings of the same inpainting is then unlikely to find it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from intra.core.windows import patchify
from intra.data.datasets import GOOD, training_images
from intra.data.geometry import Geometry
from intra.data.images import load_images
from intra.evaluation.metrics import pixel_auroc
from intra.evaluation.scoring import Evaluation, evaluate
from intra.inference.calibration import rescore
from intra.inference.detector import Detector
from intra.runtime import configure_threads

Describe = Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int], int]]  # image -> (features, grid, step)


def kind_table(evaluation: Evaluation, maps: list[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC of `maps` per defect kind (against the good images)."""
    kinds = [s.kind for s in evaluation.samples]
    table = {}
    for kind in sorted(set(kinds) - {GOOD}):
        chosen = [i for i, k in enumerate(kinds) if k in (GOOD, kind)]
        table[kind] = pixel_auroc([maps[i] for i in chosen], [evaluation.masks[i] for i in chosen])
    return table


def raw_patches(shrink: int) -> Describe:
    def describe(image: torch.Tensor):
        small = F.avg_pool2d(image[None], shrink)[0] if shrink > 1 else image
        h, w = small.shape[-2:]
        features = F.unfold(small[None], 8, stride=4)[0].T  # (n, C*64)
        return features, ((h - 8) // 4 + 1, (w - 8) // 4 + 1), 4 * shrink

    return describe


def network_tokens(detector: Detector, block: int) -> Describe:
    model, k, window = detector.model, detector.cfg.model.patch_size, detector.cfg.model.window

    @torch.no_grad()
    def describe(image: torch.Tensor):
        gh, gw = image.shape[-2] // k, image.shape[-1] // k
        patches = patchify(image[None, :, : gh * k, : gw * k], k)[0].reshape(gh, gw, -1)
        tops = sorted({*range(0, gh - window + 1, window), gh - window})
        lefts = sorted({*range(0, gw - window + 1, window), gw - window})
        windows = torch.stack(
            [patches[y : y + window, x : x + window].reshape(window * window, -1) for y in tops for x in lefts]
        )
        index = torch.arange(gh * gw).reshape(gh, gw)  # global positions: each patch's place on the grid
        positions = torch.stack([index[y : y + window, x : x + window].reshape(-1) for y in tops for x in lefts])
        x = model.tokens(model.embed_patches(windows), torch.zeros(windows.shape[:2], dtype=torch.bool), positions)
        sources, targets, saved = {s for s, _ in model.skips}, {t for _, t in model.skips}, []
        for number, layer in enumerate(model.blocks[:block], start=1):
            x = layer(x + saved.pop() if number in targets else x)
            if number in sources:
                saved.append(x)
        grid = torch.zeros(gh, gw, x.shape[-1])
        for i, (y, left) in enumerate((y, left) for y in tops for left in lefts):
            grid[y : y + window, left : left + window] = x[i].reshape(window, window, -1)
        return grid.reshape(gh * gw, -1), (gh, gw), k

    return describe


def mahalanobis_maps(describe: Describe, train: list[torch.Tensor], test: list[torch.Tensor]) -> list[np.ndarray]:
    """Each test image's map of distances from the Gaussian of the training images' descriptions."""
    features = torch.cat([describe(image)[0] for image in train]).double()
    mean = features.mean(0)
    precision = torch.linalg.inv(torch.cov((features - mean).T) + 1e-4 * torch.eye(features.shape[1]))
    maps = []
    for image in test:
        found, grid, step = describe(image)
        d = found.double() - mean
        distance = ((d @ precision) * d).sum(1).clamp_min(0).sqrt().float().reshape(1, 1, *grid)
        h, w = image.shape[-2:]
        up = F.interpolate(distance, size=(grid[0] * step, grid[1] * step), mode="bilinear", align_corners=False)
        up = F.pad(up, (0, max(w - up.shape[-1], 0), 0, max(h - up.shape[-2], 0)), mode="replicate")
        maps.append(ndimage.gaussian_filter(up[0, 0, :h, :w].numpy(), 4))
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=120)
    parser.add_argument("--set", action="append", default=[], metavar="score.KEY=VALUE")
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run, device="cpu", dtype="fp32")
    if args.set:
        detector = rescore(detector, dict(item.split("=", 1) for item in args.set), args.data)
    evaluation = evaluate(detector, args.data)
    if evaluation.masks is None:
        raise SystemExit(f"{args.data}: no masks, so no pixel metrics to break down")
    kinds = [s.kind for s in evaluation.samples]
    pixels = {k: sum(int(m.sum()) for m, kk in zip(evaluation.masks, kinds) if kk == k) for k in set(kinds) - {GOOD}}
    table = kind_table(evaluation, evaluation.maps)
    print(f"run's map: pooled pixel AUROC {evaluation.metrics['pixel_auroc']:.3f}")
    for kind in sorted(table):
        rest = [i for i, k in enumerate(kinds) if k != kind]
        without = pixel_auroc([evaluation.maps[i] for i in rest], [evaluation.masks[i] for i in rest])
        print(
            f"  {kind:12s} defect pixels {pixels[kind] / sum(pixels.values()):6.1%}  pixel AUROC {table[kind]:.3f}"
            f"  pooled without it {without:.3f}"
        )
    cfg = detector.cfg
    channels = 3 if cfg.data.color == "rgb" else 1
    train = load_images(training_images(args.data)[: args.train_images], Geometry.of(cfg), cfg.data.color)
    test = [torch.from_numpy(p.astype(np.float32) / 255).permute(2, 0, 1)[:channels] for p in evaluation.pictures]
    describers = {f"patches/{d}": raw_patches(d) for d in (1, 2, 4)}
    describers |= {f"tokens/{b}": network_tokens(detector, b) for b in range(1, len(detector.model.blocks) + 1)}
    for name, describe in describers.items():
        maps = mahalanobis_maps(describe, train, test)
        cells = "  ".join(f"{kind} {auroc:.3f}" for kind, auroc in kind_table(evaluation, maps).items())
        print(f"{name:10s} pooled {pixel_auroc(maps, evaluation.masks):.3f}  {cells}", flush=True)


if __name__ == "__main__":
    main()

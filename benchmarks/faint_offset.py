"""Does the network repaint a faint brightness offset, or fill in what should be there? A diagnostic.

    python benchmarks/faint_offset.py --run RUN --data DATA --threads 2 [--images 24] [--depth 0.05]

Darkens a soft disc (radius 6 to 12 px, full depth inside 0.4 of the radius, fading to nothing at
1.6 radii: the shape of the synthetic objects' stains) by --depth of the intensity in each of the
first --images good test images of one size, and reconstructs the clean and the darkened image
with the run's network. Prints, over the disc's core (the pixels at least half covered):

- `repeated`: the mean of (reconstruction of the darkened - reconstruction of the clean) over the
  mean of (darkened - clean). 1 means the network repaints the offset (no inpainting difference can
  see it); 0 means it fills in the clean brightness;
- the mean absolute inpainting error there on the clean images, against the offset's depth: where
  the error is the larger, a per-pixel difference (1 - GMS, |L1|) cannot tell the offset apart,
  while an average of the signed difference over the offset's area can.

An experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse

import torch

from intra.data.datasets import test_samples
from intra.data.images import load_images
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def soft_discs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A soft disc of random centre and radius per image: (n, H, W) weights in [0, 1]."""
    n, _, h, w = shape
    y, x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    discs = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=generator) * 0.3 + 0.35).tolist()
        radius = float(torch.rand((), generator=generator)) * 6 + 6
        distance = ((y - cy * h) ** 2 + (x - cx * w) ** 2).sqrt() / radius
        discs.append(((1.6 - distance) / 1.2).clamp(0, 1))
    return torch.stack(discs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True, help="the run's dataset (MVTec AD layout); its good test images")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--depth", type=float, default=0.05, help="darkening, a fraction of the intensity")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run, device="cpu", dtype="fp32")
    cfg = detector.cfg
    if cfg.data.resize == "scale" and not (cfg.data.height and cfg.data.width):
        parser.error(f"{args.run} scores images of many sizes (a texture run): this stacks images of one size")
    good = [s.path for s in test_samples(args.data) if s.kind == "good"][: args.images]
    clean = torch.stack(load_images(good, cfg.model.image_size, cfg.data.color))
    discs = soft_discs(tuple(clean.shape), torch.Generator().manual_seed(0))
    darkened = clean * (1 - args.depth * discs[:, None])
    with torch.inference_mode():
        seen_clean, seen_darkened = detector.prepare(clean), detector.prepare(darkened)
        rec_clean, rec_darkened = detector.reconstruct(seen_clean), detector.reconstruct(seen_darkened)
    core = (discs > 0.5)[:, None].expand_as(seen_clean)
    offset = (seen_darkened - seen_clean)[core].mean()
    repeated = (rec_darkened - rec_clean)[core].mean() / offset
    error = (rec_clean - seen_clean)[core].abs().mean()
    print(
        f"{args.run}: {len(good)} images, offset depth {float(-offset):.4f}; repeated by the reconstruction "
        f"{float(repeated):.3f}; mean |inpainting error| there on the clean images {float(error):.4f} "
        f"({float(error / -offset):.2f} x the depth)"
    )


if __name__ == "__main__":
    main()

"""Inpainting quality: how well a network fills the patches of normal images, against trivial fills.

A detector built on an inpainter is only as good as its inpainting, so every run measures it: the
mean squared pixel error (the L2 of the loss) between normal images and their reconstructions,
read exactly as scoring reads them (`Detector.reconstruct`, the plan of `score.cover_spacing`),
beside three fills that know nothing of the data, each patch of the grid filled from the true
pixels around it:

- `ring`:   every pixel = the mean of the one-pixel ring bordering the patch (inside the image);
- `smooth`: biharmonic inpainting of the patch from the two pixels around it (`core.smooth_fill`,
            the equation of scikit-image's `inpaint_biharmonic`), a smooth surface that continues
            the image's values and gradients across the border;
- `flat`:   the oracle flat patch, the patch's own mean: no fill constant over a patch does better.

A network inpaints when its error is clearly below the better of `ring` and `smooth` (`ratio`,
network / that fill, well under 1); a ratio near 1 means its reconstructions are blurred squares
and its anomaly maps measure little more than local contrast. Pure functions of tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.smooth_fill import fill_patches

FILLS = ("ring", "smooth", "flat")


def _blocks(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Per-patch values (B, C, M, N) -> constant patches (B, C, M*K, N*K)."""
    return x.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)


def flat_fill(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Each patch replaced by its own mean: (B, C, H, W) -> (B, C, H, W)."""
    return _blocks(F.avg_pool2d(images, patch), patch)


def ring_fill(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Each patch replaced by the mean of the pixels bordering it (those inside the image): (B, C, H, W) -> same."""
    k = patch
    padded = F.pad(images, (1, 1, 1, 1))
    inside = F.pad(torch.ones_like(images[:, :1]), (1, 1, 1, 1))
    # Sums over each patch grown by one pixel, less the patch itself: the ring (stride K, window K + 2).
    outer = F.avg_pool2d(padded, k + 2, stride=k) * (k + 2) ** 2  # (B, C, M, N)
    count = F.avg_pool2d(inside, k + 2, stride=k) * (k + 2) ** 2 - k * k  # (B, 1, M, N) ring pixels in the image
    ring = (outer - F.avg_pool2d(images, k) * k * k) / count
    return _blocks(ring, k)


def smooth_fill(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Each patch filled by biharmonic inpainting from the two-pixel ring around it: (B, C, H, W) -> same
    (`core.smooth_fill`: at the image's border the missing side is left out, never padded in)."""
    return fill_patches(images.double(), patch).to(images.dtype)


def squared_error(a, b) -> torch.Tensor:
    """Mean squared pixel error per image: (B, C, H, W) x 2, or two lists of (C, h, w) -> (B,)."""
    if isinstance(a, torch.Tensor):
        return (a - b).square().flatten(1).mean(dim=1)
    return torch.stack([(x - y).square().mean() for x, y in zip(a, b)])


def fill_errors(images, patch: int) -> dict[str, float]:
    """The mean over images of each trivial fill's squared error: images (B, C, H, W) or a list of (C, h, w)."""
    fills = {"ring": ring_fill, "smooth": smooth_fill, "flat": flat_fill}
    if isinstance(images, torch.Tensor):
        return {name: float(squared_error(fill(images, patch), images).mean()) for name, fill in fills.items()}
    per_image = [fill_errors(x[None], patch) for x in images]
    return {name: sum(e[name] for e in per_image) / len(per_image) for name in fills}


def best_fill(fills: dict[str, float]) -> float:
    """The error a network must beat: the better of the ring and smooth fills (the flat one is an oracle)."""
    return max(min(fills["ring"], fills["smooth"]), 1e-12)


def inpainting_report(images: torch.Tensor, reconstructions: torch.Tensor, fills: dict[str, float]) -> dict[str, float]:
    """The network's error on normal images beside the fills' (see `fill_errors`).

    {"network", "ring", "smooth", "flat", "ratio"}: ratio = network / `best_fill`.
    """
    network = float(squared_error(reconstructions, images).mean())
    return {"network": network, **fills, "ratio": network / best_fill(fills)}

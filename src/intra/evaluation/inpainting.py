"""Inpainting quality: how well a network fills the patches of normal images, against trivial fills.

A detector built on an inpainter is only as good as its inpainting, so every run measures it: the
mean squared pixel error (the L2 of the loss) between normal images and their reconstructions,
read exactly as scoring reads them (`Detector.reconstruct`, the plan of `score.cover_spacing`),
beside three fills that know nothing of the data, each patch of the grid filled from the true
pixels around it:

- `ring`:   every pixel = the mean of the one-pixel ring bordering the patch (inside the image);
- `smooth`: biharmonic inpainting of the patch from the two pixels around it (the equation of
            scikit-image's `inpaint_biharmonic`), a smooth surface that continues the image's
            values and gradients across the border;
- `flat`:   the oracle flat patch, the patch's own mean: no fill constant over a patch does better.

A network inpaints when its error is clearly below the better of `ring` and `smooth` (`ratio`,
network / that fill, well under 1); a ratio near 1 means its reconstructions are blurred squares
and its anomaly maps measure little more than local contrast. Pure functions of tensors.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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


@functools.cache
def biharmonic_operator(patch: int) -> torch.Tensor:
    """The linear map from a (K+4) x (K+4) window to the biharmonic fill of its central K x K patch: (K*K, (K+4)^2).

    Solves the discrete biharmonic equation (the 13-point stencil of the squared Laplacian, as
    scikit-image's `inpaint_biharmonic`) at every patch pixel, with the two-pixel ring around the
    patch as the known values. The same geometry for every patch: solved once, applied as one product.
    """
    n = patch + 4
    inner = {(i, j): (i - 2) * patch + (j - 2) for i in range(2, patch + 2) for j in range(2, patch + 2)}
    stencil = {(0, 0): 20.0, (1, 0): -8.0, (-1, 0): -8.0, (0, 1): -8.0, (0, -1): -8.0, (2, 0): 1.0, (-2, 0): 1.0}
    stencil.update({(0, 2): 1.0, (0, -2): 1.0, (1, 1): 2.0, (1, -1): 2.0, (-1, 1): 2.0, (-1, -1): 2.0})
    a = torch.zeros(patch * patch, patch * patch, dtype=torch.float64)
    b = torch.zeros(patch * patch, n * n, dtype=torch.float64)
    for (i, j), row in inner.items():
        for (di, dj), weight in stencil.items():
            q = (i + di, j + dj)
            if q in inner:
                a[row, inner[q]] += weight
            else:
                b[row, q[0] * n + q[1]] += weight
    return -torch.linalg.solve(a, b)  # a u + b ring = 0


def smooth_fill(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Each patch filled by biharmonic inpainting from the two-pixel ring around it: (B, C, H, W) -> same.

    Every patch is filled from the true pixels around it (the image reflected at its border).
    """
    b, c, h, w = images.shape
    k = patch
    padded = F.pad(images.double(), (2, 2, 2, 2), mode="reflect")
    windows = F.unfold(padded, kernel_size=k + 4, stride=k).view(b, c, (k + 4) ** 2, -1)  # (B, C, (K+4)^2, M*N)
    filled = biharmonic_operator(k).to(images.device) @ windows  # (B, C, K*K, M*N)
    return F.fold(filled.view(b, c * k * k, -1), (h, w), kernel_size=k, stride=k).to(images.dtype)


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

"""From an image and its inpainted reconstruction to an anomaly map and a score (paper section 5).

For each scale l (1/2 and 1/4 by default): downscale image and reconstruction to l*H x l*W
(bilinear, antialiased), take 1 - GMS averaged over channels, smooth with a mean filter and then a
Gaussian, upsample bilinearly to H x W. The difference map is the mean over scales. With the
training mean map `mu`, anomap = (diff - mu)^2 pixel-wise; the image score is its maximum.

Filter sizes at scale l: mean filter side = the odd number nearest to `mean_filter * l`, Gaussian
sigma = `gaussian_sigma * l` (radius ceil(3 sigma)). With the defaults (21, 4.0): at 1/2 a 11 x 11
mean filter and sigma 2 (13 taps); at 1/4 a 5 x 5 mean filter and sigma 1 (7 taps).
All functions are pure: tensors in, tensors out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import ScoreConfig
from .similarity import gaussian_filter, gms_map, mean_filter


def odd_size(size: float) -> int:
    """The odd integer nearest to size (at least 1): 10.5 -> 11, 5.25 -> 5."""
    return max(1, 2 * math.floor(size / 2) + 1)


def filter_sizes(cfg: ScoreConfig) -> list[dict[str, float]]:
    """The smoothing actually used at each scale, for reports: [{scale, mean_filter, gaussian_sigma}]."""
    return [
        {"scale": s, "mean_filter": odd_size(cfg.mean_filter * s), "gaussian_sigma": cfg.gaussian_sigma * s}
        for s in cfg.scales
    ]


def difference_map(image: torch.Tensor, reconstruction: torch.Tensor, cfg: ScoreConfig) -> torch.Tensor:
    """Multi-scale GMS difference map: (B, C, H, W) x 2 -> (B, H, W)."""
    h, w = image.shape[-2:]
    total = image.new_zeros(image.shape[0], 1, h, w)
    for scale, sizes in zip(cfg.scales, filter_sizes(cfg)):
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
        y = F.interpolate(reconstruction, size=size, mode="bilinear", antialias=True, align_corners=False)
        d = 1 - gms_map(x, y).mean(dim=1, keepdim=True)  # (B, 1, lH, lW)
        d = gaussian_filter(mean_filter(d, sizes["mean_filter"]), sizes["gaussian_sigma"])
        total = total + F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
    return (total / len(cfg.scales))[:, 0]


def normalize(diff: torch.Tensor, mean_map: torch.Tensor | None, std_map: torch.Tensor | None = None) -> torch.Tensor:
    """anomap = (diff - mean_map)^2, (B, H, W) and (H, W) -> (B, H, W); unchanged without a mean map.

    With `std_map` (score.zscore, beyond the paper): anomap = (diff - mean_map) / std_map, the
    per-pixel z-score against the training images. Squaring also scores pixels reconstructed
    *better* than average, most where the mean is high (image borders); the z-score does not, and
    weighs every pixel by how much it varies on normal images. The std is floored at 1 % of its
    mean so that constant pixels do not divide by zero.
    """
    if mean_map is None:
        return diff
    if std_map is not None:
        std_map = std_map.to(diff)
        return (diff - mean_map.to(diff)) / std_map.clamp_min(0.01 * float(std_map.mean()) + 1e-12)
    return (diff - mean_map.to(diff)) ** 2


def image_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of the anomaly map: (B, H, W) -> (B,)."""
    return anomaly_map.flatten(1).amax(dim=1)

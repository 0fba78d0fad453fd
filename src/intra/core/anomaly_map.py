"""From an image and its inpainted reconstruction to an anomaly map and a score (paper section 5).

For each scale l (1/2 and 1/4 by default): downscale image and reconstruction to l*H x l*W
(bilinear, antialiased), take 1 - GMS averaged over channels, smooth with a mean filter and then a
Gaussian, upsample bilinearly to H x W. The difference map is the mean over scales. With the
training mean map `mu`, anomap = (diff - mu)^2 pixel-wise; the image score is its maximum.

Filter sizes at scale l: mean filter side = the odd number nearest to `mean_filter * l`, Gaussian
sigma = `gaussian_sigma * l` (radius ceil(3 sigma)). With the defaults (21, 4.0): at 1/2 a 11 x 11
mean filter and sigma 2 (13 taps); at 1/4 a 5 x 5 mean filter and sigma 1 (7 taps).
Beyond the paper, `score.difference` can add (or use instead) the *signed* difference: image minus
reconstruction averaged over channels, smoothed by the same filters while signed, then its
magnitude, times `score.signed_weight`. 1 - GMS compares gradients, so it cannot see a region whose
brightness is off by a few percent without edges of its own (a faint stain): the network does not
repaint such a region (it fills in the brightness the surroundings and its position call for), but
its per-pixel error on fine texture is larger than the offset. Averaged over the filters' area
before the magnitude is taken, that error cancels and the offset stays.
All functions are pure: tensors in, tensors out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import ModelConfig, ScoreConfig
from .similarity import downscale, gaussian_filter, gms_map, mean_filter


def odd_size(size: float) -> int:
    """The odd integer nearest to size (at least 1): 10.5 -> 11, 5.25 -> 5."""
    return max(1, 2 * math.floor(size / 2) + 1)


def filter_sizes(cfg: ScoreConfig) -> list[dict[str, float]]:
    """The smoothing actually used at each scale, for reports: [{scale, mean_filter, gaussian_sigma}]."""
    return [
        {"scale": s, "mean_filter": odd_size(cfg.mean_filter * s), "gaussian_sigma": cfg.gaussian_sigma * s}
        for s in cfg.scales
    ]


def gms_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - GMS averaged over channels: (B, C, H, W) x 2 -> (B, 1, H, W)."""
    return 1 - gms_map(x, y).mean(dim=1, keepdim=True)


def signed_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Image minus reconstruction averaged over channels: (B, C, H, W) x 2 -> (B, 1, H, W), signed."""
    return (x - y).mean(dim=1, keepdim=True)


def _smooth(d: torch.Tensor, sizes: dict[str, float]) -> torch.Tensor:
    """The mean filter, then the Gaussian, of one scale (`filter_sizes`): (B, 1, h, w) -> same shape."""
    return gaussian_filter(mean_filter(d, int(sizes["mean_filter"])), sizes["gaussian_sigma"])


def difference_map(
    image: torch.Tensor,
    reconstruction: torch.Tensor,
    cfg: ScoreConfig,
    pixel_difference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multi-scale difference map: (B, C, H, W) x 2 -> (B, H, W).

    At each scale: the smoothed 1 - GMS (`score.difference` "gms", the paper), the magnitude of the
    smoothed signed difference times `score.signed_weight` ("signed"), or their sum ("both").
    `pixel_difference` (B, C, h, w) x 2 -> (B, 1, h, w), for experiments (benchmarks/difference_kinds.py),
    replaces them: it is smoothed and averaged as it is."""
    h, w = image.shape[-2:]
    total = image.new_zeros(image.shape[0], 1, h, w)
    for scale, sizes in zip(cfg.scales, filter_sizes(cfg)):
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x, y = downscale(image, size), downscale(reconstruction, size)
        if pixel_difference is not None:
            d = _smooth(pixel_difference(x, y), sizes)
        else:
            d = _smooth(gms_difference(x, y), sizes) if cfg.difference != "signed" else 0
            if cfg.difference != "gms":
                d = d + cfg.signed_weight * _smooth(signed_difference(x, y), sizes).abs()
        total = total + F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
    return (total / len(cfg.scales))[:, 0]


def statistics_depth(model: ModelConfig) -> int:
    """Pixels from the border within which texture statistics (data.kind = texture) depend on the distance
    to the border: half a window and a patch, where windows are clamped and filters pad."""
    return (model.window // 2 + 1) * model.patch_size


def border_bins(shape: tuple[int, int], depth: int, device: torch.device | None = None) -> torch.Tensor:
    """For every pixel of an (H, W) image, its bin in a (depth + 1)^2 table: (H, W) long.

    The bin is (dy, dx), the distances to the nearest top/bottom and left/right border, each capped at
    `depth`: statistics indexed so are position-free (the same for every interior pixel) and fit
    images of any size.
    """
    h, w = shape
    dy = torch.minimum(torch.arange(h, device=device), torch.arange(h, device=device).flip(0)).clamp_max(depth)
    dx = torch.minimum(torch.arange(w, device=device), torch.arange(w, device=device).flip(0)).clamp_max(depth)
    return dy[:, None] * (depth + 1) + dx[None, :]


def expand_statistic(statistic: torch.Tensor, shape: tuple[int, int], kind: str, depth: int) -> torch.Tensor:
    """A stored statistic laid out over an (H, W) map: a per-pixel map (kind object) or a border table (texture)."""
    if kind == "object":
        if tuple(statistic.shape) != tuple(shape):
            raise ValueError(f"per-pixel statistics of {tuple(statistic.shape)} cannot score a {tuple(shape)} map")
        return statistic
    return statistic.flatten()[border_bins(shape, depth, statistic.device)]


def std_floor(std: torch.Tensor) -> float:
    """The smallest standard deviation score.zscore divides by: 1 % of the mean, so constant pixels do not divide by 0."""
    return 0.01 * float(std.mean()) + 1e-12


def normalize(
    diff: torch.Tensor, mean_map: torch.Tensor | None, std_map: torch.Tensor | None = None, floor: float | None = None
) -> torch.Tensor:
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
        return (diff - mean_map.to(diff)) / std_map.clamp_min(std_floor(std_map) if floor is None else floor)
    return (diff - mean_map.to(diff)) ** 2


def image_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of the anomaly map: (B, H, W) -> (B,)."""
    return anomaly_map.flatten(1).amax(dim=1)


def peak(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Where the image score comes from: (B, H, W) -> (B, 2), the (x, y) centre of the map's maximum pixel as
    fractions of the map's width and height, so it lands on the same spot of the image at any resolution."""
    h, w = anomaly_map.shape[-2:]
    index = anomaly_map.flatten(1).argmax(dim=1)
    x = (index % w).to(torch.float32) + 0.5
    y = torch.div(index, w, rounding_mode="floor").to(torch.float32) + 0.5
    return torch.stack([x / w, y / h], dim=1)

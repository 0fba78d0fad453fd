"""Image similarity maps shared by the loss and the anomaly map: GMS and SSIM, plus small filters.

All functions take (B, C, H, W) tensors with values in [0, 1] and are differentiable.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

GMS_C = 0.0026  # GMS stability constant for values in [0, 1] (paper / RIAD)
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _per_channel(x: torch.Tensor, kernel: torch.Tensor, padding: str | int) -> torch.Tensor:
    """Convolve every channel of (B, C, H, W) with one 2-D kernel (kh, kw)."""
    c = x.shape[1]
    weight = kernel.to(x)[None, None].expand(c, 1, *kernel.shape)
    if isinstance(padding, str):
        ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
        x = F.pad(x, (pw, pw, ph, ph), mode=padding)
        padding = 0
    return F.conv2d(x, weight, padding=padding, groups=c)


@functools.cache
def _kernel(kind: str, sigma: float, radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A filter kernel made once per device: copying a CPU tensor to a GPU at every call makes the
    host wait for the GPU each time. Made outside inference mode, so training can use it too."""
    with torch.inference_mode(False):
        if kind == "prewitt":
            kernel = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
        else:
            g = gaussian_kernel1d(sigma, radius)
            kernel = g[:, None] * g[None, :] if kind == "gaussian2d" else g
        return kernel.to(device, dtype)


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude per channel, replicate padding: (B, C, H, W) -> (B, C, H, W)."""
    prewitt = _kernel("prewitt", 0.0, 1, x.device, x.dtype)
    gx = _per_channel(x, prewitt, "replicate")
    gy = _per_channel(x, prewitt.T, "replicate")
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


def gms_map(a: torch.Tensor, b: torch.Tensor, c: float = GMS_C) -> torch.Tensor:
    """Gradient magnitude similarity per channel: (B, C, H, W) x 2 -> (B, C, H, W), 1 where equal."""
    ma, mb = gradient_magnitude(a), gradient_magnitude(b)
    return (2 * ma * mb + c) / (ma * ma + mb * mb + c)


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of the given sigma; radius defaults to ceil(3 sigma)."""
    radius = math.ceil(3 * sigma) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per pixel and channel: (B, C, H, W) x 2 -> (B, C, H, W), 1 where equal.

    Gaussian window `window` x `window`, sigma 1.5, replicate padding to keep the size, so that
    small patches (8 or 16 px) keep every pixel. (Zero padding, as in pytorch-ssim, gives both
    images the same dark frame and lets a flat prediction reach SSIM 0.8 on a textured patch.)
    Away from the border it equals scikit-image's `structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, full=True)` map.
    """
    kernel = _kernel("gaussian2d", sigma, window // 2, a.device, a.dtype)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return _per_channel(x, kernel, "replicate")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return num / den


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per sample over every pixel and channel of `ssim_map`: (B, C, H, W) x 2 -> (B,)."""
    return ssim_map(a, b, window, sigma).flatten(1).mean(dim=1)


def mean_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Box filter of odd side `size`, replicate padding: (B, C, H, W) -> same shape."""
    if size <= 1:
        return x
    pad = size // 2
    return F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), size, stride=1)


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, radius ceil(3 sigma), replicate padding: (B, C, H, W) -> same shape."""
    if sigma <= 0:
        return x
    g = _kernel("gaussian1d", sigma, math.ceil(3 * sigma), x.device, x.dtype)
    x = _per_channel(x, g[None, :], "replicate")
    return _per_channel(x, g[:, None], "replicate")

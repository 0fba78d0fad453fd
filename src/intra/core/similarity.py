"""Image similarity maps shared by the loss and the anomaly map: GMS and SSIM, plus small filters.

All functions take (B, C, H, W) tensors with values in [0, 1] and are differentiable.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

GMS_C = 0.0026  # GMS stability constant for values in [0, 1] (paper / RIAD)
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


# Inputs up to this side (the loss's patches) are filtered by two small matrix products, larger ones
# (anomaly maps) by convolutions: for an 8 px patch one batched product is many times faster than
# a grouped convolution, for a 512 px map the convolution does far less work.
MATRIX_MAX_SIDE = 64


@functools.cache
def _taps(kind: str, sigma: float = 0.0, size: int = 0) -> tuple[float, ...]:
    """1-D correlation taps: Prewitt's smoothing and difference, a box of `size`, or a Gaussian."""
    if kind == "smooth":
        return (1 / 3, 1 / 3, 1 / 3)
    if kind == "difference":
        return (1.0, 0.0, -1.0)
    if kind == "box":
        return (1 / size,) * size
    radius = math.ceil(3 * sigma) if not size else size // 2
    return tuple(gaussian_kernel1d(sigma, radius).tolist())


@functools.cache
def _replicate_matrix(taps: tuple[float, ...], size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size, size) matrix M with (M x)[i] = sum_j taps[j] x[clamp(i + j - r)]: the taps along one axis, replicate padding.

    Made once per device, outside inference mode, so that training can use it too.
    """
    r = len(taps) // 2
    with torch.inference_mode(False):
        matrix = torch.zeros(size, size, dtype=torch.float64)
        rows = torch.arange(size)
        for j, tap in enumerate(taps):
            matrix.index_put_(
                (rows, (rows + j - r).clamp(0, size - 1)),
                torch.full((size,), tap, dtype=torch.float64),
                accumulate=True,
            )
        return matrix.to(device, dtype)


@functools.cache
def _conv_kernel(taps: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.tensor(taps, dtype=dtype, device=device)


def separable(x: torch.Tensor, rows: tuple[float, ...], cols: tuple[float, ...]) -> torch.Tensor:
    """Correlate every channel with taps `rows` down the columns and `cols` along the rows, replicate
    padding: (B, C, H, W) -> (B, C, H, W)."""
    h, w = x.shape[-2:]
    if max(h, w) <= MATRIX_MAX_SIDE:
        return _replicate_matrix(rows, h, x.device, x.dtype) @ x @ _replicate_matrix(cols, w, x.device, x.dtype).T
    c = x.shape[1]
    for taps, shape in ((rows, (len(rows), 1)), (cols, (1, len(cols)))):
        kernel = _conv_kernel(taps, x.device, x.dtype).view(1, 1, *shape).expand(c, 1, *shape)
        ph, pw = shape[0] // 2, shape[1] // 2
        x = F.conv2d(F.pad(x, (pw, pw, ph, ph), mode="replicate"), kernel, groups=c)
    return x


# Set by `resize_as_matrices` (the end-to-end export): downscale by matrix products, not Resize.
_MATRIX_RESIZE = contextvars.ContextVar("matrix_resize", default=False)


@contextlib.contextmanager
def resize_as_matrices() -> Iterator[None]:
    """Within this block `downscale` runs as two matrix products (see there); used while exporting."""
    token = _MATRIX_RESIZE.set(True)
    try:
        yield
    finally:
        _MATRIX_RESIZE.reset(token)


@functools.cache
def _resize_matrix(size: int, new: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(new, size): torch's antialiased bilinear resize along one axis, read off the identity (it is linear)."""
    with torch.inference_mode(False):
        eye = torch.eye(size, dtype=torch.float64)[None, None]  # (1, 1, size, size): resize the rows only
        matrix = F.interpolate(eye, size=(new, size), mode="bilinear", antialias=True, align_corners=False)
        return matrix[0, 0].to(device, dtype)


def downscale(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize: (B, C, H, W) -> (B, C, h, w).

    Inside `resize_as_matrices` the same linear map is two matrix products with torch's own weights
    (equal to rounding): ONNX runtimes disagree on Resize with antialias (OpenVINO 2026.4's differed from
    torch by 0.25 on a uniform random image halved), while every runtime agrees on MatMul.
    """
    if not _MATRIX_RESIZE.get():
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    (h, w), (new_h, new_w) = x.shape[-2:], size
    if (h, w) == (new_h, new_w):
        return x
    rows = _resize_matrix(h, new_h, x.device, x.dtype)  # (h', H)
    cols = _resize_matrix(w, new_w, x.device, x.dtype)  # (w', W)
    return rows @ x @ cols.T


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude per channel, replicate padding: (B, C, H, W) -> (B, C, H, W)."""
    gx = separable(x, _taps("smooth"), _taps("difference"))
    gy = separable(x, _taps("difference"), _taps("smooth"))
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
    taps = _taps("gaussian", sigma, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return separable(x, taps, taps)

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
    return separable(x, _taps("box", size=size), _taps("box", size=size))


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, radius ceil(3 sigma), replicate padding: (B, C, H, W) -> same shape."""
    if sigma <= 0:
        return x
    taps = _taps("gaussian", sigma)
    return separable(x, taps, taps)

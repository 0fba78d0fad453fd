"""Patches and windows: where every patch and window of an image sits.

Names follow the method page: an image of C x H x W pixels is a grid of M x N patches of K x K
pixels; a window is L x L patches with top-left patch (r, s); the covered patch is (t, u) on the
grid, or index `covered` = (t - r) * L + (u - s) inside its window. A patch is flattened as
C x K x K (channel first), so `patch.view(C, K, K)` is the image patch.

Training draws windows at random (`random_windows`); inference places one window per patch
(`inference_windows`) with the corner formula r = clamp(t - L // 2, 0, M - L).
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, M*N, C*K*K), patches in row-major grid order."""
    b, c, h, w = images.shape
    k = patch_size
    m, n = h // k, w // k
    x = images.reshape(b, c, m, k, n, k)  # (B, C, M, K, N, K)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, M, N, C, K, K)
    return x.reshape(b, m * n, c * k * k)


def unpatchify(patches: torch.Tensor, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, M*N, C*K*K) -> (B, C, M*K, N*K); the inverse of `patchify`."""
    b, mn, p = patches.shape
    m, n = grid
    k = int(round((p // channels) ** 0.5))
    x = patches.reshape(b, m, n, channels, k, k)  # (B, M, N, C, K, K)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, M, K, N, K)
    return x.reshape(b, channels, m * k, n * k)


def window_corner(t: torch.Tensor | int, grid: int, window: int) -> torch.Tensor:
    """First patch index of the window that inpaints patch t, along one axis.

    The paper writes it 1-indexed as g(x) = max(1, x - floor(L/2)), r = g(t) - max(0, g(t) + L - M - 1);
    0-indexed that is clamp(t - floor(L/2), 0, M - L): the covered patch sits at the window's
    centre except within floor(L/2) patches of a border.
    """
    t = torch.as_tensor(t)
    return (t - window // 2).clamp(0, grid - window)


def inference_windows(grid: tuple[int, int], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One window per patch of an M x N grid.

    Returns (tokens, covered): tokens (M*N, L*L) holds the flat grid index of every window token,
    in row-major window order, for the window that inpaints patch t*N + u; covered (M*N,) is the
    index of that patch inside its window. The flat grid indices double as global positions.
    """
    m, n = grid
    t = torch.arange(m).repeat_interleave(n)  # (M*N,) patch row
    u = torch.arange(n).repeat(m)  # (M*N,) patch column
    r, s = window_corner(t, m, window), window_corner(u, n, window)
    tokens = window_tokens(r, s, n, window)
    covered = (t - r) * window + (u - s)
    return tokens, covered


def window_tokens(r: torch.Tensor, s: torch.Tensor, columns: int, window: int) -> torch.Tensor:
    """Flat grid indices (B, L*L) of the windows with corners (r, s), each (B,), in a grid of `columns`."""
    offsets = torch.arange(window, device=r.device)
    rows = (r[:, None] + offsets)[:, :, None]  # (B, L, 1)
    cols = (s[:, None] + offsets)[:, None, :]  # (B, 1, L)
    return (rows * columns + cols).reshape(len(r), window * window)


def random_windows(
    count: int, grid: tuple[int, int], window: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corners and covered positions for `count` training windows, all uniform integers.

    Returns (r, s, covered), each (count,): r in {0..M-L}, s in {0..N-L}, covered in {0..L*L-1}.
    (Integer draws; rounding a uniform float would halve the probability of the end positions.)
    """
    m, n = grid
    r = torch.randint(0, m - window + 1, (count,), generator=generator)
    s = torch.randint(0, n - window + 1, (count,), generator=generator)
    covered = torch.randint(0, window * window, (count,), generator=generator)
    return r, s, covered


def crop_windows(
    images: torch.Tensor, image_index: torch.Tensor, r: torch.Tensor, s: torch.Tensor, window: int, patch_size: int
) -> torch.Tensor:
    """Pixels of windows: images (n, C, H, W), per-window image index, corners in patches -> (B, C, L*K, L*K)."""
    span = torch.arange(window * patch_size, device=images.device)
    rows = r[:, None] * patch_size + span  # (B, L*K)
    cols = s[:, None] * patch_size + span  # (B, L*K)
    # The slice between advanced indices moves C last: (B, L*K, L*K, C).
    crops = images[image_index[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2)

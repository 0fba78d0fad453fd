"""The smooth fill of a patch from the pixels around it: biharmonic inpainting, as a linear operator.

Every K x K patch of an image (or of a window) is filled with the solution of the discrete
biharmonic equation (the 13-point stencil of the squared Laplacian, the equation of
scikit-image's `inpaint_biharmonic`) at its pixels, the two-pixel ring around it as the known
values. Where the patch touches the image's border the ring is missing on that side: its terms are
left out of the stencil, so a patch's own pixels never enter its fill (no padding copies them in).
The operator depends only on K and on which sides are present, so it is solved once and applied
to every patch as one matrix product.

Two users: `evaluation.inpainting` measures networks against this fill, and `model.base_fill =
smooth` (beyond the paper) lets the network predict a correction to it instead of whole pixels.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .windows import patchify, unpatchify

_STENCIL = {(0, 0): 20.0, (1, 0): -8.0, (-1, 0): -8.0, (0, 1): -8.0, (0, -1): -8.0, (2, 0): 1.0, (-2, 0): 1.0}
_STENCIL.update({(0, 2): 1.0, (0, -2): 1.0, (1, 1): 2.0, (1, -1): 2.0, (-1, 1): 2.0, (-1, -1): 2.0})


@functools.cache
def biharmonic_operator(patch: int, sides: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> torch.Tensor:
    """(K*K, (K+4)^2) float64: from a (K+4) x (K+4) neighbourhood to the fill of its central patch.

    sides: whether the ring exists above, below, left and right of the patch (False at a border:
    those ring pixels are ignored, their columns of the operator are zero).
    """
    n = patch + 4
    above, below, left, right = sides
    rows_ok = [above] * 2 + [True] * patch + [below] * 2
    cols_ok = [left] * 2 + [True] * patch + [right] * 2
    inner = {(i, j): (i - 2) * patch + (j - 2) for i in range(2, patch + 2) for j in range(2, patch + 2)}
    a = np.zeros((patch * patch, patch * patch))
    b = np.zeros((patch * patch, n * n))
    for (i, j), row in inner.items():
        for (di, dj), weight in _STENCIL.items():
            qi, qj = i + di, j + dj
            if (qi, qj) in inner:
                a[row, inner[(qi, qj)]] += weight
            elif rows_ok[qi] and cols_ok[qj]:
                b[row, qi * n + qj] += weight
            else:  # outside the image: read as the centre's own value, so constants stay exact
                a[row, row] += weight
    # a u + b ring = 0, solved by numpy: a constant even while torch.export traces the caller
    return torch.from_numpy(-np.linalg.solve(a, b))


def _sides(rows, cols, grid: tuple[int, int]):
    """A code 0..15 per patch (ints or long tensors): bit 3 a neighbour above, 2 below, 1 left, 0 right."""
    m, n = grid
    return (rows > 0) * 8 + (rows < m - 1) * 4 + (cols > 0) * 2 + (cols < n - 1)


def _groups(grid: tuple[int, int]) -> dict[int, list[int]]:
    """Side code -> the flat indices of the grid's patches that have it, in plain Python (traceable)."""
    groups: dict[int, list[int]] = {}
    for i in range(grid[0]):
        for j in range(grid[1]):
            groups.setdefault(int(_sides(i, j, grid)), []).append(i * grid[1] + j)
    return groups


def _operator(code: int, patch: int, like: torch.Tensor) -> torch.Tensor:
    """The transposed operator of side code `code`, (Q, K*K), in `like`'s dtype and device."""
    sides = tuple(bool(code >> bit & 1) for bit in (3, 2, 1, 0))
    return biharmonic_operator(patch, sides).to(like.device, like.dtype).T


def _grid_pixels(patches: torch.Tensor, grid: tuple[int, int], channels: int, patch: int) -> torch.Tensor:
    """(B, M*N, C*K*K) patches -> (B, C, M*K + 4, N*K + 4): the pixels, with a 2-pixel margin of zeros (never read)."""
    (m, n), k = grid, patch
    x = patches.reshape(-1, m, n, channels, k, k).permute(0, 3, 1, 4, 2, 5).reshape(-1, channels, m * k, n * k)
    return F.pad(x, (2, 2, 2, 2))


def grid_operators(grid: tuple[int, int], patch: int) -> dict[int, torch.Tensor]:
    """The transposed operators (Q, K*K) of every side code a grid has: computed ahead, they are
    constants to a tracer (torch.export would otherwise trace the solve)."""
    return {code: _operator(code, patch, torch.zeros(())) for code in _groups(grid)}


def fill_grid(
    patches: torch.Tensor,
    grid: tuple[int, int],
    channels: int,
    patch: int,
    operators: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The smooth fill of every patch of a grid (a window, or a whole image) from its neighbours.

    patches (B, M*N, C*K*K) in `windows.patchify`'s layout -> (B, M*N, C*K*K). The grid's edges
    are its border: a patch there is filled from the sides it has. Index arithmetic depends on the
    grid alone (no data-dependent shapes), so the function exports to ONNX given `operators`
    (`grid_operators`, computed before tracing).
    """
    (m, n), k = grid, patch
    padded = _grid_pixels(patches, grid, channels, patch)
    span = torch.arange(k + 4, device=patches.device)
    rows = (torch.arange(m, device=patches.device)[:, None] * k + span)[:, :, None, None]  # (M, K+4, 1, 1)
    cols = (torch.arange(n, device=patches.device)[:, None] * k + span)[None, None]  # (1, 1, N, K+4)
    rings = padded[:, :, rows, cols]  # (B, C, M, K+4, N, K+4)
    rings = rings.permute(0, 2, 4, 1, 3, 5).reshape(-1, m * n, channels, (k + 4) ** 2)
    parts, order = [], []
    for code, where in _groups(grid).items():
        operator = operators[code] if operators else _operator(code, k, patches)
        parts.append(rings[:, torch.tensor(where, device=patches.device)] @ operator.to(patches.device, patches.dtype))
        order += where
    inverse = torch.empty(m * n, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(m * n)
    out = torch.cat(parts, dim=1)[:, inverse.to(patches.device)]  # (B, M*N, C, K*K), back in grid order
    return out.flatten(2)


def fill_selected(
    patches: torch.Tensor, select: torch.Tensor, grid: tuple[int, int], channels: int, patch: int
) -> torch.Tensor:
    """The smooth fill of the selected patches only: patches (B, M*N, P), select (B, M*N) bool -> (n, P).

    Rows follow `select` in row-major order (as `patches[select]`). What training and the engine
    use: a few covered patches per window, each filled from the window's other pixels.
    """
    k, n = patch, grid[1]
    padded = _grid_pixels(patches, grid, channels, patch)
    image, token = select.nonzero(as_tuple=True)
    rows, cols = token // n, token % n
    span = torch.arange(k + 4, device=patches.device)
    r = (rows[:, None] * k + span)[:, :, None]  # (n, K+4, 1)
    c = (cols[:, None] * k + span)[:, None, :]  # (n, 1, K+4)
    rings = padded[image[:, None, None], :, r, c]  # (n, K+4, K+4, C): the slice moves last
    rings = rings.permute(0, 3, 1, 2).reshape(len(token), channels, (k + 4) ** 2)
    codes = _sides(rows, cols, grid)
    out = patches.new_zeros(len(token), channels, k * k)
    for code in codes.unique().tolist():
        where = codes == code
        out[where] = rings[where] @ _operator(code, k, patches)
    return out.reshape(len(token), channels * k * k)


def fill_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Every patch of (B, C, H, W) replaced by its smooth fill from the pixels around it -> (B, C, H, W).

    A patch's fill reads only the two-pixel ring of its neighbours, never its own pixels.
    """
    b, c, h, w = images.shape
    grid = (h // patch, w // patch)
    return unpatchify(fill_grid(patchify(images, patch), grid, c, patch), c, grid)

"""Patches and windows: where every patch and window of an image sits, and every placement plan.

Names follow the method page: an image of C x H x W pixels is a grid of M x N patches of K x K
pixels; a window is L x L patches with top-left patch (r, s); the covered patch is (t, u) on the
grid, or index `covered` = (t - r) * L + (u - s) inside its window. A patch is flattened as
C x K x K (channel first), so `patch.view(C, K, K)` is the image patch.

Training draws windows at random (`random_windows`: the paper's uniform corners, or a uniform
covered patch and a window holding it), each covering one patch or a lattice of patches
(`random_lattice_masks`). Inference reads an image with a *plan* (`inference_plan`):
one window per patch with the corner formula r = clamp(t - L // 2, 0, M - L) (the paper), or a
tiling of windows each read in s*s passes that cover a lattice of patches s apart (beyond the paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def window_tokens(r: torch.Tensor, s: torch.Tensor, columns: int | torch.Tensor, window: int) -> torch.Tensor:
    """Flat grid indices (B, L*L) of the windows with corners (r, s), each (B,), in grids of `columns` (an int or (B,))."""
    offsets = torch.arange(window, device=r.device)
    columns = torch.as_tensor(columns, device=r.device).reshape(-1, 1, 1)  # (B or 1, 1, 1)
    rows = (r[:, None] + offsets)[:, :, None]  # (B, L, 1)
    cols = (s[:, None] + offsets)[:, None, :]  # (B, 1, L)
    return (rows * columns + cols).reshape(len(r), window * window)


def random_windows(
    grids: torch.Tensor, window: int, generator: torch.Generator | None = None, placement: str = "corner"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corners and covered positions for training windows, drawn as uniform integers.

    grids (count, 2): the (M, N) patch grid of each window's image (images may differ in size).
    Returns (r, s, covered), each (count,): r in {0..M-L}, s in {0..N-L}, covered in {0..L*L-1}.
    placement "corner" (the paper): the corner uniform over {0..M-L} x {0..N-L}, the covered
    position uniform over the window, so a patch near the border is covered less often (one on the
    border row about a seventh as often as an interior one, at L = 7). "patch" (beyond the paper):
    the covered patch uniform over the image, then the window uniform over those holding it, so
    every patch is covered equally often, a border patch at the window's edge, where inference
    reads it.
    Integer draws (rounding a uniform float would halve the probability of the end positions): a
    31-bit integer modulo the number of positions, biased by under 1e-6.
    """
    if placement not in ("corner", "patch"):
        raise ValueError(f"unknown window placement {placement!r}: corner or patch")
    count = len(grids)
    if placement == "corner":
        draws = torch.randint(0, 1 << 31, (2, count), generator=generator)
        r = draws[0] % (grids[:, 0] - window + 1)
        s = draws[1] % (grids[:, 1] - window + 1)
        covered = torch.randint(0, window * window, (count,), generator=generator)
        return r, s, covered
    draws = torch.randint(0, 1 << 31, (2, count, 2), generator=generator)
    patch = draws[0] % grids  # (count, 2): the covered patch (t, u)
    first = (patch - window + 1).clamp(min=0)  # the windows holding it: corners first..last
    last = torch.minimum(patch, grids - window)
    corner = first + draws[1] % (last - first + 1)
    offset = patch - corner  # its place in the window
    return corner[:, 0], corner[:, 1], offset[:, 0] * window + offset[:, 1]


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


@dataclass(frozen=True)
class Plan:
    """Every forward pass that reads one image of M x N patches.

    tokens (passes, L*L) long: the flat grid index t*N + u of each window token, row-major in the
    window; covered (passes, L*L) bool: the tokens replaced by the inpaint token; read (passes, L*L)
    bool: the covered tokens whose output is kept. Over a plan every grid patch is read exactly once.
    The flat grid indices double as the tokens' global positions.
    """

    grid: tuple[int, int]
    tokens: torch.Tensor
    covered: torch.Tensor
    read: torch.Tensor

    @property
    def passes(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device) -> Plan:
        return Plan(self.grid, self.tokens.to(device), self.covered.to(device), self.read.to(device))


def one_patch_plan(grid: tuple[int, int], window: int) -> Plan:
    """The paper's plan: one pass per patch, the patch covered and read at its window's centre (clamped)."""
    tokens, covered = inference_windows(grid, window)
    mask = torch.arange(window * window) == covered[:, None]  # (M*N, L*L)
    return Plan(grid, tokens, mask, mask)


def lattice_masks(phase_rows: torch.Tensor, phase_cols: torch.Tensor, window: int, spacing: int) -> torch.Tensor:
    """Covered masks for lattice phases (a, b), each (B,) -> (B, L*L) bool: tokens (i, j) with i = a, j = b (mod s)."""
    offsets = torch.arange(window, device=phase_rows.device) % spacing
    rows = offsets[None, :] == phase_rows[:, None]  # (B, L)
    cols = offsets[None, :] == phase_cols[:, None]  # (B, L)
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(phase_rows), window * window)


def random_lattice_masks(
    count: int, window: int, spacing: int, generator: torch.Generator, holding: torch.Tensor | None = None
) -> torch.Tensor:
    """Training masks with a uniform random lattice phase per window -> (count, L*L) bool; with
    `holding` (count,) window positions, the phase of the lattice through each of them instead."""
    if holding is not None:
        return lattice_masks(holding // window % spacing, holding % window % spacing, window, spacing)
    phases = torch.randint(0, spacing, (2, count), generator=generator)
    return lattice_masks(phases[0], phases[1], window, spacing)


def tiling_corners(size: int, window: int, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of `size` patches: ceil(size / L) window corners (and `extra` more, up to one per
    position) spread evenly over 0..size-L, and for every patch (size,) the window whose centre is
    nearest (the first on ties)."""
    count = min(math.ceil(size / window) + extra, size - window + 1)
    if count == 1:
        corners = torch.zeros(1, dtype=torch.long)
    else:
        corners = torch.tensor([round(k * (size - window) / (count - 1)) for k in range(count)])
    centres = corners.float() + (window - 1) / 2
    owner = (torch.arange(size).float()[:, None] - centres[None, :]).abs().argmin(dim=1)
    return corners, owner


def lattice_plan(grid: tuple[int, int], window: int, spacing: int, extra_windows: int = 0) -> Plan:
    """Several patches per pass (beyond the paper; `score.cover_spacing` = s >= 2).

    The grid is tiled with ceil(M / L) x ceil(N / L) windows (`extra_windows` more per axis give a
    finer tiling, for benchmarks); each window is read in s*s passes,
    one per lattice phase, every pass covering the whole lattice of its phase (as in training)
    while only the covered patches the window *owns* (it is the window whose centre is nearest)
    are read. Passes per image: ceil(M / L) * ceil(N / L) * s^2 (81 for a 16 x 16 grid, L = 7,
    s = 3) instead of M * N.
    """
    m, n = grid
    row_corners, row_owner = tiling_corners(m, window, extra_windows)
    col_corners, col_owner = tiling_corners(n, window, extra_windows)
    w_rows, w_cols, a, b = (
        t.reshape(-1)
        for t in torch.meshgrid(
            torch.arange(len(row_corners)),
            torch.arange(len(col_corners)),
            torch.arange(spacing),
            torch.arange(spacing),
            indexing="ij",
        )
    )  # each (passes,)
    tokens = window_tokens(row_corners[w_rows], col_corners[w_cols], n, window)  # (passes, L*L)
    covered = lattice_masks(a, b, window, spacing)
    owned = (row_owner[tokens // n] == w_rows[:, None]) & (col_owner[tokens % n] == w_cols[:, None])
    return Plan(grid, tokens, covered, covered & owned)


def inference_plan(grid: tuple[int, int], window: int, spacing: int = 0) -> Plan:
    """The plan `score.cover_spacing` asks for: one patch per pass (0) or a lattice s patches apart."""
    return lattice_plan(grid, window, spacing) if spacing else one_patch_plan(grid, window)

"""Several covered patches per forward pass (beyond the paper; `cover_spacing` = s >= 2).

The paper inpaints one patch per pass: M*N passes per image. Here a pass covers a lattice of
patches s apart inside the window, {(i, j): i = a (mod s), j = b (mod s)} for a phase (a, b), and
each covered token's own output predicts its patch. Training (`train.cover_spacing`) draws the
phase uniformly; the loss covers every covered patch of the window. Inference
(`score.cover_spacing`) is independent of training: a model trained with one covered patch per
window can be read several patches per pass and the other way round.

Inference tiles the grid with n = ceil(M / L) windows per axis, corners spread evenly over
0..M-L; each patch is *read* from the window whose centre is nearest to it, and in that window
from the pass whose phase covers it. Every pass covers the whole lattice of its phase (as in
training) but only the patches it owns are read. Passes per image: n^2 * s^2 (36 for M = 16,
L = 7, s = 2; 81 for s = 3) instead of M * N = 256.
"""

from __future__ import annotations

import math

import torch

from ..core.model import InpaintingTransformer
from ..core.windows import patchify, unpatchify, window_tokens


def lattice_masks(phase_rows: torch.Tensor, phase_cols: torch.Tensor, window: int, spacing: int) -> torch.Tensor:
    """Covered masks for phases (a, b), each (B,) -> (B, L*L) bool, row-major window order."""
    offsets = torch.arange(window, device=phase_rows.device) % spacing
    rows = offsets[None, :] == phase_rows[:, None]  # (B, L)
    cols = offsets[None, :] == phase_cols[:, None]  # (B, L)
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(phase_rows), window * window)


def random_lattice_masks(count: int, window: int, spacing: int, generator: torch.Generator) -> torch.Tensor:
    """Training masks with a uniform random phase per window -> (count, L*L) bool."""
    phases = torch.randint(0, spacing, (2, count), generator=generator)
    return lattice_masks(phases[0], phases[1], window, spacing)


def _axis_plan(grid: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window corners along one axis (n,) and, for each patch (M,), the window that owns it."""
    count = math.ceil(grid / window)
    if count == 1:
        corners = torch.zeros(1, dtype=torch.long)
    else:
        corners = torch.tensor([round(k * (grid - window) / (count - 1)) for k in range(count)])
    centres = corners.float() + (window - 1) / 2
    owner = (torch.arange(grid).float()[:, None] - centres[None, :]).abs().argmin(dim=1)  # first on ties
    return corners, owner


def inference_plan(grid: int, window: int, spacing: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All passes for one image of grid x grid patches.

    Returns (tokens, covered, read), each (passes, L*L): the flat grid index of every window
    token, the covered lattice, and the covered tokens this pass is the owner of. Every grid patch
    is read exactly once.
    """
    corners, owner = _axis_plan(grid, window)
    n = len(corners)
    w_rows, w_cols, a, b = torch.meshgrid(
        torch.arange(n), torch.arange(n), torch.arange(spacing), torch.arange(spacing), indexing="ij"
    )
    w_rows, w_cols, a, b = (t.reshape(-1) for t in (w_rows, w_cols, a, b))  # (passes,)
    r, s = corners[w_rows], corners[w_cols]
    tokens = window_tokens(r, s, grid, window)  # (passes, L*L)
    covered = lattice_masks(a, b, window, spacing)
    row_owned = owner[tokens // grid] == w_rows[:, None]  # (passes, L*L)
    col_owned = owner[tokens % grid] == w_cols[:, None]
    return tokens, covered, covered & row_owned & col_owned


@torch.inference_mode()
def reconstruct(
    model: InpaintingTransformer, images: torch.Tensor, plan: tuple[torch.Tensor, ...], chunk_windows: int
) -> torch.Tensor:
    """Inpaint every patch with the plan's passes: (B, C, H, W) -> (B, C, H, W)."""
    m = model.cfg
    tokens, covered, read = (t.to(images.device) for t in plan)
    b = images.shape[0]
    patches = patchify(images, m.patch_size)  # (B, M*N, P)
    passes, cells = tokens.shape[0], m.grid * m.grid
    out = torch.empty(b * cells, m.patch_dim, device=images.device)
    total = b * passes
    for start in range(0, total, chunk_windows):
        index = torch.arange(start, min(start + chunk_windows, total), device=images.device)
        image_index, pass_index = index // passes, index % passes
        window = tokens[pass_index]  # (n, L*L)
        pred = model.forward_multi(patches[image_index[:, None], window], covered[pass_index], window)  # (n, L*L, P)
        keep = read[pass_index]  # (n, L*L)
        destination = (image_index[:, None] * cells + window)[keep]  # flat (image, patch) index
        out[destination] = pred[keep]
    return unpatchify(out.view(b, cells, m.patch_dim), m.channels, (m.grid, m.grid))

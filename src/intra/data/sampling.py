"""Training batches: random windows cut from the training images, augmented, split into patches.

Every window is drawn independently: an image uniformly, a corner uniformly over the integer
positions {0..M-L} x {0..N-L}, a covered position uniformly over the L*L window positions (or,
with train.window_placement = patch, a covered patch uniformly over the image and a window
holding it: `core.windows.random_windows`). The augmentation acts on the window's pixels: random
flips, and rotations by multiples of 90 degrees ("rot90", for aligned objects) or by any angle
("any", for textures; pixels from around the window are rotated in, the image is reflected at its
borders).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Config
from ..core.windows import crop_windows, patchify, random_lattice_masks, random_windows, window_tokens


@dataclass
class Batch:
    patches: torch.Tensor  # (B, L*L, P) window patches; the covered one is hidden by the model
    covered: torch.Tensor  # (B, L*L) bool: the covered tokens, one per window or a lattice (cover_spacing)
    positions: torch.Tensor  # (B, L*L) flat grid index of every token (global positions)
    target: torch.Tensor  # (n covered, C, K, K) the covered patches' pixels, in row-major mask order


def concat_batches(batches: list[Batch]) -> Batch:
    """One batch of all the windows of `batches`, in order."""
    names = [field.name for field in dataclasses.fields(Batch)]
    return Batch(**{name: torch.cat([getattr(b, name) for b in batches]) for name in names})


class WindowSampler:
    """Draws training batches from images already on the training device: (n, C, H, W), or a list of
    (C, h, w) images of any sizes (held zero-padded in one tensor; windows stay inside each image)."""

    def __init__(self, images, cfg: Config, augment: bool = True, cover_spacing: int | None = None):
        images = list(images)
        self.model_cfg = cfg.model
        self.flips = cfg.train.flips and augment
        self.rotation = cfg.train.rotation if augment else "none"
        self.cover_spacing = cfg.train.cover_spacing if cover_spacing is None else cover_spacing
        self.placement = cfg.train.window_placement
        k, window = cfg.model.patch_size, cfg.model.window
        device = images[0].device
        self.grids = torch.tensor([(x.shape[-2] // k, x.shape[-1] // k) for x in images])  # (n, 2) on the host
        self.columns = self.grids[:, 1].to(device)
        # Rotating by any angle needs the pixels around the window: reflect-pad every image once.
        self.margin = math.ceil((math.sqrt(2) - 1) / 2 * window * k) + 1 if self.rotation == "any" else 0
        if self.margin:
            images = [F.pad(x[None], (self.margin,) * 4, mode="reflect")[0] for x in images]
        height, width = max(x.shape[-2] for x in images), max(x.shape[-1] for x in images)
        self.images = torch.stack([F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2])) for x in images])

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, count: int, generator: torch.Generator) -> Batch:
        m = self.model_cfg
        image_index = torch.randint(0, len(self.images), (count,), generator=generator)
        r, s, covered = random_windows(self.grids[image_index], m.window, generator, self.placement)
        device = self.images.device
        # Asynchronous copies: the host does not wait for the GPU to finish the previous step.
        image_index, r, s, covered = (t.to(device, non_blocking=True) for t in (image_index, r, s, covered))
        if self.rotation == "any":
            angles = torch.rand(count, generator=generator).to(device, non_blocking=True) * 2 * math.pi
            crops = self._rotated_crops(image_index, r, s, angles)
        else:
            crops = crop_windows(self.images, image_index, r, s, m.window, m.patch_size)
        # Global positions follow the pixels: a flipped or turned window's tokens keep the grid
        # positions their patches came from ("any" rotation is refused with global positions).
        positions = window_tokens(r, s, self.columns[image_index], m.window)
        token_maps = [positions.view(count, 1, m.window, m.window)]  # (B, 1, L, L) maps turned with the pixels
        if self.placement == "patch":  # the drawn patch must stay covered when its window turns or flips
            token_maps.append((torch.arange(m.window**2, device=device) == covered[:, None]).view_as(token_maps[0]))
        if self.rotation == "rot90":
            crops, *token_maps = _random_rot90([crops, *token_maps], generator)
        if self.flips:
            crops, *token_maps = _random_flips([crops, *token_maps], generator)
        positions = token_maps[0].reshape(count, m.window * m.window)
        if self.placement == "patch":
            covered = token_maps[1].reshape(count, m.window * m.window).to(torch.uint8).argmax(dim=1)
        patches = patchify(crops, m.patch_size)  # (B, L*L, P)
        if self.cover_spacing:  # several covered patches per window (beyond the paper)
            holding = covered if self.placement == "patch" else None  # the lattice through the drawn patch
            covered = random_lattice_masks(count, m.window, self.cover_spacing, generator, holding).to(device)
        else:
            covered = torch.arange(m.window**2, device=device) == covered[:, None]  # (B, L*L)
        target = patches[covered]  # (n covered, P)
        target = target.view(-1, m.channels, m.patch_size, m.patch_size)
        return Batch(patches, covered, positions, target)

    def _rotated_crops(
        self, image_index: torch.Tensor, r: torch.Tensor, s: torch.Tensor, angles: torch.Tensor
    ) -> torch.Tensor:
        """Windows rotated about their centres by `angles` (radians) -> (B, C, L*K, L*K)."""
        m = self.model_cfg
        side = m.window * m.patch_size
        big = side + 2 * self.margin
        span = torch.arange(big, device=self.images.device)
        rows = (r * m.patch_size)[:, None] + span  # padded coordinates: window top-left minus margin
        cols = (s * m.patch_size)[:, None] + span
        crops = self.images[image_index[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        scale = side / big  # the output covers the central `side` pixels of the `big` crop
        cos, sin = torch.cos(angles) * scale, torch.sin(angles) * scale
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, [len(crops), crops.shape[1], side, side], align_corners=False)
        return F.grid_sample(crops, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _random_flips(grids: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Flip each window horizontally and vertically, each with probability 1/2.

    grids: tensors (B, *, H, W) flipped alike (the window's pixels, its tokens' positions).
    """
    h, v = (torch.rand(2, len(grids[0]), generator=generator) < 0.5).to(grids[0].device, non_blocking=True)[
        ..., None, None, None
    ]
    grids = [torch.where(h, x.flip(-1), x) for x in grids]
    return [torch.where(v, x.flip(-2), x) for x in grids]


def _random_rot90(grids: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Rotate each window by 0, 90, 180 or 270 degrees, uniformly; grids (B, *, H, W) turned alike.

    Every rotation is computed and one selected per window: no data-dependent indexing, so a GPU
    never waits for the host.
    """
    turns = torch.randint(0, 4, (len(grids[0]),), generator=generator).to(grids[0].device, non_blocking=True)
    turns = turns[:, None, None, None]  # (B, 1, 1, 1)
    out = list(grids)
    for k in (1, 2, 3):
        out = [torch.where(turns == k, torch.rot90(x, k, dims=(-2, -1)), o) for x, o in zip(grids, out)]
    return out

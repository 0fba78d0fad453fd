"""Detector: a trained network plus its statistics -> reconstructions, anomaly maps and scores.

`reconstruct` inpaints every patch of a batch of images: all windows of all images go through the
network in chunks of `score.chunk_windows`, never one Python call per patch. The rest is
`anomaly_map`'s pure functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from . import anomaly_map, multicover
from .checkpoint import load_checkpoint
from .config import Config
from .data import standardize
from .model import InpaintingTransformer
from .windows import inference_windows, patchify, unpatchify

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Detector:
    """Scores images with a trained InpaintingTransformer. Images are (B, C, H, W) in [0, 1]."""

    def __init__(
        self,
        model: InpaintingTransformer,
        cfg: Config,
        mean_map: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        stats: dict | None = None,
        std_map: torch.Tensor | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mean_map = None if mean_map is None else mean_map.to(self.device)
        # Per-pixel std of the training difference maps, for score.zscore (beyond the paper).
        self.std_map = None if std_map is None else std_map.to(self.device)
        self.stats = stats or {}
        grid = (cfg.model.grid, cfg.model.grid)
        tokens, covered = inference_windows(grid, cfg.model.window)
        self._tokens = tokens.to(self.device)  # (M*N, L*L) flat grid index of each window token
        self._covered = covered.to(self.device)  # (M*N,)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> "Detector":
        """Load a trained run folder (see `checkpoint`)."""
        cfg, model, tensors, stats = load_checkpoint(run_dir)
        return cls(model, cfg, tensors.get("mean_map"), resolve_device(device), stats, tensors.get("std_map"))

    @torch.inference_mode()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Inpaint every patch: (B, C, H, W) -> (B, C, H, W)."""
        m = self.cfg.model
        images = images.to(self.device, torch.float32)
        if self.cfg.score.cover_spacing:  # several patches per pass (beyond the paper)
            plan = multicover.inference_plan(m.grid, m.window, self.cfg.score.cover_spacing)
            return multicover.reconstruct(self.model, images, plan, self.cfg.score.chunk_windows)
        b = images.shape[0]
        patches = patchify(images, m.patch_size)  # (B, M*N, P)
        windows_per_image = self._tokens.shape[0]
        total = b * windows_per_image
        out = torch.empty(total, m.patch_dim, device=self.device)
        chunk = self.cfg.score.chunk_windows
        for start in range(0, total, chunk):
            index = torch.arange(start, min(start + chunk, total), device=self.device)
            image_index, window_index = index // windows_per_image, index % windows_per_image
            tokens = self._tokens[window_index]  # (n, L*L)
            windows = patches[image_index[:, None], tokens]  # (n, L*L, P)
            out[start : start + len(index)] = self.model(windows, self._covered[window_index], tokens)
        out = out.view(b, windows_per_image, m.patch_dim)  # (B, M*N, P), patch t*N+u at t*N+u
        return unpatchify(out, m.channels, (m.grid, m.grid))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images as read -> what the network sees: per-image standardised if data.standardize."""
        images = images.to(self.device, torch.float32)
        return standardize(images) if self.cfg.data.standardize else images

    @torch.inference_mode()
    def difference_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, W) multi-scale GMS difference maps, before normalisation."""
        images = self.prepare(images)
        return anomaly_map.difference_map(images, self.reconstruct(images), self.cfg.score)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (anomaly maps (B, H, W), image scores (B,)), on the CPU."""
        diff = self.difference_maps(images)
        mean_map = self.mean_map if self.cfg.score.normalize else None
        std_map = self.std_map if self.cfg.score.zscore else None
        maps = anomaly_map.normalize(diff, mean_map, std_map)
        return maps.cpu(), anomaly_map.image_score(maps).cpu()

    def fit_mean_map(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Mean difference map over training images, given as batches (B, C, H, W) -> (H, W).

        Also sets `std_map`, the per-pixel standard deviation of the same maps (for score.zscore).
        """
        total, squares, count = None, None, 0
        for images in batches:
            diff = self.difference_maps(images).double()
            total = diff.sum(0) if total is None else total + diff.sum(0)
            squares = (diff**2).sum(0) if squares is None else squares + (diff**2).sum(0)
            count += diff.shape[0]
        if total is None:
            raise ValueError("no images to compute the mean difference map")
        self.mean_map = (total / count).float()
        self.std_map = (squares / count - (total / count) ** 2).clamp_min(0).sqrt().float()
        return self.mean_map

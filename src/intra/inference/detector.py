"""Detector: a trained network plus its statistics -> reconstructions, anomaly maps and scores.

`reconstruct` inpaints every patch of a batch of images: all windows of all images go through the
network in chunks of `score.chunk_windows`, never one Python call per patch. The rest is
`anomaly_map`'s pure functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..config import Config, ModelConfig
from ..core import anomaly_map
from ..core.model import InpaintingTransformer
from ..core.windows import inference_windows, patchify, unpatchify
from ..data.images import standardize
from ..runtime import resolve_device, resolve_dtype
from . import multicover
from .packed import available as packed_available
from .packed import pack_for_cpu

log = logging.getLogger(__name__)


# score.memory_mb = 0: on a CPU, chunks of ~160 MB of activations ran fastest on CPU-2 (64 windows of
# the paper preset, 512 of the cpu preset; docs/benchmarks.md); a GPU wants large chunks.
AUTO_MEMORY_MB_CPU = 160
AUTO_MEMORY_MB_GPU = 4096


def window_bytes(m: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Peak inference activation bytes per window: an upper estimate, checked against the measured
    peak RSS in tests/test_inference.py.

    Per token: the residual stream, the saved long-skip outputs, LayerNorm, q/k/v, attention output
    and projection (about 12 D wide in all), the feed-forward hidden layer twice (before and after
    GELU), and the attention weights (heads x tokens). Kept in fp32 except the matrix products'
    outputs under bf16, which are counted at full width anyway (an upper estimate).
    """
    tokens = m.window * m.window
    hidden = int(m.dim * m.mlp_ratio)
    skips = (m.depth - 1) // 2 if m.long_skips else 0
    per_token = (skips + 12) * m.dim + 2 * hidden + m.heads * tokens
    return 4 * tokens * per_token


class Detector:
    """Scores images with a trained InpaintingTransformer. Images are (B, C, H, W) in [0, 1].

    `dtype` "bf16" runs the network's matrix products in bfloat16 (autocast on a GPU, oneDNN bf16
    on the CPU); `compile` runs it through torch.compile with fixed-size chunks.
    """

    def __init__(
        self,
        model: InpaintingTransformer,
        cfg: Config,
        mean_map: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        stats: dict | None = None,
        dtype: str = "fp32",
        compile: bool = False,
        std_map: torch.Tensor | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mean_map = None if mean_map is None else mean_map.to(self.device)
        # Per-pixel std of the training difference maps, for score.zscore (beyond the paper).
        self.std_map = None if std_map is None else std_map.to(self.device)
        self.stats = stats or {}
        self.dtype = resolve_dtype(dtype)
        self.compile = compile
        grid = (cfg.model.grid, cfg.model.grid)
        tokens, covered = inference_windows(grid, cfg.model.window)
        self._tokens = tokens.to(self.device)  # (M*N, L*L) flat grid index of each window token
        self._covered = covered.to(self.device)  # (M*N,)
        self._network: InpaintingTransformer | None = None
        self._network_key: tuple | None = None
        self._forward = None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", dtype: str = "fp32") -> Detector:
        """Load a trained run folder (see `checkpoint`)."""
        cfg, model, tensors, stats = load_checkpoint(run_dir)
        return cls(
            model, cfg, tensors.get("mean_map"), resolve_device(device), stats, dtype, std_map=tensors.get("std_map")
        )

    def network(self) -> InpaintingTransformer:
        """The network `reconstruct` runs: on the CPU a oneDNN-packed copy of `model`, else `model`.

        The copy is rebuilt whenever `model`'s weights have changed since it was made. Compiled
        code uses the plain network: torch.compile makes its own choice of CPU kernels.
        """
        if not isinstance(self.model, InpaintingTransformer):
            return self.model  # another runtime (export.OnnxNetwork): nothing to pack
        key = tuple(t._version for t in self.model.state_dict().values()) + (id(self.model),)
        if self._network is None or key != self._network_key:
            packed = self.device.type == "cpu" and packed_available() and not self.compile
            self._network = pack_for_cpu(self.model, self.dtype) if packed else self.model
            self._network_key, self._forward = key, None
        return self._network

    def chunk_windows(self) -> int:
        """Windows per forward pass: `score.chunk_windows`, capped so activations fit `score.memory_mb`."""
        s = self.cfg.score
        budget_mb = s.memory_mb or (AUTO_MEMORY_MB_CPU if self.device.type == "cpu" else AUTO_MEMORY_MB_GPU)
        fits = int(budget_mb * 2**20 // window_bytes(self.cfg.model, self.dtype))
        return max(1, min(s.chunk_windows, fits))

    def _autocast(self, network: InpaintingTransformer):
        """bf16 autocast for the plain network; a oneDNN copy already computes in its dtype."""
        if self.dtype == torch.float32 or network is not self.model:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _forward_tokens(self, chunk: int):
        """network.forward_tokens, compiled for `chunk` windows when `compile` is set."""
        network = self.network()
        if not self.compile:
            return network.forward_tokens
        if self._forward is None:
            self._forward = torch.compile(network.forward_tokens, dynamic=False)
        return self._forward

    @torch.inference_mode()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Inpaint every patch: (B, C, H, W) -> (B, C, H, W).

        Every patch is embedded once; the windows of all images are then gathered from the
        embeddings chunk by chunk, so memory stays bounded by `chunk_windows()` windows.
        """
        m = self.cfg.model
        images = images.to(self.device, torch.float32)
        if self.cfg.score.cover_spacing:  # several patches per pass (beyond the paper)
            plan = multicover.inference_plan(m.grid, m.window, self.cfg.score.cover_spacing)
            return multicover.reconstruct(self.model, images, plan, self.chunk_windows())
        if not isinstance(self.model, InpaintingTransformer):
            return self._reconstruct_whole_windows(images)
        b = images.shape[0]
        network = self.network()
        windows_per_image = self._tokens.shape[0]
        total = b * windows_per_image
        out = torch.empty(total, m.patch_dim, device=self.device)
        chunk = self.chunk_windows()
        forward = self._forward_tokens(chunk)
        with self._autocast(network):
            embedded = network.embed_patches(patchify(images, m.patch_size))  # (B, M*N, D)
            for start in range(0, total, chunk):
                # A short last chunk is padded to full size: compiled code then sees one shape.
                stop = start + chunk if self.compile else min(start + chunk, total)
                index = torch.arange(start, stop, device=self.device).clamp_max(total - 1)
                image_index, window_index = index // windows_per_image, index % windows_per_image
                tokens = self._tokens[window_index]  # (n, L*L)
                covered = self._covered[window_index]  # (n,)
                x = network.tokens(embedded[image_index[:, None], tokens], covered, tokens)  # (n, L*L, D)
                y = forward(x, covered)  # (n, P)
                n = min(stop, total) - start
                out[start : start + n] = y[:n]
        out = out.view(b, windows_per_image, m.patch_dim)  # (B, M*N, P), patch t*N+u at t*N+u
        return unpatchify(out, m.channels, (m.grid, m.grid))

    def _reconstruct_whole_windows(self, images: torch.Tensor) -> torch.Tensor:
        """reconstruct() for a network that only offers the whole forward(patches, covered, positions)."""
        m = self.cfg.model
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
            out[start : start + len(index)] = self.model(
                patches[image_index[:, None], tokens], self._covered[window_index], tokens
            )
        return unpatchify(out.view(b, windows_per_image, m.patch_dim), m.channels, (m.grid, m.grid))

    @torch.inference_mode()
    def reconstruct_naive(self, images: torch.Tensor, limit: int | None = None) -> torch.Tensor:
        """The reference: one window per forward pass of the plain network, as unofficial versions do.

        (B, C, H, W) -> (B, C, H, W). With `limit`, only the first `limit` windows are inpainted
        (the others stay 0): `intra bench` times a few windows of this slow loop.
        """
        m = self.cfg.model
        images = images.to(self.device, torch.float32)
        patches = patchify(images, m.patch_size)  # (B, M*N, P)
        windows_per_image = self._tokens.shape[0]
        out = torch.zeros(images.shape[0], windows_per_image, m.patch_dim, device=self.device)
        done = 0
        with self._autocast(self.model):
            for b in range(images.shape[0]):
                for w in range(windows_per_image):
                    if limit is not None and done >= limit:
                        break
                    tokens = self._tokens[w : w + 1]  # (1, L*L)
                    out[b, w] = self.model(patches[b, tokens[0]][None], self._covered[w : w + 1], tokens)[0]
                    done += 1
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

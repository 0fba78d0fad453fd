"""The end-to-end export (`intra export --full`): one ONNX graph from images to anomaly maps and scores.

`FullGraph` is `Detector.predict` for a batch (B, C, H, W) at the run's one image size, written as
one module from the same functions in the same order: per-image standardisation (if
data.standardize), patchify, the plan's window gathering (its index tensors as constants), the
network (`export.WindowGraph`, the smooth base fill included), the read tokens put back on the
grid, `core.anomaly_map.difference_map` (GMS at every scale, mean and Gaussian filters,
upsampling), `normalize` with the mean/std maps as constants, and the image score (from its own
scoring's map when `score.image_scoring` names one). Only the batch
dimension is dynamic. All passes of a batch run at once (no chunks), so memory grows with B.

The file records the SHA-256 of the weights and of the config it came from, so a graph left over
from other weights or another scoring is refused (`inference.full_graph`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .checkpoint import run_hashes
from .config import Config
from .core import anomaly_map
from .core.similarity import resize_as_matrices
from .core.windows import Plan, inference_plan, patchify, unpatchify
from .data.geometry import Geometry
from .data.images import standardize
from .errors import IntraError
from .export import SHA_KEY, WindowGraph, need, write_onnx
from .inference.detector import Detector

log = logging.getLogger(__name__)

FULL_ONNX_FILE = "model_full.onnx"
CONFIG_KEY = "intra.config_sha256"
SIZE_KEY = "intra.image_size"  # "H,W": the one size the graph scores


def fixed_size(cfg: Config) -> tuple[int, int]:
    """(H, W) every image of the run is scored at; refused for runs that score images at their own sizes."""
    geometry = Geometry.of(cfg)
    if cfg.data.resize == "square":
        return geometry.size, geometry.size
    if all(geometry.fixed):
        return geometry.fixed
    raise IntraError(
        "the full export needs one image size, and this run scores every image at its own size (data.resize = "
        "scale without data.height/width): export the network alone (intra export without --full), which "
        "`intra predict --backend onnx` runs at any size"
    )


def read_sources(plan: Plan) -> torch.Tensor:
    """For every grid patch (M*N,), the flat (pass * L*L + token) index of the one output that reads it."""
    flat = plan.read.reshape(-1).nonzero()[:, 0]  # (M*N,) in row-major order, as the engine reads them
    patch = plan.tokens.reshape(-1)[flat]
    source = torch.empty(len(flat), dtype=torch.long)
    source[patch] = flat
    return source


class FullGraph(nn.Module):
    """A Detector's whole scoring at one image size: images (B, C, H, W) in [0, 1] -> (maps (B, H, W), scores (B,),
    peaks (B, 2): where each score was found, as `anomaly_map.peak`)."""

    def __init__(self, detector: Detector):
        super().__init__()
        cfg = detector.cfg
        self.cfg, self.size = cfg, fixed_size(cfg)
        m = cfg.model
        self.grid = (self.size[0] // m.patch_size, self.size[1] // m.patch_size)
        self.network = WindowGraph(detector.model)
        plan = inference_plan(self.grid, m.window, cfg.score.cover_spacing)
        self.register_buffer("tokens", plan.tokens)  # (passes, T) grid index of every window token
        self.register_buffer("covered", plan.covered)  # (passes, T) bool
        source = read_sources(plan)
        # The mean head returns one patch per pass: its output is indexed by pass, not by token.
        self.register_buffer("source", source // plan.tokens.shape[1] if m.head == "mean" else source)
        mean, std, floor = detector.statistics(self.size)
        self.register_buffer("mean_map", None if mean is None else mean.cpu().clone())
        self.register_buffer("std_map", None if std is None else std.cpu().clone())
        self.floor = floor
        # The image score's own scoring (score.image_scoring), when it is not the map's maximum.
        self.image_score = detector.image_score_config()
        mean, std, floor = detector.statistics(self.size, image=True) if self.image_score else (None, None, None)
        self.register_buffer("image_mean_map", None if mean is None else mean.cpu().clone())
        self.register_buffer("image_std_map", None if std is None else std.cpu().clone())
        self.image_floor = floor

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Every patch inpainted by the plan's passes: (B, C, H, W) -> (B, C, H, W), as `engine.reconstruct`."""
        m = self.cfg.model
        passes, tokens = self.tokens.shape
        batch = images.shape[0]  # symbolic under export: no len(), no Python branch on it
        patches = patchify(images, m.patch_size)  # (B, M*N, P)
        windows = patches[:, self.tokens].reshape(-1, tokens, m.patch_dim)  # (B*passes, T, P)
        covered = self.covered.expand(batch, passes, tokens).reshape(-1, tokens)  # (B*passes, T)
        positions = self.tokens.expand(batch, passes, tokens).reshape(-1, tokens)
        pixels = self.network(windows, covered, positions)  # (B*passes, T, P), or (B*passes, P) with the mean head
        pixels = pixels.reshape(batch, -1, m.patch_dim)  # (B, passes*T, P) or (B, passes, P)
        return unpatchify(pixels[:, self.source], m.channels, self.grid)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = standardize(images) if self.cfg.data.standardize else images
        reconstructions = self.reconstruct(images)
        diff = anomaly_map.difference_map(images, reconstructions, self.cfg.score)  # (B, H, W)
        maps = anomaly_map.normalize(diff, self.mean_map, self.std_map, self.floor)
        if self.image_score is None:
            return maps, anomaly_map.image_score(maps), anomaly_map.peak(maps)
        diff = anomaly_map.difference_map(images, reconstructions, self.image_score)
        image_map = anomaly_map.normalize(diff, self.image_mean_map, self.image_std_map, self.image_floor)
        return maps, anomaly_map.image_score(image_map), anomaly_map.peak(image_map)


def export_full_onnx(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's whole scoring as one ONNX graph (default RUN/model_full.onnx); returns the path."""
    need("onnx")
    need("onnxscript")
    run_dir = Path(run_dir)
    detector = Detector.load(run_dir, device="cpu")
    graph = FullGraph(detector).eval()
    example = torch.rand(2, detector.cfg.model.channels, *graph.size)
    hashes = run_hashes(run_dir)
    props = {
        SHA_KEY: hashes["weights_sha256"],
        CONFIG_KEY: hashes["config_sha256"],
        SIZE_KEY: f"{graph.size[0]},{graph.size[1]}",
    }
    path = Path(out) if out else run_dir / FULL_ONNX_FILE
    with resize_as_matrices():  # downscaling as MatMul, which every runtime computes alike
        with torch.no_grad():
            # One eager pass first: the filters' and resizes' matrices are cached on first use
            # (core.similarity), so the tracer then meets real tensors and keeps them as constants.
            graph(example)
        write_onnx(graph, (example,), path, ["images"], ["anomaly_maps", "scores", "peaks"], props)
    log.info("exported %s", path)
    return path

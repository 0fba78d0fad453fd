"""Detector: a trained network plus its statistics -> reconstructions, anomaly maps and scores.

`reconstruct` inpaints every patch of a batch of images with the plan `score.cover_spacing` asks
for (`core.windows.inference_plan`), through the one engine (`engine.reconstruct`) on the chosen
backend (`backends`): plain or oneDNN-packed PyTorch, bf16, torch.compile, or onnxruntime. The
rest is `core.anomaly_map`'s pure functions. Backends "onnx-full" and "openvino" load a
`full_graph.FullGraphDetector` instead, whose `predict` is the end-to-end export (`export_full`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, run_hashes
from ..config import Config, ModelConfig, ScoreConfig, scoring
from ..core import anomaly_map
from ..core.model import InpaintingTransformer
from ..core.windows import Plan, inference_plan
from ..data.geometry import Geometry
from ..data.images import image_input, standardize
from ..errors import IntraError
from ..runtime import resolve_device, resolve_dtype, resolve_dtype_name
from . import engine
from .backends import Backend, OnnxBackend, TorchBackend
from .prediction import ImagePrediction, predicted

log = logging.getLogger(__name__)

# onnx-full and openvino run the end-to-end export (see full_graph): maps and scores in one graph.
BACKENDS = ("torch", "onnx", "onnx-full", "openvino")

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


def warn_missing_statistics(run_dir: str | Path, cfg: Config, tensors: dict[str, torch.Tensor]) -> None:
    """Log a warning when a run's scoring needs training statistics its checkpoint lacks (a hand-edited run):
    it would then score without them."""
    needs = {"mean_map": cfg.score.normalize}
    if cfg.score.image_scoring:
        needs["image_mean_map"] = scoring(cfg.score, cfg.score.image_scoring).normalize
    for name in [name for name, needed in needs.items() if needed and name not in tensors]:
        log.warning(
            "%s has no %s for its scoring: its maps are not normalised; calibrate again with "
            "intra evaluate --set score.KEY=VALUE --data DATA",
            run_dir,
            name,
        )


# A batch (B, C, H, W) of images of one size, or a list of (C, h, w) images of any sizes.
Images = torch.Tensor | list[torch.Tensor]


@dataclass
class Inspection:
    """One scored batch, stage by stage (see `Detector.inspect`)."""

    images: Images  # (B, C, H, W) as the network saw them (standardised if data.standardize), or a list
    reconstructions: Images  # every patch inpainted, shaped like images
    maps: Images  # (B, H, W) anomaly maps on the CPU, or a list of (h, w)
    scores: torch.Tensor  # (B,) image scores, on the CPU
    peaks: torch.Tensor  # (B, 2) where each score comes from: (x, y) as fractions of width, height (`anomaly_map.peak`)


class Detector:
    """Scores images with a trained InpaintingTransformer. Images are (B, C, H, W) in [0, 1].

    `dtype` "bf16" runs the network's matrix products in bfloat16 (oneDNN bf16 on a CPU that has
    the instructions, autocast elsewhere); "auto" (the default) picks bf16 where the device computes
    it natively and fp32 elsewhere, as training does (`runtime.resolve_dtype_name`): on 2 EPYC
    cores about 1.3x faster than fp32 at 8 or 16 images per call, with the same metrics
    (docs/benchmarks.md, "bf16 inference by default"). A backend other than PyTorch always runs
    fp32. `compile` runs the network through torch.compile with fixed-size chunks; `backend` is a
    `backends.Backend` (default: this process's PyTorch).

    The anomaly map is scored with `cfg.score` and the training statistics `mean_map`, `std_map`;
    with `score.image_scoring` set, the image score is the maximum of that named scoring's map, with
    its own statistics `image_mean_map`, `image_std_map`.
    """

    def __init__(
        self,
        model: InpaintingTransformer,
        cfg: Config,
        mean_map: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        stats: dict | None = None,
        dtype: str = "auto",
        compile: bool = False,
        std_map: torch.Tensor | None = None,
        backend: Backend | None = None,
        image_mean_map: torch.Tensor | None = None,
        image_std_map: torch.Tensor | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mean_map = None if mean_map is None else mean_map.to(self.device)
        # Per-pixel std of the training difference maps, for score.zscore (beyond the paper).
        self.std_map = None if std_map is None else std_map.to(self.device)
        self.image_mean_map = None if image_mean_map is None else image_mean_map.to(self.device)
        self.image_std_map = None if image_std_map is None else image_std_map.to(self.device)
        self.stats = stats or {}
        if backend is not None and not isinstance(backend, TorchBackend):
            dtype = "fp32"  # onnxruntime and OpenVINO run the graph as exported
        self.dtype = resolve_dtype(resolve_dtype_name(dtype, self.device))
        self.compile = compile
        self.backend = backend or TorchBackend(self.model, self.device, self.dtype, compile)
        self._plans: dict[tuple[int, int], Plan] = {}

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "torch",
        compile: bool = False,
        threads: int = 0,
        onnx_file: str | Path | None = None,
    ) -> Detector:
        """Load a trained run folder (see `checkpoint`) to run on `backend`: "torch" or "onnx" (the network,
        see `backends`), "onnx-full" or "openvino" (the whole scoring, see `full_graph`). The ONNX
        backends read `onnx_file`, by default where `intra export` writes: RUN/model.onnx, or
        RUN/model_full.onnx for the full graph; either is refused unless exported from this run."""
        if backend not in BACKENDS:
            raise IntraError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend != "torch" and (dtype == "bf16" or compile):
            raise IntraError(f"the {backend} backend runs fp32 and is not compiled: drop --dtype bf16 / compile")
        if backend == "torch" and onnx_file is not None:
            raise IntraError(
                f"--onnx-file {onnx_file} needs an ONNX backend: add --backend onnx, onnx-full or openvino"
            )
        cfg, model, tensors, stats = load_checkpoint(run_dir)
        warn_missing_statistics(run_dir, cfg, tensors)
        runtime = None
        if backend in ("onnx-full", "openvino"):
            from .full_graph import FullGraphDetector, open_graph

            graph = open_graph(Path(run_dir), backend, run_hashes(run_dir), threads, onnx_file)
            return FullGraphDetector(model, cfg, stats, graph)
        if backend == "onnx":
            device = "cpu"
            runtime = OnnxBackend.load(
                run_dir, run_hashes(run_dir)["weights_sha256"], cfg.model.head, onnx_file, threads
            )
        return cls(
            model,
            cfg,
            tensors.get("mean_map"),
            resolve_device(device),
            stats,
            dtype,
            compile,
            tensors.get("std_map"),
            runtime,
            tensors.get("image_mean_map"),
            tensors.get("image_std_map"),
        )

    def like(
        self,
        cfg: Config,
        mean_map: torch.Tensor | None,
        std_map: torch.Tensor | None,
        stats: dict,
        image_statistics: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> Detector:
        """A Detector on the same network, device, dtype, compile setting and backend, with other scoring."""
        dtype = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        return Detector(
            self.model, cfg, mean_map, self.device, stats, dtype, self.compile, std_map, self.backend, *image_statistics
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The training statistics a checkpoint stores (see `checkpoint.save_checkpoint`)."""
        named = {
            "mean_map": self.mean_map,
            "std_map": self.std_map,
            "image_mean_map": self.image_mean_map,
            "image_std_map": self.image_std_map,
        }
        return {name: tensor for name, tensor in named.items() if tensor is not None}

    def image_score_config(self) -> ScoreConfig | None:
        """The scoring of the image score when it is not the anomaly map's (`score.image_scoring`), else None."""
        name = self.cfg.score.image_scoring
        return scoring(self.cfg.score, name) if name else None

    def chunk_windows(self) -> int:
        """Windows per forward pass: `score.chunk_windows`, capped so activations fit `score.memory_mb`."""
        s = self.cfg.score
        budget_mb = s.memory_mb or (AUTO_MEMORY_MB_CPU if self.device.type == "cpu" else AUTO_MEMORY_MB_GPU)
        fits = int(budget_mb * 2**20 // window_bytes(self.cfg.model, self.dtype))
        return max(1, min(s.chunk_windows, fits))

    def plan(self, grid: tuple[int, int]) -> Plan:
        """The passes that read an image of M x N patches (`score.cover_spacing`), made once per grid."""
        if grid not in self._plans:
            self._plans[grid] = inference_plan(grid, self.cfg.model.window, self.cfg.score.cover_spacing).to(
                self.device
            )
        return self._plans[grid]

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse an image (C, H, W) the network cannot read whole: IntraError naming what it needs.

        Sides must be multiples of the patch size and hold a window; global positions also need the
        training grid. `data.images.load_image` with the run's geometry gives such images.
        """
        m = self.cfg.model
        k, side = m.patch_size, m.window * m.patch_size
        if len(shape) != 3 or shape[0] != m.channels:
            raise IntraError(f"an image of shape {shape}: this run reads ({m.channels}, H, W) images")
        h, w = shape[1:]
        if h % k or w % k or h < side or w < side:
            raise IntraError(
                f"an image of {h} x {w} px: this run reads {k} px patches in windows of {m.window} x {m.window}, "
                f"so both sides must be multiples of {k} and at least {side} px (load_image resizes as trained)"
            )
        if m.position != "global":
            return
        d = self.cfg.data
        trained = (m.image_size, m.image_size) if d.resize == "square" else (d.height, d.width)
        if all(trained) and (h, w) != trained or (h // k) * (w // k) != self.model.pos_embed.shape[0]:
            raise IntraError(
                f"an image of {h} x {w} px: this run's global positions hold its training size "
                f"({trained[0]} x {trained[1]} px); load_image resizes as trained"
            )

    @torch.inference_mode()
    def reconstruct(self, images: Images) -> Images:
        """Inpaint every patch, through the engine on this Detector's backend.

        (B, C, H, W) -> (B, C, H, W), or a list of (C, h, w) images of any sizes -> a list.
        """
        listed = [x.to(self.device, torch.float32) for x in images]
        for x in listed:
            self.check_shape(tuple(x.shape))
        k = self.cfg.model.patch_size
        plans = [self.plan((x.shape[-2] // k, x.shape[-1] // k)) for x in listed]
        out = engine.reconstruct(self.backend, listed, plans, k, self.chunk_windows(), self.backend.compiled)
        return torch.stack(out) if isinstance(images, torch.Tensor) else out

    def prepare(self, images: Images) -> Images:
        """Images as read -> what the network sees: per-image standardised if data.standardize."""
        if not isinstance(images, torch.Tensor):
            return [self.prepare(x[None])[0] for x in images]
        images = images.to(self.device, torch.float32)
        return standardize(images) if self.cfg.data.standardize else images

    def statistics(
        self, shape: tuple[int, int], image: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, float | None]:
        """The training statistics of the anomaly map (or, with `image`, of the image score's own scoring) laid
        out over an (H, W) map: (mean, std, std floor), None where that scoring does not use them."""
        s = self.image_score_config() if image else self.cfg.score
        mean, std = (self.image_mean_map, self.image_std_map) if image else (self.mean_map, self.std_map)
        if not s.normalize or mean is None:
            return None, None, None
        depth = anomaly_map.statistics_depth(self.cfg.model)
        expand = lambda stat: anomaly_map.expand_statistic(stat, shape, self.cfg.data.kind, depth)  # noqa: E731
        if not s.zscore or std is None:
            return expand(mean), None, None
        return expand(mean), expand(std), anomaly_map.std_floor(std)

    def _score(
        self, images: torch.Tensor, reconstructions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) x 2 -> (anomaly maps (B, H, W), image scores (B,), their peaks (B, 2))."""
        diff = anomaly_map.difference_map(images, reconstructions, self.cfg.score)
        maps = anomaly_map.normalize(diff, *self.statistics(tuple(diff.shape[-2:])))
        image_score = self.image_score_config()
        if image_score is None:
            return maps, anomaly_map.image_score(maps), anomaly_map.peak(maps)
        diff = anomaly_map.difference_map(images, reconstructions, image_score)
        image_map = anomaly_map.normalize(diff, *self.statistics(tuple(diff.shape[-2:]), image=True))
        return maps, anomaly_map.image_score(image_map), anomaly_map.peak(image_map)

    @torch.inference_mode()
    def difference_maps(self, images: Images) -> Images:
        """(B, C, H, W) -> (B, H, W) multi-scale GMS difference maps, before normalisation (a list -> a list)."""
        images = self.prepare(images)
        reconstructions = self.reconstruct(images)
        if isinstance(images, torch.Tensor):
            return anomaly_map.difference_map(images, reconstructions, self.cfg.score)
        return [
            anomaly_map.difference_map(x[None], r[None], self.cfg.score)[0] for x, r in zip(images, reconstructions)
        ]

    @torch.inference_mode()
    def inspect(self, images: Images) -> Inspection:
        """Every stage of scoring a batch: what the network saw, its reconstruction, the maps, the scores.

        (B, C, H, W) gives tensors; a list of (C, h, w) images of any sizes gives lists (scores: (B,)).
        """
        images = self.prepare(images)
        reconstructions = self.reconstruct(images)
        return Inspection(images, reconstructions, *self._scored(images, reconstructions))

    def score(self, images: Images, reconstructions: Images) -> tuple[Images, torch.Tensor]:
        """Images as the network saw them (`prepare`) and their reconstructions -> (anomaly maps, image scores),
        on the CPU: (B, C, H, W) gives (B, H, W) maps, a list of (C, h, w) a list of (h, w)."""
        maps, scores, _ = self._scored(images, reconstructions)
        return maps, scores

    @torch.inference_mode()
    def _scored(self, images: Images, reconstructions: Images) -> tuple[Images, torch.Tensor, torch.Tensor]:
        """`score` and the peaks: (maps, scores, peaks (B, 2)) on the CPU."""
        if isinstance(images, torch.Tensor):
            return tuple(out.cpu() for out in self._score(images, reconstructions))
        scored = [self._score(x[None], r[None]) for x, r in zip(images, reconstructions)]
        maps, scores, peaks = zip(*scored)
        return [amap[0].cpu() for amap in maps], torch.cat(scores).cpu(), torch.cat(peaks).cpu()

    def thresholds(self, image_threshold: float | None = None, pixel_threshold: float | None = None) -> tuple:
        """(image threshold, pixel threshold): the ones given, else the run's calibrated ones (None if it has none)."""
        image = self.stats.get("image_threshold") if image_threshold is None else image_threshold
        pixel = self.stats.get("pixel_threshold") if pixel_threshold is None else pixel_threshold
        return image, pixel

    def predict_image(
        self, image, image_threshold: float | None = None, pixel_threshold: float | None = None
    ) -> ImagePrediction:
        """One image -> its ImagePrediction (score, label, anomaly map, mask and regions at its own resolution).

        `image`: a path, a PIL image, or a numpy array (H, W) or (H, W, C) of uint8, uint16, bool or
        floats in [0, 1]. Thresholds default to the run's calibrated ones.
        """
        return next(iter(self.predict_images([image], 1, image_threshold, pixel_threshold)))

    def predict_images(
        self,
        images: Iterable,
        batch_size: int = 8,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
    ) -> Iterator[ImagePrediction]:
        """Many images (any mix of `predict_image`'s kinds, any sizes), scored `batch_size` at a time, in order."""
        thresholds = self.thresholds(image_threshold, pixel_threshold)
        geometry = Geometry.of(self.cfg)
        batch: list[tuple[torch.Tensor, tuple[int, int]]] = []
        for item in itertools.chain(images, [None]):
            if item is not None:
                batch.append(image_input(item, geometry, self.cfg.data.color))
                if len(batch) < batch_size:
                    continue
            if batch:
                maps, scores, peaks = self.detect([tensor for tensor, _ in batch])
                for amap, score, peak, (_, size) in zip(maps, scores, peaks, batch):
                    yield predicted(amap, float(score), size, *thresholds, geometry, peak)
                batch = []

    def predict(self, images: Images) -> tuple[Images, torch.Tensor]:
        """(B, C, H, W) -> (anomaly maps (B, H, W), image scores (B,)), on the CPU; a list of images -> a list of maps."""
        maps, scores, _ = self.detect(images)
        return maps, scores

    def detect(self, images: Images) -> tuple[Images, torch.Tensor, torch.Tensor]:
        """`predict` and where each score comes from: (maps, scores, peaks (B, 2) as `Inspection.peaks`)."""
        inspection = self.inspect(images)
        return inspection.maps, inspection.scores, inspection.peaks

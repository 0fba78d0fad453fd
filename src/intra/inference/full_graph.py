"""Running the end-to-end export (`export_full`): a Detector whose `predict` is one graph call.

`Detector.load(run, backend="onnx-full")` (onnxruntime) or `backend="openvino"` (OpenVINO reads the
ONNX file directly) returns a `FullGraphDetector`: images in, anomaly maps and scores out of
RUN/model_full.onnx (and where each score was found; a graph exported before `peaks` was an output
gives the anomaly map's maximum instead), so predictions, records and thresholds take the same code path as every
other backend afterwards. The graph holds the scoring too, so there is no separate network stage:
`reconstruct` (and what builds on it) is refused with a pointer to the backends that have one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..core import anomaly_map
from ..errors import IntraError
from .backends import Backend
from .detector import Detector, Images

log = logging.getLogger(__name__)

FULL_BACKENDS = ("onnx-full", "openvino")


def _graph_props(path: Path) -> dict[str, str]:
    """The metadata the export wrote (weights and config hashes, image size), read without the weights."""
    from ..export import need

    onnx = need("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


def _onnxruntime(path: Path, threads: int):
    """A function (B, C, H, W) float32 -> the graph's outputs (maps, scores[, peaks]) as numpy arrays, on
    onnxruntime's CPU provider."""
    from ..export import need

    ort = need("onnxruntime")
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})


def _openvino(path: Path, threads: int):
    """The same function on OpenVINO's CPU plugin, in fp32 (its default on CPUs with bf16 units is bf16)."""
    try:
        import openvino
    except ImportError:
        raise IntraError("the openvino backend needs the openvino package: pip install 'intra[openvino]'") from None
    settings = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads > 0:
        settings["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(path), "CPU", settings)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> list[np.ndarray]:
        outputs = request.infer({0: images})
        return [np.array(outputs[output]) for output in compiled.outputs]

    return run


class GraphRuntime(Backend):
    """The full graph on a runtime: `__call__` scores a batch; the engine's stages are refused."""

    def __init__(self, run, name: str, path: Path, size: tuple[int, int]):
        self._run, self.name, self.path, self.size = run, name, path, size

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) at the graph's size -> (maps (B, H, W), scores (B,), peaks (B, 2)), on the CPU."""
        if tuple(images.shape[-2:]) != self.size:
            raise IntraError(
                f"{self.path} scores {self.size[0]} x {self.size[1]} images, not {images.shape[-2]} x {images.shape[-1]}"
            )
        maps, scores, *peaks = (
            torch.from_numpy(np.asarray(out)) for out in self._run(images.detach().cpu().float().contiguous().numpy())
        )
        return maps, scores, peaks[0] if peaks else anomaly_map.peak(maps)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        raise IntraError(
            f"the {self.name} backend gives anomaly maps and scores only: reconstructions need --backend torch or onnx"
        )

    def describe(self) -> dict:
        return {"backend": f"{self.name} (full graph)", "dtype": "fp32", "device": "cpu"}


def open_graph(
    run_dir: Path, backend: str, hashes: dict, threads: int = 0, path: str | Path | None = None
) -> GraphRuntime:
    """The full graph `path` (default RUN/model_full.onnx) on `backend`, refused unless it was exported
    from this run's weights and config."""
    from ..export_full import CONFIG_KEY, FULL_ONNX_FILE, SHA_KEY, SIZE_KEY

    path = Path(path) if path else run_dir / FULL_ONNX_FILE
    if not path.is_file():
        raise IntraError(f"{path} not found: run `intra export --run {run_dir} --format onnx --full` first")
    try:
        props = _graph_props(path)
        run = (_onnxruntime if backend == "onnx-full" else _openvino)(path, threads)
    except IntraError:
        raise
    except Exception as exc:  # each runtime raises its own exception types for bad files
        raise IntraError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from None
    if props.get(SHA_KEY) != hashes["weights_sha256"] or props.get(CONFIG_KEY) != hashes["config_sha256"]:
        raise IntraError(f"{path} was exported from other weights or another scoring than {run_dir}: export again")
    size = tuple(int(side) for side in props[SIZE_KEY].split(","))
    return GraphRuntime(run, "onnxruntime" if backend == "onnx-full" else "openvino", path, size)


class FullGraphDetector(Detector):
    """A Detector whose `detect` (and so `predict`) runs the exported full graph (see the module docstring)."""

    def __init__(self, model, cfg: Config, stats: dict, runtime: GraphRuntime):
        super().__init__(model, cfg, None, "cpu", stats, backend=runtime)
        self.runtime = runtime

    def detect(self, images: Images) -> tuple[Images, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (anomaly maps (B, H, W), image scores (B,), peaks (B, 2)); a list of (C, H, W) -> a list
        of maps."""
        if not isinstance(images, torch.Tensor) and len({tuple(x.shape) for x in images}) > 1:
            raise IntraError(f"the {self.runtime.name} full graph scores images of one size, not several")
        batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        maps, scores, peaks = self.runtime(batch)
        return (maps if isinstance(images, torch.Tensor) else list(maps)), scores, peaks

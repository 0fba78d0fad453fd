"""ONNX export of the inpainting network, and the onnxruntime backend that stands in for it.

Only the network is exported: (patches (B, L*L, K*K*C) float32, covered (B,) int64, positions
(B, L*L) int64) -> inpainted pixels (B, K*K*C), with a dynamic batch dimension B. Window gathering,
the anomaly map and the score stay in `Detector`, shared by both backends: `OnnxNetwork` is
called exactly where the torch module is. The exporter is torch's dynamo-based one (it needs the
`onnxscript` package of the `onnx` extra). The ONNX file records the SHA-256 of the weights it
came from, so a model.onnx left over from older weights is refused.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from .checkpoint import atomic_write, load_checkpoint, read_metadata
from .errors import IntraError
from .windows import inference_windows

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
SHA_KEY = "intra.weights_sha256"
INPUTS = ("patches", "covered", "positions")


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise IntraError(f"this needs the {module} package: pip install 'intra[onnx]'") from None


def export_onnx(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's network as ONNX (default RUN/model.onnx); returns the path."""
    onnx = _need("onnx")
    _need("onnxscript")
    run_dir = Path(run_dir)
    cfg, model, _, _ = load_checkpoint(run_dir)
    sha = read_metadata(run_dir).get("weights_sha256", "")
    m = cfg.model
    tokens, covered = inference_windows((m.grid, m.grid), m.window)
    example = (torch.rand(2, m.window**2, m.patch_dim), covered[:2].clone(), tokens[:2].clone())
    batch = torch.export.Dim("batch")
    path = Path(out) if out else run_dir / ONNX_FILE

    def write(tmp: Path) -> None:
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the exporter logs every optional op set it skips
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporter internals (deprecations, axis renaming)
                program = torch.onnx.export(
                    model, example, input_names=list(INPUTS), output_names=["pixels"],
                    dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), dynamo=True, verbose=False,
                )
        finally:
            quiet.setLevel(level)
        proto = program.model_proto
        onnx.helper.set_model_props(proto, {SHA_KEY: sha})
        onnx.save(proto, str(tmp))

    atomic_write(path, write)
    log.info("exported %s", path)
    return path


class OnnxNetwork:
    """Stands in for InpaintingTransformer in a Detector: same call, run by onnxruntime on the CPU."""

    def __init__(self, session, path: Path):
        self.session, self.path = session, path
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, run_dir: str | Path, path: str | Path | None = None, threads: int = 0) -> "OnnxNetwork":
        ort = _need("onnxruntime")
        run_dir = Path(run_dir)
        path = Path(path) if path else run_dir / ONNX_FILE
        if not path.is_file():
            raise IntraError(f"{path} not found: run `intra export --run {run_dir} --format onnx` first")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise IntraError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from None
        sha = session.get_modelmeta().custom_metadata_map.get(SHA_KEY)
        if sha != read_metadata(run_dir).get("weights_sha256"):
            raise IntraError(f"{path} was exported from other weights than {run_dir}: export again")
        return cls(session, path)

    def __call__(self, patches: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Patches (B, L*L, P), covered (B,), positions (B, L*L) -> pixels (B, P), on the patches' device."""
        given = dict(zip(INPUTS, (patches.float(), covered.long(), positions)))
        feeds = {name: given[name].cpu().numpy() for name in self.inputs}
        (pixels,) = self.session.run(None, feeds)
        return torch.from_numpy(pixels).to(patches.device)

    def to(self, *args, **kwargs) -> "OnnxNetwork":
        return self

    def eval(self) -> "OnnxNetwork":
        return self

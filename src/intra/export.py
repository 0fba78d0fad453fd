"""ONNX export of the inpainting network, and the onnxruntime backend that stands in for it.

Only the network is exported, with a dynamic batch dimension B. A covered-token head
(`model.head = covered`) is exported in its several-patches form: (patches (B, L*L, K*K*C)
float32, covered mask (B, L*L) bool, positions (B, L*L) int64) -> every token's pixels
(B, L*L, K*K*C), so one graph serves one covered patch per pass and `score.cover_spacing`. A mean
head can only inpaint one patch per window and keeps the one-patch form: (patches, covered (B,)
int64, positions) -> pixels (B, K*K*C). Window gathering, the anomaly map and the score stay in
`Detector`, shared by both backends: `OnnxNetwork` is called exactly where the torch module is.
The exporter is torch's dynamo-based one (it needs the `onnxscript` package of the `onnx` extra).
The ONNX file records the SHA-256 of the weights it came from, so a model.onnx left over from
older weights is refused.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, read_metadata
from .config import Config, ModelConfig
from .core.windows import inference_windows
from .errors import IntraError
from .files import atomic_write

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
    if m.head == "covered":  # a mask input: the graph also serves several covered patches per pass
        covered = torch.arange(m.window**2) == covered[:, None]  # (windows, L*L) bool
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
                    model,
                    example,
                    input_names=list(INPUTS),
                    output_names=["pixels"],
                    dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
                    dynamo=True,
                    verbose=False,
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

    def __init__(self, session, path: Path, cfg: ModelConfig):
        self.session, self.path, self.cfg = session, path, cfg
        self.inputs = [i.name for i in session.get_inputs()]
        covered = next(i for i in session.get_inputs() if i.name == "covered")
        self.takes_mask = covered.type == "tensor(bool)"  # the several-patches form (see the module doc)

    @classmethod
    def load(cls, run_dir: str | Path, path: str | Path | None = None, threads: int = 0) -> OnnxNetwork:
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
        meta = read_metadata(run_dir)
        sha = session.get_modelmeta().custom_metadata_map.get(SHA_KEY)
        if sha != meta.get("weights_sha256"):
            raise IntraError(f"{path} was exported from other weights than {run_dir}: export again")
        return cls(session, path, Config.from_dict(meta["config"]).model)

    def __call__(
        self, patches: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Like the torch module: covered (B,) -> pixels (B, P); a covered mask (B, L*L) -> (B, L*L, P)."""
        if covered.dtype == torch.bool:
            return self.forward_multi(patches, covered, positions)
        if not self.takes_mask:
            return self._run(patches, covered.long(), positions)
        mask = torch.arange(patches.shape[1], device=covered.device) == covered[:, None]
        return self._run(patches, mask, positions)[torch.arange(patches.shape[0]), covered.cpu()].to(patches.device)

    def forward_multi(
        self, patches: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Patches (B, L*L, P), covered mask (B, L*L) bool, positions -> every token's pixels (B, L*L, P)."""
        if not self.takes_mask:
            raise IntraError(
                f"{self.path} inpaints one patch per window (a mean-head model): score.cover_spacing needs model.head = covered"
            )
        return self._run(patches, covered, positions).to(patches.device)

    def _run(self, patches: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        given = dict(zip(INPUTS, (patches.float(), covered, positions)))
        feeds = {name: given[name].cpu().numpy() for name in self.inputs}
        (pixels,) = self.session.run(None, feeds)
        return torch.from_numpy(pixels)

    def to(self, *args, **kwargs) -> OnnxNetwork:
        return self

    def eval(self) -> OnnxNetwork:
        return self

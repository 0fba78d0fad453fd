"""ONNX export of the inpainting network (`intra export`), for `inference.backends.OnnxBackend` and other runtimes.

Only the network is exported (`WindowGraph`), with a dynamic batch dimension B: (patches
(B, L*L, K*K*C) float32, covered mask (B, L*L) bool, positions (B, L*L) int64) -> every token's
pixels (B, L*L, K*K*C) with the covered-token head, so one graph serves one covered patch per
pass and `score.cover_spacing`; or the covered patch's pixels (B, K*K*C) with the mean head, which
inpaints one patch per window. Window gathering, the anomaly map and the score stay in the
engine, shared by every backend. The exporter is torch's dynamo-based one (it needs the
`onnxscript` package of the `onnx` extra). The ONNX file records the SHA-256 of the weights it
came from, so a model.onnx left over from older weights is refused.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, run_hashes
from .core.model import InpaintingTransformer
from .core.smooth_fill import fill_grid, grid_operators
from .core.windows import one_patch_plan
from .errors import IntraError
from .files import atomic_write

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
SHA_KEY = "intra.weights_sha256"
INPUTS = ("patches", "covered", "positions")


def need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise IntraError(f"this needs the {module} package: pip install 'intra[onnx]'") from None


class WindowGraph(nn.Module):
    """What is exported: windows of pixel patches -> pixels, with shapes fixed by the batch alone.

    patches (B, L*L, P), covered mask (B, L*L) bool, positions (B, L*L) -> every token's pixels
    (B, L*L, P) with the covered-token head (callers keep the covered tokens they read), or the
    covered patch's pixels (B, P) with the mean head (one covered patch per window).
    """

    def __init__(self, model: InpaintingTransformer):
        super().__init__()
        self.model = model
        m = model.cfg
        # The fill's operators as constants of the graph (see smooth_fill.grid_operators).
        self.fill_operators = grid_operators((m.window, m.window), m.patch_size) if m.base_fill == "smooth" else {}

    def forward(self, patches: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = model.forward_blocks(model.tokens(model.embed_patches(patches), covered, positions))
        base = None
        if model.cfg.base_fill == "smooth":  # every token's fill; the mean head keeps the covered one's
            m = model.cfg
            base = fill_grid(patches, (m.window, m.window), m.channels, m.patch_size, self.fill_operators)
        if model.cfg.head == "mean":
            if base is not None:
                base = (base * covered[..., None]).sum(dim=1)  # (B, P): one covered token per window
            return model.head_pixels(model.norm(x).mean(dim=1), base)
        return model.head_pixels(model.norm(x), base)


def write_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    props: dict[str, str],
) -> None:
    """Export `module` with torch's dynamo exporter, dimension 0 of every input dynamic (one batch), and
    write it atomically to `path` with the metadata `props`."""
    onnx = need("onnx")
    batch = torch.export.Dim("batch")

    def write(tmp: Path) -> None:
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the exporter logs every optional op set it skips
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporter internals (deprecations, axis renaming)
                program = torch.onnx.export(
                    module,
                    example,
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_shapes=tuple({0: batch} for _ in example),
                    dynamo=True,
                    verbose=False,
                )
        finally:
            quiet.setLevel(level)
        proto = program.model_proto
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(tmp))

    atomic_write(path, write)


def export_onnx(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's network as ONNX (default RUN/model.onnx); returns the path."""
    need("onnx")
    need("onnxscript")
    run_dir = Path(run_dir)
    cfg, model, _, _ = load_checkpoint(run_dir)
    sha = run_hashes(run_dir)["weights_sha256"]
    m = cfg.model
    plan = one_patch_plan((m.grid, m.grid), m.window)
    example = (torch.rand(2, m.window**2, m.patch_dim), plan.covered[:2].clone(), plan.tokens[:2].clone())
    path = Path(out) if out else run_dir / ONNX_FILE
    write_onnx(WindowGraph(model), example, path, list(INPUTS), ["pixels"], {SHA_KEY: sha})
    log.info("exported %s", path)
    return path

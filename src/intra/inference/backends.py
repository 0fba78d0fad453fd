"""Backends: where the network of a Detector runs. One interface, three runtimes.

A backend has two stages the engine calls: `embed(patches)` once per patch of an image, then
`run(windows, covered, positions, read, pixels)` on a chunk of gathered windows, returning the
pixels of the read tokens (n read, K*K*C), in row-major order of `read`; `pixels` holds the windows'
pixel patches when the backend asks for them (`needs_pixels`: a model with a smooth base fill).

- `TorchBackend`: this process's PyTorch. On a CPU the network is a oneDNN-packed copy (fp32, or
  bf16 where the CPU has bf16 instructions); elsewhere the plain module, under bf16 autocast when
  asked; `compile` runs it through torch.compile. `describe()` says which of these actually ran.
- `OnnxBackend`: onnxruntime on an exported `model.onnx` (see `export`). The graph embeds the
  patches itself, so `embed` passes raw pixel patches through and `run` receives them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.model import InpaintingTransformer
from ..errors import IntraError
from . import packed

log = logging.getLogger(__name__)


class Backend:
    """The interface the engine runs (see the module docstring)."""

    compiled = False  # True: the engine feeds fixed-size chunks
    needs_pixels = False  # True: `run` also receives the windows' pixel patches

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, P) pixel patches -> (N, E) what `run` gathers into windows."""
        raise NotImplementedError

    def run(
        self,
        windows: torch.Tensor,
        covered: torch.Tensor,
        positions: torch.Tensor,
        read: torch.Tensor,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """windows (n, T, E), covered (n, T) bool, positions (n, T) long, read (n, T) bool,
        pixels (n, T, P) or None -> (n read, P)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What actually runs: {"backend": ..., "dtype": ...}."""
        raise NotImplementedError


class TorchBackend(Backend):
    def __init__(
        self,
        model: InpaintingTransformer,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
    ):
        self.model, self.device, self.dtype, self.compiled = model, device, dtype, compile
        self.needs_pixels = model.cfg.base_fill != "none"
        self._network: InpaintingTransformer | None = None
        self._key: tuple | None = None
        self._blocks = None
        # Walking the module tree (state_dict, parameters()) costs ~0.45 ms, several times per image at
        # batch 1; the tensors are listed once and their versions read on each call instead.
        self._tensors = [*model.parameters(), *model.buffers()]

    def network(self) -> InpaintingTransformer:
        """The module that runs: a oneDNN-packed copy of `model` on the CPU (unless compiled), else `model`.

        The copy is rebuilt whenever `model`'s weights change in place (optimizer steps, `load_state_dict`,
        `copy_`: fit keeps training the same module) or move to other storage (`.data` replaced).
        """
        key = tuple((t.data_ptr(), t._version) for t in self._tensors)
        if self._network is None or key != self._key:
            use_packed = self.device.type == "cpu" and not self.compiled and packed.available(self.dtype)
            self._network = packed.pack_for_cpu(self.model, self.dtype) if use_packed else self.model
            self._key, self._blocks = key, None
        return self._network

    @property
    def autocast(self) -> bool:
        """bf16 through autocast: the plain module computing in bf16 (a packed copy computes in its own dtype)."""
        return self.dtype != torch.float32 and self.network() is self.model

    def _context(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        with self._context():
            return self.network().embed_patches(patches)

    def _encode(self, windows: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.network().encode(windows, covered, positions)

    def run(
        self,
        windows: torch.Tensor,
        covered: torch.Tensor,
        positions: torch.Tensor,
        read: torch.Tensor,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        network = self.network()
        base = None if pixels is None else network.base_pixels(pixels, read)  # fp32, outside autocast
        with self._context():
            if not self.compiled:  # the last block runs for the read tokens only (a shape compile would not fix)
                return network.decode(network.encode(windows, covered, positions, read), read, base).float()
            if self._blocks is None:
                self._blocks = torch.compile(self._encode, dynamic=False)
            return network.decode(self._blocks(windows, covered, positions), read, base).float()

    def describe(self) -> dict:
        network = self.network()
        if self.compiled:
            name = "torch-compiled"
        elif network is not self.model:
            name = "torch-onednn"
        else:
            name = "torch"
        dtype = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        return {"backend": name, "dtype": dtype + (" (autocast)" if self.autocast else ""), "device": str(self.device)}


class OnnxBackend(Backend):
    """onnxruntime on the run's exported network (`intra export`); CPU only.

    The graph takes raw pixel patches (B, L*L, P), a covered mask (B, L*L) and positions (B, L*L)
    and returns every token's pixels (covered-token head) or the one covered patch's (mean head).
    """

    def __init__(self, session, path: Path, head: str):
        self.session, self.path, self.head = session, path, head
        self.inputs = [i.name for i in session.get_inputs()]
        covered = next(i for i in session.get_inputs() if i.name == "covered")
        self.takes_mask = covered.type == "tensor(bool)"  # exports before the mask form took an index

    @classmethod
    def load(
        cls, run_dir: str | Path, sha256: str, head: str, path: str | Path | None = None, threads: int = 0
    ) -> OnnxBackend:
        """Open RUN/model.onnx (or `path`); refused unless it was exported from the weights with `sha256`."""
        from ..export import ONNX_FILE, SHA_KEY, need

        ort = need("onnxruntime")
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
        if session.get_modelmeta().custom_metadata_map.get(SHA_KEY) != sha256:
            raise IntraError(f"{path} was exported from other weights than {run_dir}: export again")
        return cls(session, path, head)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        return patches  # the graph embeds the patches itself

    def run(
        self,
        windows: torch.Tensor,
        covered: torch.Tensor,
        positions: torch.Tensor,
        read: torch.Tensor,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.takes_mask and int(covered.sum(dim=1).max()) > 1:
            raise IntraError(
                f"{self.path} takes one covered patch per window (an export of an older intra), and this "
                "scoring covers several (score.cover_spacing): export again"
            )
        given = {
            "patches": windows.float(),
            "covered": covered if self.takes_mask else covered.long().argmax(dim=1),
            "positions": positions,
        }
        (pixels,) = self.session.run(None, {name: given[name].cpu().numpy() for name in self.inputs})
        pixels = torch.from_numpy(pixels).to(windows.device)
        if self.head == "mean":
            return pixels  # (n, P): one patch per window
        return pixels[read]  # (n, T, P) -> (n read, P)

    def describe(self) -> dict:
        return {"backend": "onnxruntime", "dtype": "fp32", "device": "cpu"}

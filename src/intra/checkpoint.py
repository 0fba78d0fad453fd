"""A trained model on disk: `model.safetensors` (weights and statistics maps) + `model.json` (metadata).

No pickle anywhere: loading someone else's run cannot execute code. The JSON holds the format
version, the resolved config and scalar statistics; the safetensors file holds the network's
weights under "model." and tensors such as the training mean difference map under "stats.".
Writes are atomic (temporary file, then rename), so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config
from .errors import IntraError
from .model import InpaintingTransformer

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "model.json"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def save_checkpoint(
    run_dir: str | Path,
    model: InpaintingTransformer,
    cfg: Config,
    tensors: dict[str, torch.Tensor] | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    """Write model.safetensors and model.json into run_dir (weights first, metadata last)."""
    run_dir = Path(run_dir)
    state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state.update({f"stats.{k}": v.detach().cpu().float().contiguous() for k, v in (tensors or {}).items()})
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format_version": str(FORMAT_VERSION)}))
    meta = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "stats": stats or {}}
    write_json(run_dir / METADATA, meta)


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """model.json of a run folder, with its format version checked."""
    path = Path(run_dir) / METADATA
    if not Path(run_dir).is_dir():
        raise IntraError(f"run folder not found: {run_dir}")
    if not path.is_file():
        raise IntraError(f"{run_dir} is not a trained run: {METADATA} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntraError(f"{path} is corrupted: {exc}") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise IntraError(f"{path} has format version {version!r}; this intra reads version {FORMAT_VERSION}")
    return meta


def load_checkpoint(
    run_dir: str | Path,
) -> tuple[Config, InpaintingTransformer, dict[str, torch.Tensor], dict[str, Any]]:
    """Rebuild (config, model in eval mode, stats tensors, stats dict) from a run folder."""
    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    try:
        cfg = Config.from_dict(meta["config"])
    except (IntraError, KeyError, TypeError) as exc:
        raise IntraError(f"{run_dir / METADATA}: config does not match this intra ({exc})") from None
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise IntraError(f"{run_dir} has no {WEIGHTS}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise IntraError(f"{path} is corrupted or not a safetensors file: {exc}") from None
    model = InpaintingTransformer(cfg.model)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise IntraError(f"{path} does not fit the config in {METADATA}: {details[:300]}") from None
    tensors = {k[len("stats."):]: v for k, v in state.items() if k.startswith("stats.")}
    return cfg, model.eval(), tensors, meta.get("stats", {})

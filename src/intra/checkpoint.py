"""A trained model on disk: `model.safetensors` (weights and statistics maps) + `model.json` (metadata).

No pickle anywhere: loading someone else's run cannot execute code. The JSON holds the format
version, the resolved config and scalar statistics; the safetensors file holds the network's
weights under "model." and tensors such as the training mean difference map under "stats.".
Writes are atomic (temporary file, then rename), so a crash never leaves half a checkpoint, and
model.json (written last) records the SHA-256 of the weights it belongs to, so weights and metadata
from two different saves, or weights damaged on disk, are refused instead of silently mixed; and
the SHA-256 of its own config (canonical JSON), so an edited image_size or heads is refused too.

A run folder is never overwritten implicitly: `check_new_run` refuses a folder that already holds
a run unless it is to be replaced, and then training goes into a temporary sibling that replaces
the old run only once the new model is complete (`files.replacing_folder`).

A training run in progress also keeps `training_state.safetensors` (see `save_training_state`):
weights, best weights, optimizer state and random-generator states as tensors, and everything else
(epoch, best loss, elapsed time, optimizer hyperparameters) as JSON in the file's metadata, so
`intra train --resume` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .config import Config
from .core.model import InpaintingTransformer
from .errors import IntraError
from .files import atomic_write, write_json

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "model.json"
# Files that make a folder a run folder (written by fit; training_state.safetensors while it trains).
RUN_FILES = ("config.json", "train_log.jsonl", WEIGHTS, METADATA, "training_state.safetensors")
# Files that other tools load with pickle (which can run code): never opened, only named in errors.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


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
    write_tensors(run_dir / WEIGHTS, state, {"format_version": str(FORMAT_VERSION)})
    meta = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "stats": stats or {},
        "weights_sha256": sha256(run_dir / WEIGHTS),
        "config_sha256": config_sha256(cfg.to_dict()),
    }
    write_json(run_dir / METADATA, meta)


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a config dict's canonical JSON (sorted keys, no spaces): what model.json's config must hash to."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_new_run(run_dir: str | Path, overwrite: bool = False) -> bool:
    """May a new training run be written to run_dir? True if it holds a run that is to be replaced.

    A missing or empty folder is fine (False). A folder holding a run is refused unless overwrite;
    a non-empty folder that holds no run is always refused (intra never deletes a user's files).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise IntraError(f"cannot write to run folder {run_dir}: it is a file")
    if any((run_dir / name).exists() for name in RUN_FILES):
        if overwrite:
            return True
        if (run_dir / "training_state.safetensors").exists():
            raise IntraError(
                f"{run_dir} holds an interrupted run: continue it with --resume {run_dir}, or replace it with --overwrite"
            )
        raise IntraError(
            f"{run_dir} already holds a run: replace it with --overwrite, or choose another --out "
            "(--resume continues interrupted runs only)"
        )
    if any(not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in run_dir.iterdir()):
        raise IntraError(f"{run_dir} is not empty and holds no run: choose a new or empty folder for --out")
    return False


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file, atomically. Through bytes: safetensors' own file functions refuse paths that
    are not UTF-8, which Linux folders can be.

    safetensors refuses tensors that share memory, and one tensor may stand under two names (the
    anomaly map and the image score chosen with one difference map share its training statistics):
    each name after the first is written as a copy, and reads back as its own tensor.
    """
    seen: set[int] = set()
    unshared = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        unshared[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    data = save_bytes(unshared, metadata=metadata)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def tensor_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, from its JSON header alone (8 bytes of length, then JSON)."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size)) if 0 < size < 100_000_000 else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntraError(f"{path} is corrupted or not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise IntraError(f"{path} is corrupted or not a safetensors file")
    return header.get("__metadata__") or {}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a pickle or a damaged file is refused, never unpickled."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IntraError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return load_bytes(data)  # parses a JSON header and raw arrays: cannot run code
    except (SafetensorError, ValueError) as exc:
        head = data[:2]
        if (head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head == b"PK":
            raise IntraError(
                f"{path} is a pickle file (torch.save), not safetensors: intra never unpickles files, they can run code"
            ) from None
        raise IntraError(f"{path} is corrupted or not a safetensors file: {exc}") from None


def run_hashes(run_dir: str | Path) -> dict[str, str]:
    """{"weights_sha256", "config_sha256"} of a run, as model.json records them, or computed from its files
    for a run saved without them: what an export is stamped with and checked against."""
    meta = read_metadata(run_dir)
    return {
        "weights_sha256": meta.get("weights_sha256") or sha256(Path(run_dir) / WEIGHTS),
        "config_sha256": meta.get("config_sha256") or _config_hash(meta.get("config")) or "",
    }


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
        pickles = sorted(p.name for p in run_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" ({', '.join(pickles)} not loaded: intra never unpickles files)" if pickles else ""
        raise IntraError(f"{run_dir} has no {WEIGHTS}{hint}")
    state = read_tensors(path)
    expected = meta.get("weights_sha256")
    if expected and sha256(path) != expected:
        raise IntraError(f"{path} does not match {METADATA} (damaged, or the two come from different saves)")
    model = InpaintingTransformer(cfg.model)
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise IntraError(f"{path} does not fit the config in {METADATA}: {details[:300]}") from None
    expected = meta.get("config_sha256")
    if expected and _config_hash(meta["config"]) != expected:
        raise IntraError(
            f"{run_dir / METADATA}: its config was edited after training (it no longer matches config_sha256): "
            "restore the file or train a new run"
        )
    tensors = {k[len("stats.") :]: v for k, v in state.items() if k.startswith("stats.")}
    return cfg, model.eval(), tensors, meta.get("stats", {})


def _config_hash(config: Any) -> str | None:
    try:
        return config_sha256(config)
    except (TypeError, ValueError):  # NaN or values JSON cannot hold: not what was saved
        return None

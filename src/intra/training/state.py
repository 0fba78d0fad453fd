"""Resume state: everything a Trainer needs to continue bit-identically, in one safetensors file.

`training_state.safetensors` holds the weights, the best weights, the EMA copy, the optimizer
tensors and the random-generator states as tensors; everything else (epoch, best loss, elapsed
time, optimizer hyperparameters) is JSON in the file's metadata. No pickle. `fit` rewrites it
atomically after every epoch and deletes it once the model is saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import FORMAT_VERSION, read_tensors, tensor_metadata, write_tensors
from ..errors import IntraError
from ..files import atomic_write, stale_stagings
from .trainer import Trainer

TRAINING_STATE = "training_state.safetensors"


def capture(trainer: Trainer, **extra) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything needed to continue bit-identically: (tensors, JSON-able state).

    Tensors: current and best weights, optimizer tensors, RNG states; the rest (epoch, best
    loss, elapsed time, optimizer hyperparameters) is plain JSON. No pickle.
    """
    tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in trainer.best_state.items()})
    ema = trainer.ema.state_dict() if trainer.ema is not None else {"updates": 0, "model": {}}
    tensors.update({f"ema.{k}": v for k, v in ema["model"].items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = trainer.generator.get_state()
    tensors.update(
        {f"rng.shard.{j}": g.get_state() for j, g in enumerate(trainer.generators) if g is not trainer.generator}
    )
    if torch.cuda.is_available() and any(p.is_cuda for p in trainer.model.parameters()):
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    optim = trainer.optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, entries in optim["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    state = {
        "epoch": trainer.epoch,
        "step": trainer.step,
        "ema_updates": ema["updates"],
        "best_epoch": trainer.best_epoch,
        "best_metric": trainer.best_metric,
        "elapsed": trainer.elapsed,
        "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars},
        **extra,
    }
    return tensors, state


def restore(trainer: Trainer, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Restore what `capture` saved (the Trainer must be built from the same config)."""
    device = next(trainer.model.parameters()).device

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        trainer.model.load_state_dict(part("model."))
        trainer.best_state = {k: v.to(device) for k, v in part("best.").items()}
        if trainer.ema is not None:
            trainer.ema.load_state_dict({"updates": state["ema_updates"], "model": part("ema.")})
        optim_state: dict[int, dict] = {}
        for key, value in part("optimizer.").items():
            index, name = key.split(".", 1)
            optim_state.setdefault(int(index), {})[name] = value
        for index, entries in state["optimizer"]["scalars"].items():
            optim_state.setdefault(int(index), {}).update(entries)
        trainer.optimizer.load_state_dict({"state": optim_state, "param_groups": state["optimizer"]["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        trainer.generator.set_state(tensors["rng.generator"])
        for j, g in enumerate(trainer.generators):
            if g is not trainer.generator:
                g.set_state(tensors[f"rng.shard.{j}"])
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for index, rng_state in enumerate(cuda_rng_states(tensors, devices)):
            torch.cuda.set_rng_state(rng_state, index)
        trainer.epoch, trainer.best_epoch, trainer.step = state["epoch"], state["best_epoch"], state["step"]
        trainer.best_metric, trainer.elapsed = state["best_metric"], state["elapsed"]
    except (KeyError, RuntimeError, ValueError) as exc:
        raise IntraError(
            f"the training state does not fit this run's config: {str(exc).splitlines()[0][:200]}"
        ) from None


def cuda_rng_states(tensors: dict[str, torch.Tensor], devices: int) -> list[torch.Tensor]:
    """The saved GPU generator states for the first `devices` GPUs, in device order (cuda.10 after cuda.9).

    A run resumed on fewer GPUs (or on a CPU) restores only the GPUs it has: the others' states
    have nowhere to go, and setting them would fail when CUDA initialises.
    """
    saved = sorted((int(key.rsplit(".", 1)[1]), value) for key, value in tensors.items() if key.startswith("rng.cuda."))
    return [value for _, value in saved[:devices]]


def save(run_dir: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """One atomic file: tensors (weights, optimizer moments, RNG states) + `state` as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format_version": str(FORMAT_VERSION), "state": json.dumps(state)}
    write_tensors(Path(run_dir) / TRAINING_STATE, tensors, metadata)


def resumable_folder(run_dir: str | Path) -> Path:
    """Where the interrupted training of RUN lies: RUN itself, or the hidden folder beside it in which an
    `intra train --overwrite RUN` was training the run that was to replace it when it was stopped."""
    run_dir = Path(run_dir)
    if (run_dir / TRAINING_STATE).is_file():
        return run_dir
    staged = [folder for folder in stale_stagings(run_dir) if (folder / TRAINING_STATE).is_file()]
    return staged[0] if staged else run_dir


def kept_if_resumable(run_dir: Path) -> Callable[[Path], str | None]:
    """For `files.replacing_folder(keep=...)`: an interrupted staging folder with a training state is kept."""

    def keep(staging: Path) -> str | None:
        if (staging / TRAINING_STATE).is_file():
            return f"the interrupted training is kept beside {run_dir} ({staging.name}): intra train --resume {run_dir}"
        return None

    return keep


def load(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) written by `save`; IntraError if missing, damaged or of another version."""
    path = Path(run_dir) / TRAINING_STATE
    if not path.is_file():
        raise IntraError(
            f"{run_dir} has no {TRAINING_STATE} to resume from (its training finished, or never saved an epoch)"
        )
    tensors = read_tensors(path)
    metadata = tensor_metadata(path)
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise IntraError(
            f"{path} has format version {metadata.get('format_version')!r}; this intra reads version {FORMAT_VERSION}"
        )
    try:
        return tensors, json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise IntraError(f"{path} is corrupted: {exc}") from None


def truncate_log(log_path: Path, epoch: int) -> None:
    """Keep the log lines of epochs <= epoch: later ones were written after the last saved state."""
    if not log_path.is_file():
        return
    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the interruption
    atomic_write(log_path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))

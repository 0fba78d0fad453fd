"""Where and how the network runs: device, dtype and CPU thread count, resolved from their names."""

from __future__ import annotations

import torch

from .errors import IntraError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    """'fp32' or 'bf16' -> torch dtype."""
    if name not in DTYPES:
        raise IntraError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu; a named device is checked to exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise IntraError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise IntraError(f"--device {name}: no CUDA GPU is available to this torch build; use --device cpu")
        if device.index is not None and device.index >= count:
            raise IntraError(f"--device {name}: only {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1})")
    elif device.type != "cpu":
        raise IntraError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return device


def configure_threads(threads: int) -> None:
    """Set torch's CPU thread count; 0 leaves torch's default (one per physical core)."""
    if threads > 0:
        torch.set_num_threads(threads)

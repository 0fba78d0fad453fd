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
    """'auto' -> cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_threads(threads: int) -> None:
    """Set torch's CPU thread count; 0 leaves torch's default (one per physical core)."""
    if threads > 0:
        torch.set_num_threads(threads)

"""Where and how the network runs: device, dtype, CPU thread count, and what machine that is."""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path

import torch

from .allocator import reuse_freed_memory  # noqa: F401  (also importable from here, as before)
from .errors import IntraError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    """'fp32' or 'bf16' -> torch dtype."""
    if name not in DTYPES:
        raise IntraError(f"dtype must be one of auto, {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name]


def resolve_dtype_name(name: str, device: torch.device) -> str:
    """A dtype name -> "fp32" or "bf16"; "auto" = bf16 where `device` computes it natively, else fp32.

    One rule for training (`train.dtype`) and inference (`--dtype`, `Detector`'s dtype).
    """
    if name != "auto":
        resolve_dtype(name)  # refuse unknown names here, with the allowed ones
        return name
    return "bf16" if native_bf16(device.type) else "fp32"


@functools.cache
def native_bf16(device_type: str) -> bool:
    """True if products in bfloat16 run on the device's own instructions, not emulated in fp32.

    CPU: AVX-512 BF16 or AMX, where oneDNN runs bf16 products at up to twice the fp32 rate; on
    other CPUs autocast to bf16 only adds conversions. CUDA: a GPU with bf16 arithmetic (Ampere on).
    """
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.4 has no such argument and never counts emulation
            return torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


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


def cpu_model() -> str:
    """The CPU's model name as the OS reports it ("AMD EPYC", "Intel(R) Xeon(R) Processor"), or the
    architecture where it does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """What a run ran on, recorded beside its numbers: two hosts of one CPU model name can differ in
    instruction set (AVX2 against AVX-512 with BF16), and with it in speed and in the dtype "auto" picks."""
    described = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        return {**described, "gpu": torch.cuda.get_device_name(device)}
    return {
        **described,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16("cpu"),
        "cpus": os.cpu_count(),
    }


def configure_threads(threads: int) -> None:
    """Set torch's CPU thread count; 0 leaves torch's default (one per physical core)."""
    if threads > 0:
        torch.set_num_threads(threads)

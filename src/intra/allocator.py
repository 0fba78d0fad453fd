"""The C allocator's reuse of freed memory, set once at start-up (no torch needed, so the command line
sets it before it imports the network)."""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGEST_HEAP_BLOCK = 32 << 20


@functools.cache
def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MB for reuse instead of handing them back to the OS.

    A CPU forward pass allocates activations of several MB per layer. By default glibc serves
    those with fresh mmap pages and returns them on free, so every chunk of windows pays for
    page faults again: about 9 000 per call of 8 images in the `cpu` preset, and about a tenth of
    its inference time (docs/benchmarks.md, "Freed memory kept for reuse"). With this, the pages
    stay with the process: its resident memory stays at its peak instead of shrinking between
    calls. Process-wide and idempotent; the `intra` command calls it at start-up. Returns False
    (and changes nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol, or no C library to open (Windows)
        log.debug("no mallopt in this C library: freed memory is left to the allocator's defaults")
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST_HEAP_BLOCK)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))

"""The inference engine: one chunked loop that runs any plan on any backend.

Every patch of every image is embedded once (`backend.embed`); each pass of each image's plan
then gathers its window's L*L embeddings, and the backend runs the network on a chunk of passes
at a time, returning the pixels of the tokens the plan reads. Images may differ in size: their
patches share one flat table, each image's plan indexes its own rows. Memory is bounded by the
chunk, not by the number of images or passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.windows import Plan, patchify, unpatchify
from .backends import Backend


@torch.inference_mode()
def reconstruct(
    backend: Backend,
    images: Sequence[torch.Tensor],
    plans: Sequence[Plan],
    patch_size: int,
    chunk: int,
    fixed_chunks: bool = False,
) -> list[torch.Tensor]:
    """Inpaint every patch of every image: images (C, H, W) each, with their plans -> reconstructions (C, H, W).

    `fixed_chunks` pads each chunk to one of a few sizes (`padded_size`): compiled code then sees few shapes.
    """
    device = images[0].device
    channels = images[0].shape[0]
    patches = [patchify(image[None], patch_size)[0] for image in images]  # each (M*N, P)
    starts = torch.tensor([0] + [len(p) for p in patches]).cumsum(0)
    pixels_table = torch.cat(patches)  # (total patches, P)
    embedded = backend.embed(pixels_table)  # (total patches, E)
    plans = [plan.to(device) for plan in plans]
    gather = torch.cat(
        [plan.tokens + int(start) for plan, start in zip(plans, starts)]
    )  # (passes, T) rows of `embedded`
    positions = torch.cat([plan.tokens for plan in plans])  # (passes, T) grid positions
    covered = torch.cat([plan.covered for plan in plans])
    read = torch.cat([plan.read for plan in plans])
    out = torch.empty(int(starts[-1]), patches[0].shape[1], device=device)  # (total patches, P)
    total = len(gather)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        size = padded_size(stop - start, chunk) if fixed_chunks else stop - start
        index = torch.arange(start, start + size, device=device).clamp_max(total - 1)
        keep = read[index]
        if size > stop - start:
            keep = keep.clone()
            keep[stop - start :] = False  # the padding's outputs are not written
        rows = gather[index]
        windows = pixels_table[rows] if backend.needs_pixels else None  # the window's pixels, for a base fill
        pixels = backend.run(embedded[rows], covered[index], positions[index], keep, windows)  # (n read, P)
        out[rows[keep]] = pixels.to(out.dtype)
    return [
        unpatchify(out[int(starts[i]) : int(starts[i + 1])][None], channels, plan.grid)[0]
        for i, plan in enumerate(plans)
    ]


def padded_size(rows: int, chunk: int) -> int:
    """The size a chunk of `rows` passes is padded to for compiled code: the next power of two from 16, at most `chunk`.

    Each size is compiled once; padding every short chunk to the full `chunk` would make one image
    (36 passes at 128 px) cost a whole chunk's work (hundreds of passes), while a power of two wastes
    less than half and keeps the shapes to a handful (16, 32, ..., chunk).
    """
    size = 16
    while size < rows:
        size *= 2
    return min(size, chunk)

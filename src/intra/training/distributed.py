"""Data-parallel training over several processes (GPUs, nodes) with torch.distributed.

`intra train` launched by `torchrun` runs `fit` in every process; the variables torchrun sets
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) switch this module on. Without them
nothing here runs and nothing of torch.distributed is initialised.

- Model: wrapped in DistributedDataParallel; process r uses GPU LOCAL_RANK (NCCL), or the CPU (gloo).
- Sampling: a global batch of B windows is S shards of B/S windows, S = `train.sample_shards`
  (0: one per process). Shard j is drawn from its own generator, seeded from (seed, j); process r of
  W draws shards r*S/W ... (r+1)*S/W - 1. So the windows of a run depend on (seed, S), not on how
  many processes share them: one process with sample_shards = S draws exactly what S processes draw.
- Gradients: each process's loss is the mean over its covered patches, weighted by its share of
  the global batch's patches (`World.share`: with a lattice, processes hold different numbers), and
  DDP averages the gradients: the gradient of the mean loss over the global batch, as in one
  process (up to the order of floating-point sums). The learning rate and batch size mean the same
  as in one process.
- Validation: each process scores a slice of the fixed validation batches; sums are all-reduced,
  so every process sees the same validation loss and stops at the same epoch.
- Time: with a budget (`train.max_minutes`) the elapsed time drives the lr schedule and the stop;
  every step uses the slowest process's clock, so all step with one learning rate and stop together.
- Only rank 0 writes: config.json, train_log.jsonl, the mean map and the checkpoint.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import IntraError

log = logging.getLogger(__name__)


@dataclass
class World:
    """This process's place among the training processes; World() is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over all processes (identity for a single process)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def share(self, count: int, device: torch.device) -> torch.Tensor | float:
        """This process's `count` of the global batch's items over their mean per process (1 for a single process).

        A per-process mean loss times this is the process's sum over the global mean count, so DDP's
        gradient average is the gradient of the mean over every item of the global batch even when
        processes hold different numbers of items (covered patches of a lattice). A device tensor: no
        host sync.
        """
        if not self.active:
            return 1.0
        total = torch.tensor([float(count)], device=device)
        torch.distributed.all_reduce(total)
        return count * self.size / total

    def max(self, value: float, device: torch.device) -> float:
        """The largest of the processes' values, on every process (the value itself for a single process)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return float(tensor)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if it is true on one of them."""
        return self.all_sum([float(flag)], device)[0] > 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel(model) when distributed, else model itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # The pixel statistics buffers never change: no need to broadcast them every step.
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def shard_generators(
        self, generator: torch.Generator, shards: int, batch_size: int, seed: int
    ) -> list[torch.Generator]:
        """The generators of this process's sampling shards (see the module docstring).

        With one shard in all, it is `generator` itself: a single-process run draws as it always has.
        """
        shards = shards or self.size
        if shards % self.size:
            raise IntraError(
                f"train.sample_shards ({shards}) must be a multiple of the number of processes ({self.size})"
            )
        if batch_size % shards:
            raise IntraError(f"train.batch_size ({batch_size}) must be a multiple of the sampling shards ({shards})")
        if shards == 1:
            return [generator]
        mine = range(self.rank * shards // self.size, (self.rank + 1) * shards // self.size)
        return [torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (j + 1)) for j in mine]


def world_from_env() -> World:
    """The World torchrun describes in the environment; World() when not launched by it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes; returns (world, this process's device).

    A CUDA device becomes cuda:LOCAL_RANK with the NCCL backend; the CPU uses gloo.
    """
    world = world_from_env()
    if not world.active:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        atexit.register(teardown)
    log.info("process %d of %d (%s, %s)", world.rank, world.size, backend, device)
    return world, device


def teardown() -> None:
    """Leave the process group (registered to run at exit by `setup`)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

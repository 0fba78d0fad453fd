"""Optimisation knobs for short training budgets: optimizer, learning-rate schedule, weight EMA.

None of this is in the paper (Adam at a constant rate); the `paper` preset keeps it off. They
exist because on a CPU budget of minutes, how fast training converges decides the detector's
quality (see docs/benchmarks.md, "Training efficiency").

The schedule is a function of training *progress* p in [0, 1]: the larger of the step fraction
(step / (max_epochs * steps_per_epoch)) and the time fraction (elapsed / max_minutes), so that a
wall-clock budget is annealed over exactly that budget. Warm-up rises linearly over the first
`warmup` of progress; then "constant" holds the peak, "cosine" and "linear" decay it to
`lr * min_lr_ratio` at p = 1.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..config import TrainConfig


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper) or AdamW; AdamW decays weight matrices only, not biases, norms or embeddings."""
    # One fused kernel for all parameters instead of a loop of small ops per tensor: on a GPU one
    # launch, on a CPU one pass over memory (torch >= 2.4 has fused Adam/AdamW for both).
    fused = next(model.parameters()).device.type in ("cuda", "cpu")
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    decayed = {n for n, p in model.named_parameters() if p.ndim >= 2 and n != "pos_embed"}
    decay = [p for n, p in model.named_parameters() if n in decayed]
    rest = [p for n, p in model.named_parameters() if n not in decayed]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, fused=fused)


def lr_factor(t: TrainConfig, progress: float) -> float:
    """Multiplier of train.lr at training progress in [0, 1] (warm-up, then the schedule)."""
    progress = min(max(progress, 0.0), 1.0)
    if t.warmup and progress < t.warmup:
        return max(progress / t.warmup, 1e-3)
    if t.schedule == "constant":
        return 1.0
    rest = (progress - t.warmup) / max(1.0 - t.warmup, 1e-9)  # 0 -> 1 after warm-up
    shape = 0.5 * (1 + math.cos(math.pi * rest)) if t.schedule == "cosine" else 1.0 - rest
    return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * shape


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class WeightEMA:
    """An exponential moving average of a model's weights, kept in a separate copy of the model.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates n, so the average
    does not stay anchored at the random initialisation. Buffers (pixel statistics) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = [p for p in self.model.parameters()]
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])

"""Optimisation knobs beyond the paper: learning-rate schedules and the weight average."""

import pytest
import torch

from intra.config import TrainConfig
from intra.core.model import InpaintingTransformer
from intra.training.optim import WeightEMA, lr_factor

from conftest import tiny_config


def test_lr_schedules_warm_up_then_decay():
    t = TrainConfig(schedule="cosine", warmup=0.1, min_lr_ratio=0.1)
    assert lr_factor(t, 0.05) == pytest.approx(0.5)
    assert lr_factor(t, 0.1) == pytest.approx(1.0)
    assert lr_factor(t, 0.55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(t, 1.0) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(schedule="linear"), 0.25) == pytest.approx(0.75)
    assert lr_factor(TrainConfig(), 0.7) == 1.0  # the paper: constant


def test_weight_ema_moves_towards_the_model():
    cfg = tiny_config()
    model = InpaintingTransformer(cfg.model)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    for _ in range(20):
        ema.update(model)
    after = list(ema.model.parameters())
    assert all(torch.allclose(a, p, atol=1e-4) for a, p in zip(after, model.parameters()))
    assert not torch.allclose(before[0], after[0])

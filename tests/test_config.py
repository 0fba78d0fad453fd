"""Configuration: presets, overrides and validation of impossible values."""

import pytest

from intra.config import apply_overrides
from intra.errors import IntraError

from conftest import tiny_config


def test_training_options_are_checked():
    with pytest.raises(IntraError, match="train.schedule"):
        apply_overrides(tiny_config(), {"train.schedule": "step"})
    with pytest.raises(IntraError, match="train.ema"):
        apply_overrides(tiny_config(), {"train.ema": 1.5})
    with pytest.raises(IntraError, match="train.cover_spacing"):
        apply_overrides(tiny_config(), {"train.cover_spacing": 2})  # needs the covered-token head
    with pytest.raises(IntraError, match="score.cover_spacing"):
        apply_overrides(tiny_config(head="covered"), {"score.cover_spacing": 1})

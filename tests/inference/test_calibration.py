"""Calibration and rescoring: the training statistics, z-scores and scoring changes without retraining."""

import pytest
import torch

from intra.errors import IntraError
from intra.inference.calibration import with_score_overrides
from intra.inference.detector import Detector
from intra.training.fit import fit

from conftest import tiny_config


def test_score_settings_change_without_retraining(tmp_path, mvtec_root):
    cfg = tiny_config()
    cfg.model.image_size = 64
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    images = torch.rand(2, 3, 64, 64)
    same = with_score_overrides(detector, {"score.normalize": "true"}, None)
    assert torch.equal(same.predict(images)[0], detector.predict(images)[0])
    three = with_score_overrides(detector, {"score.scales": "1,0.5,0.25"}, mvtec_root)
    assert three.cfg.score.scales == (1.0, 0.5, 0.25) and detector.cfg.score.scales == (0.5, 0.25)
    assert not torch.equal(three.mean_map, detector.mean_map)
    raw = with_score_overrides(detector, {"score.normalize": "false"}, None)
    torch.testing.assert_close(raw.predict(images)[0], detector.difference_maps(images))
    with pytest.raises(IntraError, match="model.dim"):
        with_score_overrides(detector, {"model.dim": 8}, None)


def test_zscore_divides_by_the_training_std_and_survives_save_load(tmp_path, mvtec_root):
    from intra.core.anomaly_map import normalize

    diff = torch.tensor([[[1.0, 3.0]]])
    mean, std = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 4.0]])
    torch.testing.assert_close(normalize(diff, mean, std), torch.tensor([[[0.0, 0.5]]]))
    torch.testing.assert_close(normalize(diff, mean), torch.tensor([[[0.0, 4.0]]]))  # the paper: squared

    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.train.max_epochs = 1
    cfg.score.zscore = True
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    assert detector.std_map.shape == (64, 64) and (detector.std_map >= 0).all()
    images = torch.rand(2, 3, 64, 64)
    loaded = Detector.load(tmp_path / "run", device="cpu")
    assert torch.equal(loaded.std_map, detector.std_map)
    assert torch.equal(loaded.predict(images)[0], detector.predict(images)[0])
    expected = (detector.difference_maps(images) - detector.mean_map) / detector.std_map.clamp_min(
        0.01 * float(detector.std_map.mean())
    )
    torch.testing.assert_close(detector.predict(images)[0], expected)

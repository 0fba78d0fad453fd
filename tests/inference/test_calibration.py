"""Calibration and rescoring: the training statistics, z-scores and scoring changes without retraining."""

import copy
import logging

import numpy as np
import pytest
import torch

from intra.config import SCORINGS, apply_overrides, scoring
from intra.data.defects import KINDS
from intra.errors import IntraError
from intra.inference import calibration, choice
from intra.inference.calibration import calibrate, rescore, statistics_subset, training_split
from intra.inference.detector import Detector
from intra.training.fit import fit

from conftest import lively_model, tiny_config


def test_rescoring_calibrates_again_like_a_fresh_calibration(tmp_path, mvtec_root):
    cfg = tiny_config()
    cfg.model.image_size = 64
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    detector = detector.like(detector.cfg, detector.mean_map, detector.std_map, detector.stats)
    images = torch.rand(2, 3, 64, 64)
    # A runtime key changes nothing that was calibrated: no data needed, same maps.
    same = rescore(detector, {"score.chunk_windows": "7"}, None)
    assert same.stats == detector.stats and torch.equal(same.predict(images)[0], detector.predict(images)[0])
    with pytest.raises(IntraError, match="--data"):
        rescore(detector, {"score.scales": "1,0.5,0.25"}, None)

    three = rescore(detector, {"score.scales": "1,0.5,0.25"}, mvtec_root)
    assert three.cfg.score.scales == (1.0, 0.5, 0.25) and detector.cfg.score.scales == (0.5, 0.25)
    assert three.backend is detector.backend and three.dtype == detector.dtype and three.device == detector.device
    assert three.stats["epochs"] == detector.stats["epochs"]  # training stats survive
    train, val = training_split(mvtec_root, three.cfg)
    fresh = calibrate(Detector(detector.model, three.cfg), train, val)
    for key in ("image_threshold", "pixel_threshold", "overlay_vmax"):
        assert three.stats[key] == pytest.approx(fresh.stats[key], rel=1e-6)
        assert three.stats[key] != pytest.approx(detector.stats[key], rel=1e-3)  # really recalibrated
    torch.testing.assert_close(three.mean_map, fresh.mean_map)

    raw = rescore(detector, {"score.normalize": "false"}, mvtec_root)
    torch.testing.assert_close(raw.predict(images)[0], detector.difference_maps(images))
    with pytest.raises(IntraError, match="model.dim"):
        rescore(detector, {"model.dim": 8}, None)


def test_rescoring_with_another_lattice_than_was_learned_warns(caplog):
    cfg = tiny_config(head="covered")
    cfg.train.cover_spacing = cfg.score.cover_spacing = 2
    detector = Detector(lively_model(cfg), cfg)
    with caplog.at_level(logging.WARNING, logger="intra"), pytest.raises(IntraError, match="--data"):
        rescore(detector, {"score.cover_spacing": "3"}, None)
    assert "train.cover_spacing 2" in caplog.text


def test_an_image_scoring_of_its_own_scores_images_and_leaves_the_maps(tmp_path, mvtec_root, caplog):
    from intra.checkpoint import save_checkpoint
    from intra.config import scoring
    from intra.inference.calibration import difference_statistics

    cfg = tiny_config()
    cfg.model.image_size = 64
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    assert detector.cfg.score.image_scoring == "" and detector.image_score_config() is None
    images = torch.rand(3, 3, 64, 64)
    maps, scores = detector.predict(images)
    torch.testing.assert_close(scores, maps.flatten(1).amax(dim=1))  # the paper: the map's maximum

    split = rescore(detector, {"score.image_scoring": "fine-z"}, mvtec_root)
    split_maps, split_scores = split.predict(images)
    torch.testing.assert_close(split_maps, maps)  # the anomaly map keeps its scoring and statistics
    # The image score is the maximum of a fine-z map with fine-z's own training statistics.
    fine_cfg = copy.deepcopy(detector.cfg)
    fine_cfg.score = scoring(detector.cfg.score, "fine-z")
    train, _ = training_split(mvtec_root, fine_cfg)
    [(mean, std)] = difference_statistics(Detector(detector.model, fine_cfg), [train])
    torch.testing.assert_close(split.image_mean_map, mean)
    fine = Detector(detector.model, fine_cfg, mean, std_map=std)
    torch.testing.assert_close(split_scores, fine.predict(images)[1])
    assert not torch.allclose(split_scores, scores)
    assert split.stats["image_threshold"] != pytest.approx(detector.stats["image_threshold"], rel=1e-3)
    assert split.stats["pixel_threshold"] == pytest.approx(detector.stats["pixel_threshold"], rel=1e-6)

    save_checkpoint(tmp_path / "run", split.model, split.cfg, split.tensors(), split.stats)
    with caplog.at_level(logging.WARNING):
        loaded = Detector.load(tmp_path / "run", device="cpu")
    torch.testing.assert_close(loaded.predict(images)[1], split_scores)
    assert "no image_mean_map" not in caplog.text
    # A checkpoint without the image scoring's statistics (a hand-edited run) is loaded with a warning.
    save_checkpoint(tmp_path / "bare", split.model, split.cfg, {"mean_map": split.mean_map}, split.stats)
    with caplog.at_level(logging.WARNING):
        Detector.load(tmp_path / "bare", device="cpu")
    assert "has no image_mean_map for its scoring" in caplog.text
    with pytest.raises(IntraError, match="score.image_scoring must be one of '', paper"):
        rescore(detector, {"score.image_scoring": "coarse"}, mvtec_root)


def test_the_gumbel_tail_is_the_larger_of_the_empirical_quantile_and_a_fit_by_moments():
    scores = np.array([0.8, 1.1, 1.3, 1.2, 2.9, 1.0, 0.9, 1.4])
    empirical = calibration.image_threshold(scores, 0.99, "empirical")
    assert empirical == pytest.approx(np.quantile(scores, 0.99))
    # Gumbel by moments, written out: scale = std * sqrt(6) / pi, location = mean - Euler's gamma * scale,
    # quantile q at location - scale * ln(-ln q).
    scale = scores.std() * np.sqrt(6) / np.pi
    location = scores.mean() - np.euler_gamma * scale
    fitted = location - scale * np.log(-np.log(0.99))
    assert calibration.image_threshold(scores, 0.99, "gumbel") == pytest.approx(max(empirical, fitted))
    assert calibration.image_threshold(scores, 0.5, "gumbel") == pytest.approx(
        max(np.median(scores), location - scale * np.log(-np.log(0.5)))
    )
    assert calibration.image_threshold(np.ones(5), 0.99) == 1.0  # no spread: nothing to fit
    assert calibration.image_threshold(np.array([3.0]), 0.99) == 3.0
    with pytest.raises(IntraError, match="score.image_threshold_tail must be one of empirical, gumbel"):
        apply_overrides(tiny_config(), {"score.image_threshold_tail": "normal"})


def test_the_log_gumbel_tail_fits_the_logarithms_and_auto_takes_the_likelier_fit():
    scores = np.array([0.8, 1.1, 1.3, 1.2, 2.9, 1.0, 0.9, 1.4])
    logs = np.log(scores)
    scale = logs.std() * np.sqrt(6) / np.pi
    location = logs.mean() - np.euler_gamma * scale
    fitted = np.exp(location - scale * np.log(-np.log(0.99)))
    empirical = np.quantile(scores, 0.99)
    assert calibration.image_threshold(scores, 0.99, "log-gumbel") == pytest.approx(max(empirical, fitted))
    # The likelier fit, by the scores' own density: a long tail (one score far out) goes to the logarithms,
    # scores spread like a Gumbel's stay linear, and scores at or below zero (z-scored maps) have no logarithm.
    rng = np.random.default_rng(0)
    long_tail = np.exp(rng.gumbel(0.0, 1.0, 200))
    linear = rng.gumbel(10.0, 1.0, 200)
    assert calibration.image_threshold_tail(long_tail, "auto") == "log-gumbel"
    assert calibration.image_threshold_tail(linear, "auto") == "gumbel"
    assert calibration.image_threshold_tail(linear - 10.0, "auto") == "gumbel"
    assert calibration.image_threshold_tail(linear - 10.0, "log-gumbel") == "gumbel"
    assert calibration.image_threshold(long_tail, 0.99, "auto") == calibration.image_threshold(
        long_tail, 0.99, "log-gumbel"
    )
    assert calibration.image_threshold(linear, 0.99, "auto") == calibration.image_threshold(linear, 0.99, "gumbel")


def test_from_few_normal_images_with_a_long_tail_auto_keeps_the_promise_better_than_gumbel():
    """Scores whose logarithm is a Gumbel's (a long tail, as the synthetic objects' good images give):
    from 8 of them a linear Gumbel fit is exceeded several times as often as promised, auto's much less."""
    rng = np.random.default_rng(0)
    false_alarms = {"gumbel": [], "auto": []}
    for _ in range(300):
        val, new = np.exp(rng.gumbel(0.0, 1.0, 8)), np.exp(rng.gumbel(0.0, 1.0, 200))
        for tail in false_alarms:
            false_alarms[tail].append(np.mean(new >= calibration.image_threshold(val, 0.99, tail)))
    assert np.mean(false_alarms["gumbel"]) > 0.05
    assert np.mean(false_alarms["auto"]) < np.mean(false_alarms["gumbel"]) / 1.4


def test_from_few_normal_images_the_gumbel_tail_keeps_the_quantiles_promise():
    """Image scores are maxima of maps. From 8 normal images the empirical 0.99 quantile is about their
    maximum, which 1 normal image in 9 exceeds; the Gumbel fit's is exceeded a few times in 100 (a
    fit to 8 scores underestimates the spread a little)."""
    rng = np.random.default_rng(0)
    false_alarms = {"empirical": [], "gumbel": []}
    for _ in range(300):
        val = rng.gamma(4, 0.01, (8, 400)).max(axis=1)  # 8 images' scores: each the maximum of 400 pixels
        new = rng.gamma(4, 0.01, (200, 400)).max(axis=1)
        for tail in false_alarms:
            false_alarms[tail].append(np.mean(new >= calibration.image_threshold(val, 0.99, tail)))
    assert np.mean(false_alarms["empirical"]) > 0.08
    assert np.mean(false_alarms["gumbel"]) < min(0.05, np.mean(false_alarms["empirical"]) / 2.5)


def test_a_map_and_an_image_score_sharing_their_statistics_are_saved_and_loaded(tmp_path, mvtec_root):
    """The map (raw) and the image score (z-scored) chosen on one difference map share its training
    statistics: one tensor under two names, which safetensors alone refuses to write."""
    from intra.checkpoint import save_checkpoint

    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.score = scoring(cfg.score, "fine-both-raw")
    detector = fit(cfg, mvtec_root, tmp_path / "fit").detector
    mean, std = detector.mean_map, detector.std_map
    both = choice.with_scoring(detector.cfg, "fine-both-raw", "fine-both-z")
    shared = detector.like(both, mean, std, dict(detector.stats), (mean, std))
    assert shared.image_mean_map is shared.mean_map
    save_checkpoint(tmp_path / "run", shared.model, shared.cfg, shared.tensors(), shared.stats)
    loaded = Detector.load(tmp_path / "run", device="cpu")
    torch.testing.assert_close(loaded.image_mean_map, mean)
    torch.testing.assert_close(loaded.image_std_map, std)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.predict(images)[1], shared.predict(images)[1])


def test_rescoring_with_choose_auto_chooses_again(tmp_path, mvtec_root):
    cfg = tiny_config()
    cfg.model.image_size = 64
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    assert "scoring_choice" not in detector.stats  # tiny_config scores as configured
    with pytest.raises(IntraError, match="choosing the scoring again needs the training data"):
        rescore(detector, {"score.choose": "auto"}, None)
    chosen = rescore(detector, {"score.choose": "auto"}, mvtec_root)
    choice = chosen.stats["scoring_choice"]
    assert (
        chosen.cfg.score.choose == "auto" and chosen.cfg.score.mean_filter == SCORINGS[choice["chosen"]]["mean_filter"]
    )
    # Scored by hand afterwards: the record of the choice goes with the scoring it chose.
    assert "scoring_choice" not in rescore(chosen, {"score.mean_filter": 3}, mvtec_root).stats


@pytest.mark.parametrize("count, wanted", [(209, 100), (10, 3), (5, 5), (5, 9)])
def test_statistics_subset_takes_exactly_the_asked_number_evenly(count, wanted):
    cfg = tiny_config()
    cfg.score.mean_map_images = wanted
    chosen = statistics_subset(torch.arange(count), cfg)
    assert len(chosen) == min(count, wanted) and chosen[0] == 0 and chosen[-1] == count - 1
    assert len(set(chosen.tolist())) == len(chosen)


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


def test_texture_statistics_cover_a_test_image_larger_than_every_training_image():
    # Border bins count distances up to half a window and a patch (8 px here): training maps of 12 px
    # reach 5. A 40 px test map's interior was scored against a mean and std of 0 (z-scores in the 1e4s).
    from intra.core.anomaly_map import expand_statistic, statistics_depth
    from intra.inference.calibration import Moments

    cfg = tiny_config()
    cfg.data.kind = "texture"
    depth = statistics_depth(cfg.model)
    moments = Moments(cfg)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        moments.add(0.5 + 0.1 * torch.rand(12, 12, generator=generator))
    mean, std = moments.result()
    big_mean, big_std = (expand_statistic(stat, (40, 40), "texture", depth) for stat in (mean, std))
    assert float(big_mean.min()) > 0.4 and float(big_std.min()) > 0.01
    # The centre of the large map takes the deepest bin the training maps reached (5 px from each border).
    assert float(big_mean[20, 20]) == pytest.approx(float(mean[5, 5]))


def test_choosing_the_scoring_reconstructs_each_image_once_and_calibrates_like_that_scoring_alone(monkeypatch):
    """The choice's reconstructions of the training and validation images are the ones the statistics and
    the thresholds then use: no image is reconstructed twice, and the result is a plain calibration's."""
    cfg = tiny_config()
    cfg.score.choose = "auto"
    generator = torch.Generator().manual_seed(0)
    train, val = torch.rand(6, 3, 32, 32, generator=generator), torch.rand(4, 3, 32, 32, generator=generator)
    model = lively_model(cfg)
    reconstructed, real = [], Detector.reconstruct
    monkeypatch.setattr(
        Detector, "reconstruct", lambda self, images: reconstructed.append(len(images)) or real(self, images)
    )
    passes, real_statistics = [], calibration.pair_statistics
    monkeypatch.setattr(calibration, "pair_statistics", lambda *args: passes.append(args[2]) or real_statistics(*args))
    chosen = calibrate(Detector(model, cfg), train, val)
    pasted = len(val) * len(KINDS)
    assert sum(reconstructed) == len(train) + len(val) + pasted
    assert passes == []  # the chosen scorings' training statistics are the choice's, not computed again
    plain_cfg = copy.deepcopy(chosen.cfg)
    plain_cfg.score.choose = "off"
    reconstructed.clear()
    plain = calibrate(Detector(model, plain_cfg), train, val)
    assert sum(reconstructed) == len(train) + len(val) and len(passes) == 1
    torch.testing.assert_close(chosen.mean_map, plain.mean_map)
    torch.testing.assert_close(chosen.image_mean_map, plain.image_mean_map)
    for key in ("image_threshold", "pixel_threshold", "overlay_vmax"):
        assert chosen.stats[key] == pytest.approx(plain.stats[key], rel=1e-6)

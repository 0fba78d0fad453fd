"""Choosing the scoring on synthetic defects pasted into normal images (score.choose = auto)."""

import numpy as np
import pytest
import torch

from intra.config import IMAGE_SCORINGS, MAP_SCORINGS, SCORINGS, Config
from intra.data.defects import KINDS, paste_defect, paste_defects
from intra.inference import choice
from intra.training.fit import fit

from conftest import tiny_config


def test_pasted_defects_change_their_mask_and_nothing_else():
    torch.manual_seed(0)
    images = [torch.rand(3, 40, 48) * 0.5 + 0.25, torch.rand(3, 56, 40) * 0.5 + 0.25]
    defective, masks = paste_defects(images, torch.Generator().manual_seed(1))
    assert len(defective) == len(masks) == len(images) * len(KINDS)
    for i, (out, mask) in enumerate(zip(defective, masks)):
        original = images[i // len(KINDS)]
        assert out.shape == original.shape and mask.shape == original.shape[-2:] and mask.any()
        changed = (out - original).abs().amax(dim=0)
        assert float(changed[~mask].max()) <= 0.02 * float(original.max() - original.min()) + 1e-6
    again, _ = paste_defects(images, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(defective, again))  # seeded


def test_a_pasted_stain_fades_out_with_no_edge_and_stays_faint():
    """Real stains have no edge for the gradient similarity to catch; a stain pasted with a sharp one
    would make the choice prefer scorings that miss them."""
    image = torch.full((1, 96, 96), 0.5) + 0.1 * torch.rand(1, 96, 96, generator=torch.Generator().manual_seed(0))
    spread = float(image.std())
    for seed in range(5):
        out, mask = paste_defect(image, image, "stain", torch.Generator().manual_seed(seed))
        change = (out - image)[0]
        depth = float(change.abs().max())
        steepest = max(float(change.diff(dim=0).abs().max()), float(change.diff(dim=1).abs().max()))
        assert 0.3 * spread * 0.99 <= depth <= 0.8 * spread * 1.01
        assert steepest < 0.4 * depth  # the old 1-pixel edge stepped by about the whole depth
        assert mask.sum() > 50


def test_one_defect_each_takes_the_kinds_in_turn_and_matches_pasting_that_kind():
    torch.manual_seed(0)
    images = [torch.rand(3, 48, 48) * 0.5 + 0.25 for _ in range(5)]
    defective, masks = paste_defects(images, torch.Generator().manual_seed(3), one_each=True)
    assert len(defective) == len(masks) == len(images)
    generator = torch.Generator().manual_seed(3)
    for i, (out, mask) in enumerate(zip(defective, masks)):
        assert mask.any() and not torch.equal(out, images[i])
        expected, expected_mask = paste_defect(images[i], images[(i + 1) % 5], KINDS[i % len(KINDS)], generator)
        if expected_mask.any():  # the same draws: the same defect (an empty draw is drawn again once)
            assert torch.equal(out, expected) and torch.equal(mask, expected_mask)


def test_the_map_is_chosen_among_the_raw_scorings_and_the_image_score_among_the_signed_ones(monkeypatch):
    """A normalised scoring that wins on the pasted defects may score images, but not draw the map; a
    scoring on 1 - GMS alone is no candidate at all."""
    assert set(MAP_SCORINGS) == {"paper-both-raw", "middle-both-raw", "fine-both-raw"}
    assert all(not SCORINGS[name]["normalize"] and SCORINGS[name]["difference"] == "both" for name in MAP_SCORINGS)
    assert set(IMAGE_SCORINGS) == {name for name in SCORINGS if "-both" in name} and len(IMAGE_SCORINGS) == 9
    assert set(MAP_SCORINGS) < set(IMAGE_SCORINGS)
    results = iter(range(len(IMAGE_SCORINGS)))  # each candidate's rank: the last listed (fine-both-raw) best

    def ranked(normal, defective, masks, pixels=True):
        rank = next(results)
        # paper-both-z best at the map
        return {"map": 1.0 if rank == 1 else rank / 100, "image": rank / 100, "image_margin": 0.0}

    monkeypatch.setattr(choice, "synthetic_metrics", ranked)
    monkeypatch.setattr(choice, "differences", lambda cfg, pairs: [])
    names = list(IMAGE_SCORINGS)
    assert names[1] == "paper-both-z"
    chosen = choice.choose(Config(), lambda cfg, diffs: (None, None), [], [], [], [])
    best_map, best_image, report = chosen.map, chosen.image, chosen.report
    assert set(report) == set(IMAGE_SCORINGS) and report["paper-both-z"]["map"] == 1.0
    assert best_map == max(MAP_SCORINGS, key=names.index) == "fine-both-raw"  # the best raw one, not paper-both-z
    assert best_image == names[-1]


def test_wider_candidates_are_for_experiments_and_must_hold_the_map_candidates(monkeypatch):
    monkeypatch.setattr(choice, "synthetic_metrics", lambda *a, **k: {"map": 0.5, "image": 0.5, "image_margin": 0.0})
    monkeypatch.setattr(choice, "differences", lambda cfg, pairs: [])
    every = choice.choose(Config(), lambda cfg, diffs: (None, None), [], [], [], [], candidates=tuple(SCORINGS))
    assert set(every.report) == set(SCORINGS)
    with pytest.raises(ValueError, match="map candidate"):
        choice.choose(Config(), lambda cfg, diffs: (None, None), [], [], [], [], candidates=("paper", "fine-z"))


def test_tied_image_aurocs_go_to_the_wider_margin(monkeypatch):
    """Every pasted defect found by several scorings (image AUROC 1.0): the one that clears the normal images most wins."""
    margins = iter([0.5, 3.0, 1.0, 2.0, 4.0, 0.0, 9.0, 8.0, 7.0])  # in IMAGE_SCORINGS order
    names = list(IMAGE_SCORINGS)

    def tied(normal, defective, masks, pixels=True):
        margin = next(margins)
        perfect = margin in (3.0, 2.0, 4.0)  # paper-both-z, middle-both, middle-both-z find every pasted defect
        return {"map": 0.5, "image": 1.0 if perfect else 0.9, "image_margin": margin}

    monkeypatch.setattr(choice, "synthetic_metrics", tied)
    monkeypatch.setattr(choice, "differences", lambda cfg, pairs: [])
    best_image = choice.choose(Config(), lambda cfg, diffs: (None, None), [], [], [], []).image
    assert best_image == "middle-both-z" == names[4]  # not fine-both (margin 9.0, image AUROC 0.9)


def test_the_image_margin_is_the_median_defect_over_the_highest_normal_in_normal_stds():
    normal, defective = np.array([1.0, 2.0, 3.0]), np.array([2.5, 7.0, 100.0])
    assert choice.image_margin(normal, defective) == pytest.approx((7.0 - 3.0) / np.std(normal))
    metrics = choice.synthetic_metrics(
        [torch.full((4, 4), v) for v in normal],
        [torch.full((4, 4), v) for v in defective],
        [torch.ones(4, 4, dtype=torch.bool)] * 3,
    )
    assert metrics["image_margin"] == pytest.approx((7.0 - 3.0) / np.std(normal))


def test_fit_chooses_a_scoring_for_the_map_and_one_for_the_image_score_and_saves_them(tmp_path, mvtec_root):
    from intra.inference.detector import Detector

    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.score.choose = "auto"
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    choice = detector.stats["scoring_choice"]
    candidates = choice["candidates"]
    assert set(candidates) == set(IMAGE_SCORINGS)
    assert choice["chosen"] in MAP_SCORINGS
    assert candidates[choice["chosen"]]["map"] == max(candidates[name]["map"] for name in MAP_SCORINGS)
    assert candidates[choice["image_chosen"]]["image"] == max(c["image"] for c in candidates.values())
    tied = [c["image_margin"] for c in candidates.values() if c["image"] == candidates[choice["image_chosen"]]["image"]]
    assert candidates[choice["image_chosen"]]["image_margin"] == max(tied)
    for name, result in candidates.items():  # pixel metrics, the slow part, for the map candidates alone
        if name in MAP_SCORINGS:
            assert result["map"] == (result["pixel_auroc"] + result["aupro"]) / 2
        else:
            assert result["map"] is result["pixel_auroc"] is result["aupro"] is None
    loaded = Detector.load(tmp_path / "run", device="cpu")
    for key, value in SCORINGS[choice["chosen"]].items():
        assert getattr(loaded.cfg.score, key) == value  # the run's map scores with what was chosen
    same = choice["image_chosen"] == choice["chosen"]
    assert loaded.cfg.score.image_scoring == ("" if same else choice["image_chosen"])
    assert (loaded.image_mean_map is None) == same  # the image scoring's own statistics are saved


def test_scorings_that_differ_only_in_normalisation_share_their_difference_maps(monkeypatch):
    """Each difference map is computed once per filter set and difference, and every scoring's metrics
    are those of computing it alone."""
    from intra.inference.calibration import statistics_of

    generator = torch.Generator().manual_seed(0)
    pair = lambda: (torch.rand(3, 32, 32, generator=generator), torch.rand(3, 32, 32, generator=generator))  # noqa: E731
    train, normal, defective = [pair() for _ in range(4)], [pair() for _ in range(4)], [pair() for _ in range(4)]
    masks = [torch.rand(32, 32, generator=generator) > 0.8 for _ in range(4)]
    cfg = tiny_config()
    real, calls = choice.differences, []
    monkeypatch.setattr(choice, "differences", lambda c, pairs: calls.append(c.score) or real(c, pairs))
    chosen = choice.choose(cfg, statistics_of, train, normal, defective, masks)
    report = chosen.report
    settings = {choice._difference_settings(score) for score in calls}
    assert len(calls) == 3 * len(settings) == 3 * len(IMAGE_SCORINGS) // 3  # train, normal, defective pairs, once each
    for name in ("paper-both", "middle-both-z", "fine-both", "middle-both-raw"):
        candidate = choice.with_scoring(cfg, name)
        mean, std = statistics_of(candidate, real(candidate, train))
        alone = choice.synthetic_metrics(
            choice._normalized(candidate, real(candidate, normal), mean, std),
            choice._normalized(candidate, real(candidate, defective), mean, std),
            masks,
            pixels=name in MAP_SCORINGS,
        )
        assert report[name] == alone
        torch.testing.assert_close(chosen.statistics[name], (mean, std))  # what calibration keeps for the chosen

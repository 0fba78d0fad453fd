"""Beyond the paper: training-efficiency options, several covered patches per pass, rescoring."""

import json

import pytest
import torch

from intra.config import TrainConfig, apply_overrides
from intra.errors import IntraError
from intra.inference import Detector
from intra.model import InpaintingTransformer
from intra.multicover import inference_plan, lattice_masks
from intra.optim import WeightEMA, lr_factor
from intra.rescore import with_score_overrides
from intra.sampling import WindowSampler
from intra.train import fit
from intra.windows import patchify, unpatchify

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


def test_training_options_are_checked():
    with pytest.raises(IntraError, match="train.schedule"):
        apply_overrides(tiny_config(), {"train.schedule": "step"})
    with pytest.raises(IntraError, match="train.ema"):
        apply_overrides(tiny_config(), {"train.ema": 1.5})
    with pytest.raises(IntraError, match="train.cover_spacing"):
        apply_overrides(tiny_config(), {"train.cover_spacing": 2})  # needs the covered-token head
    with pytest.raises(IntraError, match="score.cover_spacing"):
        apply_overrides(tiny_config(head="covered"), {"score.cover_spacing": 1})


@pytest.mark.parametrize("grid, window, spacing", [(16, 7, 2), (16, 7, 3), (8, 3, 2), (7, 7, 3), (20, 5, 4)])
def test_multicover_plan_reads_every_patch_once(grid, window, spacing):
    tokens, covered, read = inference_plan(grid, window, spacing)
    assert tokens.shape == covered.shape == read.shape == (len(tokens), window * window)
    assert (read <= covered).all()
    assert torch.equal(torch.bincount(tokens[read], minlength=grid * grid), torch.ones(grid * grid, dtype=torch.long))
    assert len(tokens) < grid * grid or grid == window  # fewer passes than one per patch


def test_lattice_mask_covers_every_spacing_th_patch():
    mask = lattice_masks(torch.tensor([1]), torch.tensor([0]), 5, 2).view(5, 5)
    assert mask.nonzero().tolist() == [[1, 0], [1, 2], [1, 4], [3, 0], [3, 2], [3, 4]]


def test_one_covered_token_matches_the_single_patch_forward():
    cfg = tiny_config(head="covered")
    model = InpaintingTransformer(cfg.model).eval()
    batch = WindowSampler(torch.rand(2, 3, 32, 32), cfg, augment=False).sample(5, torch.Generator().manual_seed(0))
    mask = torch.nn.functional.one_hot(batch.covered, 9).bool()
    with torch.no_grad():
        single = model(batch.patches, batch.covered, batch.positions)
        several = model.forward_multi(batch.patches, mask, batch.positions)[mask]
    torch.testing.assert_close(single, several)


def test_multicover_sampler_targets_are_the_covered_patches():
    cfg = tiny_config(head="covered")
    cfg.train.cover_spacing = 2
    batch = WindowSampler(torch.rand(2, 3, 32, 32), cfg, augment=False).sample(8, torch.Generator().manual_seed(3))
    assert batch.covered.dtype == torch.bool and batch.covered.shape == (8, 9)
    assert batch.target.shape == (int(batch.covered.sum()), 3, 4, 4)
    torch.testing.assert_close(batch.patches[batch.covered].view_as(batch.target), batch.target)


def test_fit_with_every_option_and_several_patches_per_pass(tmp_path, mvtec_root):
    cfg = tiny_config(head="covered")
    cfg.model.image_size = 64
    overrides = {"train.cover_spacing": 2, "score.cover_spacing": 3, "train.optimizer": "adamw", "train.weight_decay": 0.05, "train.schedule": "cosine",
                 "train.warmup": 0.2, "train.grad_clip": 1.0, "train.ema": 0.9}
    result = fit(apply_overrides(cfg, overrides), mvtec_root, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[1]["train_lr"] < log[0]["train_lr"] or log[0]["train_lr"] < cfg.train.lr  # scheduled
    images = torch.rand(2, 3, 64, 64)
    maps, scores = result.detector.predict(images)
    again = Detector.load(tmp_path / "run", device="cpu").predict(images)
    assert torch.equal(maps, again[0]) and maps.shape == (2, 64, 64)


def test_multicover_reconstruction_matches_a_pass_by_pass_loop():
    cfg = tiny_config(head="covered")
    cfg.score.cover_spacing = 2
    model = InpaintingTransformer(cfg.model).eval()
    images = torch.rand(2, 3, 32, 32)
    tokens, covered, read = inference_plan(cfg.model.grid, cfg.model.window, 2)
    patches = patchify(images, 4)  # (2, 64, 48)
    expected = torch.zeros_like(patches)
    with torch.no_grad():
        for b in range(2):
            for w in range(len(tokens)):
                out = model.forward_multi(patches[b, tokens[w]][None], covered[w][None], tokens[w][None])[0]
                expected[b, tokens[w][read[w]]] = out[read[w]]
    cfg.score.chunk_windows = 7  # chunks that straddle images
    got = Detector(model, cfg).reconstruct(images)
    torch.testing.assert_close(got, unpatchify(expected, 3, (8, 8)))


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


def test_evaluation_without_masks_reports_image_metrics_only(tmp_path, mvtec_root):
    import shutil

    from intra.evaluate import evaluate

    data = tmp_path / "labels-only"
    shutil.copytree(mvtec_root, data, ignore=shutil.ignore_patterns("ground_truth"))
    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.train.max_epochs = 1
    detector = fit(cfg, data, tmp_path / "run").detector
    metrics = evaluate(detector, data, tmp_path / "eval", heatmaps=False)
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None and 0 <= metrics["image_auroc"] <= 1
    assert set(metrics["per_kind"]) == {"scratch", "spot", "smudge"}


def test_zscore_divides_by_the_training_std_and_survives_save_load(tmp_path, mvtec_root):
    from intra.anomaly_map import normalize

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
    expected = (detector.difference_maps(images) - detector.mean_map) / detector.std_map.clamp_min(0.01 * float(detector.std_map.mean()))
    torch.testing.assert_close(detector.predict(images)[0], expected)


def test_standardize_gives_every_image_the_same_mean_and_contrast(tmp_path, mvtec_root):
    from intra.data import standardize

    images = torch.rand(3, 3, 16, 16) * torch.tensor([0.2, 1.0, 3.0])[:, None, None, None]
    out = standardize(images)
    torch.testing.assert_close(out.flatten(1).mean(1), torch.full((3,), 0.5))
    torch.testing.assert_close(out.flatten(1).std(1), torch.full((3,), 0.1))
    torch.testing.assert_close(standardize(out), out)  # idempotent

    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.train.max_epochs = 1
    cfg.data.standardize = True
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(detector.predict(image * 0.5 + 0.2)[0], detector.predict(image)[0], atol=1e-4, rtol=1e-3)

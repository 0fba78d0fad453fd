"""fit(): a tiny model learns, a run folder is written, and training is reproducible."""

import json
import logging
import statistics

import pytest
import torch

from intra.config import apply_overrides
from intra.core.losses import inpainting_loss
from intra.core.model import InpaintingTransformer
from intra.data.sampling import WindowSampler
from intra.inference.detector import Detector
from intra.training.fit import INPAINTS_BELOW, fit, inpainting_warning

from conftest import tiny_config


def test_fit_with_every_option_and_several_patches_per_pass(tmp_path, mvtec_root):
    cfg = tiny_config(head="covered")
    cfg.model.image_size = 64
    overrides = {
        "train.cover_spacing": 2,
        "score.cover_spacing": 3,
        "train.optimizer": "adamw",
        "train.weight_decay": 0.05,
        "train.schedule": "cosine",
        "train.warmup": 0.2,
        "train.grad_clip": 1.0,
        "train.ema": 0.9,
    }
    result = fit(apply_overrides(cfg, overrides), mvtec_root, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[1]["train_lr"] < log[0]["train_lr"] or log[0]["train_lr"] < cfg.train.lr  # scheduled
    images = torch.rand(2, 3, 64, 64)
    maps, scores = result.detector.predict(images)
    again = Detector.load(tmp_path / "run", device="cpu").predict(images)
    assert torch.equal(maps, again[0]) and maps.shape == (2, 64, 64)


def test_tiny_model_overfits_one_image():
    cfg = tiny_config()
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    batch = WindowSampler(image, cfg, augment=False).sample(32, torch.Generator().manual_seed(0))
    model = InpaintingTransformer(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(500):
        pred = model(batch.patches, batch.covered, batch.positions).view_as(batch.target)
        loss, _ = inpainting_loss(pred, batch.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10


def test_fit_writes_a_run_and_save_load_gives_identical_scores(tmp_path, mvtec_root, tiny_cfg, caplog):
    tiny_cfg.model.image_size = 64
    with caplog.at_level(logging.WARNING, logger="intra"):
        result = fit(tiny_cfg, mvtec_root, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "train_log.jsonl", "model.safetensors", "model.json"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_loss" in r for r in log)
    assert json.loads((run / "config.json").read_text())["model"]["image_size"] == 64
    assert result.stats["train_images"] + result.stats["val_images"] == 12 and result.stats["val_images"] == 1
    # The run records where it trained and in which dtype, so its timings can be read later.
    trained_on = json.loads((run / "model.json").read_text())["stats"]["trained_on"]
    assert trained_on["dtype"] == "fp32" and trained_on["device"] == "cpu"  # the config's dtype, not "auto"
    assert trained_on["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # The kept epoch's inpainting against the trivial fills, and a warning exactly when it is not clearly better.
    kept = next(r for r in log if r["epoch"] == result.stats["best_epoch"])
    assert result.stats["kept_inpaint_ratio"] == kept["val_inpaint_ratio"]
    warned = "it has not learned to inpaint clearly better than smoothing" in caplog.text
    assert warned == (kept["val_inpaint_ratio"] >= INPAINTS_BELOW)

    images = torch.rand(3, 3, 64, 64)
    maps, scores = result.detector.predict(images)
    loaded = Detector.load(run, device="cpu")
    maps2, scores2 = loaded.predict(images)
    assert torch.equal(scores, scores2) and torch.equal(maps, maps2)
    assert maps.shape == (3, 64, 64) and (maps >= 0).all()


def test_training_is_reproducible_with_a_seed(tmp_path, mvtec_root, tiny_cfg):
    tiny_cfg.model.image_size = 64
    tiny_cfg.train.max_epochs = 1
    a = fit(tiny_cfg, mvtec_root, tmp_path / "a").detector.model.state_dict()
    b = fit(tiny_cfg, mvtec_root, tmp_path / "b").detector.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_windows_are_covered_as_training_covers_them():
    from intra.training.trainer import _validation_batches

    cfg = tiny_config(head="covered")
    cfg.train.cover_spacing = 2
    batches = _validation_batches(torch.rand(2, 3, 32, 32), cfg)
    covered = torch.cat([b.covered for b in batches])
    assert set(covered.sum(1).tolist()) == {1, 2, 4}  # the four lattice phases of a 3 x 3 window, not one patch
    again = torch.cat([b.covered for b in _validation_batches(torch.rand(2, 3, 32, 32), cfg)])
    assert torch.equal(covered, again)  # fixed, seeded


@pytest.mark.parametrize("select, entry", [("inpaint", "val_inpaint"), ("loss", "val_loss")])
def test_the_kept_epoch_follows_the_selection_metric(tmp_path, mvtec_root, select, entry):
    cfg = tiny_config(head="covered")
    cfg.model.image_size = 64
    cfg.train.cover_spacing = cfg.score.cover_spacing = 2
    cfg.train.max_epochs, cfg.train.patience, cfg.train.select = 4, 10, select
    stats = fit(cfg, mvtec_root, tmp_path / "run").stats
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    values = [record[entry] for record in log]
    assert stats["selected_by"] == entry and stats["best_epoch"] == 1 + values.index(min(values))
    # The network learns: the kept epoch is not the first, and it fills patches better than the ring mean does.
    assert stats["best_epoch"] > 1
    kept = log[stats["best_epoch"] - 1]
    assert kept["val_inpaint"] < kept["val_fills"]["ring"] and kept["val_inpaint_ratio"] == pytest.approx(
        kept["val_inpaint"] / min(kept["val_fills"]["ring"], kept["val_fills"]["smooth"])
    )


def test_selection_on_pasted_defects_keeps_the_epoch_whose_map_finds_them_best(tmp_path, mvtec_root):
    cfg = tiny_config(head="covered")
    cfg.model.image_size = 64
    cfg.train.cover_spacing = cfg.score.cover_spacing = 2
    cfg.train.max_epochs, cfg.train.patience, cfg.train.select = 3, 10, "defects"
    stats = fit(cfg, mvtec_root, tmp_path / "run").stats
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    gaps = [record["val_defects_gap"] for record in log]
    assert stats["selected_by"] == "val_defects_gap" and stats["best_epoch"] == 1 + gaps.index(min(gaps))
    assert len(set(gaps)) > 1  # it follows the weights
    for record in log:  # the gap is what is left of the mean of pixel AUROC and AUPRO
        found = record["val_defects"]
        assert 0 <= found["image_auroc"] <= 1 and 0 < found["pixel_auroc"] <= 1
        assert record["val_defects_gap"] == pytest.approx(1 - (found["pixel_auroc"] + found["aupro"]) / 2, abs=1e-4)


def test_images_of_several_sizes_train_score_and_evaluate_at_their_own_geometry(tmp_path, mixed_root):
    from intra.data.datasets import training_images
    from intra.data.geometry import Geometry
    from intra.data.images import image_size, load_image
    from intra.evaluation.scoring import evaluate

    cfg = tiny_config(head="covered")
    cfg.model.image_size = 64
    cfg.data.resize = "scale"
    cfg.train.cover_spacing = cfg.score.cover_spacing = 2
    cfg.train.texture_cover_spacing = 3
    cfg.data.texture_image_size = 48  # textures take their own size: the median short side becomes 48 px
    result = fit(cfg, mixed_root, tmp_path / "run")
    detector = result.detector
    assert detector.cfg.data.kind == "texture" and detector.cfg.model.image_size == 48
    short_sides = [min(image_size(p)) for p in training_images(mixed_root)]
    assert detector.cfg.data.scale == pytest.approx(48 / statistics.median(short_sides))
    assert detector.cfg.train.cover_spacing == detector.cfg.score.cover_spacing == 3  # the texture lattice
    depth = (cfg.model.window // 2 + 1) * cfg.model.patch_size
    assert detector.mean_map.shape == (depth + 1, depth + 1)  # statistics by distance to the border
    paths = sorted((mixed_root / "test" / "spot").iterdir())
    geometry = Geometry.of(detector.cfg)
    images = [load_image(p, geometry, detector.cfg.data.color) for p in paths]
    assert images[0].shape != images[1].shape
    maps, scores = detector.predict(images)
    assert [m.shape for m in maps] == [x.shape[-2:] for x in images] and scores.shape == (len(paths),)
    # A list scores each image as it would alone.
    alone = detector.predict(images[0][None])
    torch.testing.assert_close(maps[0], alone[0][0])
    assert geometry.target(*image_size(paths[0])) == tuple(images[0].shape[-2:])
    loaded = Detector.load(tmp_path / "run", device="cpu")
    torch.testing.assert_close(loaded.predict(images)[1], scores)
    metrics = evaluate(loaded, mixed_root).metrics
    assert 0 <= metrics["pixel_auroc"] <= 1 and metrics["inpainting"]["images"] == 4


def test_training_names_images_smaller_than_a_window_at_the_scale(tmp_path, mixed_root, caplog):
    import logging
    import shutil

    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(mixed_root, data)
    Image.new("RGB", (16, 20), (90, 90, 90)).save(data / "train" / "good" / "tiny.png")
    cfg = tiny_config()
    cfg.model.image_size = 32  # the median short side (about 75 px) becomes 32: the tiny image is 7 px at that scale
    cfg.data.resize = "scale"
    cfg.train.max_epochs = 1
    with caplog.at_level(logging.WARNING, logger="intra"):
        fit(cfg, data, tmp_path / "run")
    assert "1 of 13 training images are resized out of the ordinary" in caplog.text
    assert f"(the first: {data / 'train' / 'good' / 'tiny.png'}, enlarged " in caplog.text


def test_per_pixel_statistics_refuse_images_of_several_sizes(tmp_path, mixed_root):
    from intra.errors import IntraError

    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.data.resize, cfg.data.kind = "scale", "object"
    with pytest.raises(IntraError, match="data.kind = object needs every training image at one size"):
        fit(cfg, mixed_root, tmp_path / "run")


def test_dtype_auto_is_resolved_for_the_device_and_written_into_the_run(tmp_path, mvtec_root, tiny_cfg):
    from intra.runtime import native_bf16, resolve_dtype_name

    cpu = torch.device("cpu")
    assert resolve_dtype_name("fp32", cpu) == "fp32" and resolve_dtype_name("bf16", cpu) == "bf16"
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_dtype_name("auto", cpu) == expected
    tiny_cfg.model.image_size = 64
    tiny_cfg.train.max_epochs, tiny_cfg.train.dtype = 1, "auto"
    result = fit(tiny_cfg, mvtec_root, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["dtype"] == expected
    assert result.detector.cfg.train.dtype == expected  # resumes and reruns train the same way


def test_a_kept_network_that_does_not_inpaint_is_named_in_a_warning():
    stats = {"best_epoch": 4, "epochs": 4, "train_seconds": 603.1, "kept_inpaint_ratio": 1.07}
    stats["trained_on"] = {"dtype": "fp32", "native_bf16": False}
    warning = inpainting_warning(stats)
    assert "epoch 4 of 4, 10.1 minutes in fp32 on a CPU without bf16 instructions" in warning
    assert "1.07x the error of the better trivial fill" in warning and "--max-minutes" in warning
    assert inpainting_warning({**stats, "kept_inpaint_ratio": 0.3}) is None
    assert inpainting_warning({**stats, "kept_inpaint_ratio": None}) is None  # no held-out images

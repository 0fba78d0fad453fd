import json

import torch

from intra.inference import Detector
from intra.losses import inpainting_loss
from intra.model import InpaintingTransformer
from intra.sampling import WindowSampler
from intra.train import fit

from conftest import tiny_config


def test_tiny_model_overfits_one_image():
    cfg = tiny_config()
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    batch = WindowSampler(image, cfg, augment=False).sample(32, torch.Generator().manual_seed(0))
    model = InpaintingTransformer(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        pred = model(batch.patches, batch.covered, batch.positions).view_as(batch.target)
        loss, _ = inpainting_loss(pred, batch.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10


def test_sampler_batches_have_consistent_targets():
    cfg = tiny_config()
    images = torch.rand(2, 3, 32, 32)
    batch = WindowSampler(images, cfg, augment=False).sample(16, torch.Generator().manual_seed(1))
    assert batch.patches.shape == (16, 9, 48) and batch.target.shape == (16, 3, 4, 4)
    picked = batch.patches[torch.arange(16), batch.covered].view(16, 3, 4, 4)
    torch.testing.assert_close(picked, batch.target)
    # positions are the windows' global grid indices: a 3 x 3 block of an 8 x 8 grid.
    rows, cols = batch.positions // 8, batch.positions % 8
    assert ((rows.max(1).values - rows.min(1).values) == 2).all() and ((cols.max(1).values - cols.min(1).values) == 2).all()


def test_augmented_windows_stay_in_range():
    for rotation in ("rot90", "any"):
        cfg = tiny_config()
        cfg.train.rotation = rotation
        batch = WindowSampler(torch.rand(2, 3, 32, 32), cfg).sample(16, torch.Generator().manual_seed(2))
        assert batch.patches.shape == (16, 9, 48)
        assert float(batch.patches.min()) >= 0 and float(batch.patches.max()) <= 1


def test_fit_writes_a_run_and_save_load_gives_identical_scores(tmp_path, mvtec_root, tiny_cfg):
    tiny_cfg.model.image_size = 64
    result = fit(tiny_cfg, mvtec_root, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "train_log.jsonl", "model.safetensors", "model.json"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_loss" in r for r in log)
    assert json.loads((run / "config.json").read_text())["model"]["image_size"] == 64
    assert result.stats["train_images"] + result.stats["val_images"] == 12 and result.stats["val_images"] == 1

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

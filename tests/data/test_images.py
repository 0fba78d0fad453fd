"""Reading image files: formats, colour conversion, masks and per-image standardisation."""

import numpy as np
import pytest
import torch
from PIL import Image

from intra.data.images import is_gray, load_image, load_mask, resolve_color
from intra.errors import IntraError
from intra.training.fit import fit

from conftest import tiny_config, write_image


def test_standardize_gives_every_image_the_same_mean_and_contrast(tmp_path, mvtec_root):
    from intra.data.images import standardize

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


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"])
def test_every_supported_format_loads_resized(tmp_path, suffix):
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    path = write_image(tmp_path / f"img{suffix}", rgb)
    x = load_image(path, 32, "rgb")
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_gray_and_rgb_conversions_are_consistent(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    path = write_image(tmp_path / "g.png", gray)
    as_gray, as_rgb = load_image(path, 64, "gray"), load_image(path, 64, "rgb")
    assert as_gray.shape == (1, 64, 64) and as_rgb.shape == (3, 64, 64)
    torch.testing.assert_close(as_rgb[0], as_gray[0])
    torch.testing.assert_close(as_gray[0, 0, :3], torch.tensor([0, 4, 8]) / 255)


def test_sixteen_bit_rgba_and_palette_images(tmp_path):
    deep = write_image(tmp_path / "deep.png", (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    x = load_image(deep, 64, "gray")
    assert float(x.max()) == pytest.approx(4095 * 16 / 65535, rel=1e-4)  # scaled by 65535, not clipped
    rgba = write_image(tmp_path / "a.png", np.full((20, 20, 4), 200, np.uint8))
    assert load_image(rgba, 16, "rgb").shape == (3, 16, 16)
    palette = Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).convert("P", palette=Image.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    torch.testing.assert_close(load_image(tmp_path / "p.png", 16, "gray"), torch.full((1, 16, 16), 90 / 255))


def test_color_detection(tmp_path):
    g = write_image(tmp_path / "g.png", np.full((30, 30), 100, np.uint8))
    c = write_image(tmp_path / "c.png", np.dstack([np.full((30, 30), v, np.uint8) for v in (10, 100, 200)]))
    gray_as_rgb = write_image(tmp_path / "grgb.jpg", np.dstack([np.full((30, 30), 100, np.uint8)] * 3))
    assert is_gray(g) and not is_gray(c) and is_gray(gray_as_rgb)
    assert resolve_color("auto", [g, gray_as_rgb]) == "gray"
    assert resolve_color("auto", [g, c]) == "rgb"
    assert resolve_color("rgb", [g]) == "rgb"


def test_truncated_and_non_image_files_name_the_file(tmp_path):
    good = write_image(tmp_path / "ok.jpg", np.full((64, 64, 3), 128, np.uint8))
    truncated = tmp_path / "broken.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(IntraError, match="broken.jpg"):
        load_image(truncated, 32, "rgb")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(IntraError, match="notes.png"):
        load_image(text, 32, "rgb")


def test_masks_are_binary_and_nearest_resized(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 255
    m = load_mask(write_image(tmp_path / "m.png", mask), 16)
    assert m.dtype == torch.bool and int(m.sum()) == 64

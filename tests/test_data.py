import numpy as np
import pytest
import torch
from PIL import Image

from intra import data
from intra.data import is_gray, load_image, load_mask, resolve_color, training_images
from intra.errors import IntraError


def write(path, array, mode=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **save)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"])
def test_every_supported_format_loads_resized(tmp_path, suffix):
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    path = write(tmp_path / f"img{suffix}", rgb)
    x = load_image(path, 32, "rgb")
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_gray_and_rgb_conversions_are_consistent(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    path = write(tmp_path / "g.png", gray)
    as_gray, as_rgb = load_image(path, 64, "gray"), load_image(path, 64, "rgb")
    assert as_gray.shape == (1, 64, 64) and as_rgb.shape == (3, 64, 64)
    torch.testing.assert_close(as_rgb[0], as_gray[0])
    torch.testing.assert_close(as_gray[0, 0, :3], torch.tensor([0, 4, 8]) / 255)


def test_sixteen_bit_rgba_and_palette_images(tmp_path):
    deep = write(tmp_path / "deep.png", (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    x = load_image(deep, 64, "gray")
    assert float(x.max()) == pytest.approx(4095 * 16 / 65535, rel=1e-4)  # scaled by 65535, not clipped
    rgba = write(tmp_path / "a.png", np.full((20, 20, 4), 200, np.uint8))
    assert load_image(rgba, 16, "rgb").shape == (3, 16, 16)
    palette = Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).convert("P", palette=Image.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    torch.testing.assert_close(load_image(tmp_path / "p.png", 16, "gray"), torch.full((1, 16, 16), 90 / 255))


def test_color_detection(tmp_path):
    g = write(tmp_path / "g.png", np.full((30, 30), 100, np.uint8))
    c = write(tmp_path / "c.png", np.dstack([np.full((30, 30), v, np.uint8) for v in (10, 100, 200)]))
    gray_as_rgb = write(tmp_path / "grgb.jpg", np.dstack([np.full((30, 30), 100, np.uint8)] * 3))
    assert is_gray(g) and not is_gray(c) and is_gray(gray_as_rgb)
    assert resolve_color("auto", [g, gray_as_rgb]) == "gray"
    assert resolve_color("auto", [g, c]) == "rgb"
    assert resolve_color("rgb", [g]) == "rgb"


def test_truncated_and_non_image_files_name_the_file(tmp_path):
    good = write(tmp_path / "ok.jpg", np.full((64, 64, 3), 128, np.uint8))
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
    m = load_mask(write(tmp_path / "m.png", mask), 16)
    assert m.dtype == torch.bool and int(m.sum()) == 64


def test_mvtec_layout_listing(mvtec_root):
    assert len(training_images(mvtec_root)) == 12
    samples = data.test_samples(mvtec_root)
    assert {s.kind for s in samples} == {"good", "scratch", "spot", "smudge"}
    assert all((s.mask_path is None) == (s.kind == "good") for s in samples)
    assert sum(s.label for s in samples) == 6


def test_layout_errors_name_the_problem(tmp_path, mvtec_root):
    with pytest.raises(IntraError, match="not found"):
        training_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntraError, match="no images"):
        training_images(tmp_path / "empty")
    broken = tmp_path / "broken"
    write(broken / "test" / "good" / "000.png", np.zeros((8, 8), np.uint8))
    write(broken / "test" / "dent" / "000.png", np.zeros((8, 8), np.uint8))
    write(broken / "ground_truth" / "dent" / "001_mask.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(IntraError, match="has no mask"):
        data.test_samples(broken)


def test_a_test_set_without_ground_truth_has_image_labels_only(tmp_path):
    for kind in ("good", "dent"):
        write(tmp_path / "test" / kind / "000.png", np.zeros((8, 8), np.uint8))
    samples = data.test_samples(tmp_path)
    assert [(s.kind, s.label, s.mask_path) for s in samples] == [("dent", 1, None), ("good", 0, None)]


def test_plain_folder_of_training_images(tmp_path):
    for i in range(3):
        write(tmp_path / "imgs" / f"{i}.jpg", np.full((20, 20, 3), 50, np.uint8))
    (tmp_path / "imgs" / "readme.txt").write_text("ignored")
    assert [p.name for p in training_images(tmp_path / "imgs")] == ["0.jpg", "1.jpg", "2.jpg"]

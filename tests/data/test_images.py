"""Reading image files: formats, colour conversion, masks and per-image standardisation."""

import math

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


def test_float_images_are_read_as_zero_to_one_and_other_ranges_refused(tmp_path):
    Image.fromarray(np.full((20, 20), 0.25, np.float32), mode="F").save(tmp_path / "unit.tif")
    torch.testing.assert_close(load_image(tmp_path / "unit.tif", 16, "gray"), torch.full((1, 16, 16), 0.25))
    Image.fromarray(np.full((20, 20), 200.0, np.float32), mode="F").save(tmp_path / "counts.tif")
    with pytest.raises(IntraError, match=r"counts.tif holds floating-point values from 200 to 200"):
        load_image(tmp_path / "counts.tif", 16, "gray")  # not clipped to a white image


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


def _png(path, width, height, rows=None):
    """A real 8-bit grayscale PNG written row by row through zlib (a huge blank image stays a few kB)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pack = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    body = b"".join(pack.compress(row) for _ in range(height if rows is None else rows)) + pack.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


def test_images_over_the_pixel_budget_are_refused_before_decoding(tmp_path):
    """Issue 13, case 4: a few-kB PNG of 7072 x 7072 px (just over MAX_PIXELS) and a 30000 x 30000 px
    "decompression bomb" are refused by name from their headers; the largest accepted one loads."""
    import time

    from intra.data.images import MAX_PIXELS, image_size

    side = math.isqrt(MAX_PIXELS) + 1
    big = _png(tmp_path / "big.png", side, side)
    assert big.stat().st_size < 1_000_000
    start = time.perf_counter()
    with pytest.raises(IntraError, match=rf"big.png is {side}x{side} px .* more than the budget of 50,000,000 pixels"):
        load_image(big, 32, "gray")
    assert time.perf_counter() - start < 0.5  # the header only: decoding it would take seconds
    bomb = _png(tmp_path / "bomb.png", 30_000, 30_000, rows=1)  # its header claims 900 M pixels
    with pytest.raises(IntraError, match="bomb.png is too large") as caught:
        load_image(bomb, 32, "gray")
    assert "\n" not in str(caught.value)
    fits = _png(tmp_path / "fits.png", MAX_PIXELS // 5000, 5000)
    assert image_size(fits) == (10_000, 5000) and load_image(fits, 32, "gray").shape == (1, 32, 32)


def test_exif_orientation_is_applied(tmp_path):
    """Issue 13, case 7: a camera JPEG held upright is read upright (and its size is the upright one)."""
    from intra.data.images import image_size

    upright = np.zeros((60, 40), np.uint8)  # 40 wide, 60 high: a bright band at the top
    upright[:10] = 255
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what the sensor stored: turned a quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = write_image(tmp_path / "camera.jpg", stored, exif=exif, quality=95)
    assert Image.open(path).size == (60, 40)
    assert image_size(path) == (40, 60)
    x = load_image(path, 32, "gray")[0]
    assert float(x[:4].mean()) > 0.9 and float(x[-8:].mean()) < 0.1  # the band is at the top


def test_multi_frame_files_are_refused(tmp_path):
    """Issue 13, case 7: a multi-page TIFF or an animated PNG is refused, never reduced to its first frame."""
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=100)
    for name, what in (("pages.tif", "TIFF"), ("anim.png", "PNG")):
        with pytest.raises(IntraError, match=rf"{name} holds 3 frames \(a multi-page or animated {what}\)"):
            load_image(tmp_path / name, 32, "gray")


def test_sixteen_bit_scale_comes_from_the_bit_depth_not_the_pixels(tmp_path):
    """Issue 10: a dark 16-bit image (every pixel <= 255) read in PIL mode "I" is divided by 65535."""
    dark = np.full((32, 32), 200, np.int16)  # a signed 16-bit TIFF: Pillow reads it as mode "I"
    path = tmp_path / "dark16.tif"
    Image.fromarray(dark).save(path)
    assert Image.open(path).mode == "I"
    torch.testing.assert_close(load_image(path, 32, "gray"), torch.full((1, 32, 32), 200 / 65535))
    dark16 = write_image(tmp_path / "dark16.png", np.full((32, 32), 200, np.uint16))
    torch.testing.assert_close(load_image(dark16, 32, "gray"), torch.full((1, 32, 32), 200 / 65535))


def test_load_images_decodes_with_the_configured_threads(tmp_path, monkeypatch):
    """Issue 10: load_images uses the thread count it is given (train.threads), not a fixed 4."""
    import intra.data.images as images

    paths = [write_image(tmp_path / f"{i}.png", np.full((20, 20), i, np.uint8)) for i in range(3)]
    seen = []

    class Pool(images.ThreadPoolExecutor):
        def __init__(self, max_workers):
            seen.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(images, "ThreadPoolExecutor", Pool)
    for threads in (1, 2):
        loaded = images.load_images(paths, 16, "gray", threads=threads)
        assert [tuple(image.shape) for image in loaded] == [(1, 16, 16)] * 3
    assert seen == [1, 2]


def test_no_dead_parameters_in_the_readers(tmp_path):
    """Issue 10: load_image's unused min_size is gone (MIN_SIDE applies), as is datasets.is_mvtec_root."""
    import inspect

    from intra.data import datasets, images

    assert list(inspect.signature(load_image).parameters) == ["path", "size", "color"]
    assert not hasattr(datasets, "is_mvtec_root")
    small = write_image(tmp_path / "small.png", np.zeros((images.MIN_SIDE - 1, 40), np.uint8))
    with pytest.raises(IntraError, match=rf"small.png is 40x{images.MIN_SIDE - 1} px: too small"):
        load_image(small, 32, "gray")

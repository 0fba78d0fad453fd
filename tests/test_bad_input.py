"""Bad input through the real CLI: one clear line naming the file or option, exit 2, nothing half-written.

Decisions documented here and in the README: folders keep only files with an image suffix (a
notes.txt is ignored); a file with an image suffix that cannot be decoded is refused by name.
Unusual but valid images (16-bit, RGBA, CMYK, palette) are converted and used.
"""

import csv
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from intra.data.images import load_image

from conftest import TINY, intra, user_error


def rgb(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_bad_folders_and_files_for_predict(cli_run, tmp_path):
    user_error(intra("predict", "--run", cli_run, tmp_path / "nowhere", check=False), "nowhere")
    (tmp_path / "empty").mkdir()
    user_error(intra("predict", "--run", cli_run, tmp_path / "empty", check=False), "no images", "empty")

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rgb(i)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image, not an image suffix: ignored")
    ok = intra("predict", "--run", cli_run, folder, "--threads", "1")
    assert len(ok.stdout.splitlines()) == 2
    user_error(intra("predict", "--run", cli_run, folder / "notes.txt", check=False), "notes.txt", "not an image")

    (folder / "fake.png").write_text("text with an image suffix")
    out = tmp_path / "out"
    user_error(intra("predict", "--run", cli_run, folder, "--out", out, check=False), "fake.png")
    assert not list(out.rglob(".*.tmp"))  # no half-written file left behind
    (folder / "fake.png").unlink()

    Image.fromarray(rgb(3)).save(folder / "cut.jpg")
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:300])
    user_error(intra("predict", "--run", cli_run, folder / "cut.jpg", check=False), "cut.jpg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "dot.png")
    user_error(intra("predict", "--run", cli_run, folder / "dot.png", check=False), "dot.png", "1x1", "too small")


def test_unusual_image_formats_are_converted_and_scored(cli_run, tmp_path):
    base = rgb(5) // 64 * 64 + 32  # 64 colours: a palette holds them exactly
    gray = base[..., 0]
    files = {
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "rgba.png": Image.fromarray(np.dstack([base, np.full(gray.shape, 128, np.uint8)]), "RGBA"),
        "cmyk.jpg": Image.fromarray(base).convert("CMYK"),
        "palette.png": Image.fromarray(base).quantize(colors=256),
    }
    for name, image in files.items():
        image.save(tmp_path / name, quality=95)
    assert (
        Image.open(tmp_path / "gray16.png").mode.startswith("I;16") and Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    )
    reference = load_image(tmp_path / "rgba.png", 64, "rgb")
    assert np.allclose(load_image(tmp_path / "gray16.png", 64, "gray")[0].numpy(), gray / 255, atol=1e-6)
    assert (reference.numpy() - base.transpose(2, 0, 1) / 255).max() < 1e-6  # alpha dropped, colour kept
    assert (load_image(tmp_path / "cmyk.jpg", 64, "rgb") - reference).abs().mean() < 0.03
    assert (load_image(tmp_path / "palette.png", 64, "rgb") - reference).abs().mean() < 0.03
    result = intra("predict", "--run", cli_run, tmp_path, "--threads", "1")
    assert len(result.stdout.splitlines()) == 4


def make_test_set(root, mask_values=(0, 255)):
    for kind in ("good", "spot"):
        (root / "test" / kind).mkdir(parents=True)
        Image.fromarray(rgb(1)).save(root / "test" / kind / "000.png")
    (root / "ground_truth" / "spot").mkdir(parents=True)
    mask = np.full((64, 64), mask_values[0], np.uint8)
    for i, value in enumerate(mask_values):
        mask[20 + i : 30, 20:30] = value
    Image.fromarray(mask).save(root / "ground_truth" / "spot" / "000_mask.png")
    return root


def test_bad_test_sets_for_evaluate(cli_run, tmp_path):
    grey = make_test_set(tmp_path / "grey", (0, 128, 255))
    user_error(
        intra("evaluate", "--run", cli_run, "--data", grey, "--out", tmp_path / "e1", check=False),
        "000_mask.png",
        "not binary",
    )
    assert not (tmp_path / "e1").exists()
    orphan = make_test_set(tmp_path / "orphan")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(orphan / "ground_truth" / "spot" / "001_mask.png")
    user_error(intra("evaluate", "--run", cli_run, "--data", orphan, check=False), "001_mask.png", "no test image")
    missing = make_test_set(tmp_path / "missing")
    (missing / "ground_truth" / "spot" / "000_mask.png").unlink()
    user_error(intra("evaluate", "--run", cli_run, "--data", missing, check=False), "000.png", "has no mask")
    user_error(intra("evaluate", "--run", cli_run, "--data", tmp_path / "none", check=False), "none")
    # Masks without a defect pixel: for every kind a one-line refusal; for one kind, no pixel metrics for it.
    blank = make_test_set(tmp_path / "blank", (0,))
    user_error(intra("evaluate", "--run", cli_run, "--data", blank, check=False), "every mask in", "is empty")
    partly = make_test_set(tmp_path / "partly")
    (partly / "test" / "stain").mkdir()
    (partly / "ground_truth" / "stain").mkdir()
    Image.fromarray(rgb(2)).save(partly / "test" / "stain" / "000.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(partly / "ground_truth" / "stain" / "000_mask.png")
    result = intra("evaluate", "--run", cli_run, "--data", partly, "--out", tmp_path / "e2", "--threads", "1")
    assert "test/stain: its masks hold no defect pixel" in result.stderr
    rows = {row["kind"]: row for row in csv.DictReader(open(tmp_path / "e2" / "per_kind.csv"))}
    assert rows["stain"]["pixel_auroc"] == "" and rows["spot"]["pixel_auroc"] != ""


def test_unwritable_outputs(cli_run, mvtec_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be (refused even for root, unlike chmod)")
    user_error(
        intra("predict", "--run", cli_run, mvtec_root / "test" / "spot", "--out", blocker / "out", check=False),
        "a-file",
    )
    user_error(
        intra("evaluate", "--run", cli_run, "--data", mvtec_root, "--out", blocker / "eval", check=False), "a-file"
    )
    user_error(intra("train", "--data", mvtec_root, "--out", blocker / "run", *TINY, check=False), "a-file")


def test_full_disk_while_saving_a_checkpoint(mvtec_root, tmp_path):
    """Files may grow to 16 KiB only (RLIMIT_FSIZE): saving the first checkpoint fails as on a full disk."""

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "intra.cli", "train", "--data", str(mvtec_root), "--out", str(run), *TINY]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=small_disk, timeout=300)
    user_error(result, "cannot write", "training_state.safetensors")
    assert not list(run.glob(".*.tmp")) and not (run / "training_state.safetensors").exists()
    assert not (run / "model.json").exists()


def test_nan_loss_stops_naming_epoch_and_batch(mvtec_root, tmp_path):
    result = intra("train", "--data", mvtec_root, "--out", tmp_path / "run", *TINY, "--lr", "1e30", check=False)
    user_error(result, "diverged", "epoch 1", "batch")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_paths_with_spaces_and_non_ascii(mvtec_root, tmp_path):
    data = tmp_path / "données d'essai" / "lot 1 ü"
    data.mkdir(parents=True)
    for i, source in enumerate(sorted((mvtec_root / "train" / "good").glob("*.png"))[:6]):
        (data / f"image {i} é.png").write_bytes(source.read_bytes())
    run = tmp_path / "run ø"
    intra("train", "--data", data, "--out", run, *TINY, "--epochs", "1")
    out = tmp_path / "sortie à"
    result = intra("predict", "--run", run, str(data / "image 0 é.png"), "--out", out, "--threads", "1")
    assert "image 0 é.png" in result.stdout
    assert (out / "overlays" / "image 0 é_png.png").is_file() and (out / "masks" / "image 0 é_png.png").is_file()


@pytest.mark.parametrize(
    "suffix, text",
    [
        (".yaml", "train:\n  max_epochs: 3\n  lr: 0.005\n  bogus: 1\n"),
        (".toml", "[model]\ndim = 32\nbogus = 1\n"),
    ],
)
def test_config_file_with_an_unknown_key(mvtec_root, tmp_path, suffix, text):
    config = tmp_path / f"my config{suffix}"
    config.write_text(text)
    user_error(
        intra("train", "--data", mvtec_root, "--out", tmp_path / "r", "--config", config, *TINY, check=False),
        "bogus",
        config.name,
    )
    assert not (tmp_path / "r").exists()


def test_config_file_then_flags_then_saved(mvtec_root, tmp_path):
    import json

    config = tmp_path / "cfg.yaml"
    config.write_text("train:\n  max_epochs: 5\n  lr: 0.005\nscore:\n  image_threshold_quantile: 0.95\n")
    intra("train", "--data", mvtec_root, "--out", tmp_path / "run", "--config", config, *TINY, "--epochs", "1")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["max_epochs"] == 1 and saved["train"]["lr"] == 0.005  # flag beats file, file beats preset
    assert saved["score"]["image_threshold_quantile"] == 0.95
    used = json.loads((tmp_path / "run" / "model.json").read_text())["config"]
    # The model's config is the one asked for, but for the scoring that score.choose = auto picked.
    assert {k: v for k, v in used.items() if k != "score"} == {k: v for k, v in saved.items() if k != "score"}
    assert used["score"]["image_threshold_quantile"] == 0.95 and used["score"]["choose"] == saved["score"]["choose"]


def test_negative_or_zero_numeric_options(cli_run, mvtec_root, tmp_path):
    spot = mvtec_root / "test" / "spot"
    user_error(
        intra("train", "--data", mvtec_root, "--out", tmp_path / "r", *TINY, "--epochs", "0", check=False),
        "train.max_epochs",
    )
    user_error(
        intra("train", "--data", mvtec_root, "--out", tmp_path / "r", *TINY, "--batch-size", "-4", check=False),
        "train.batch_size",
    )
    user_error(intra("predict", "--run", cli_run, spot, "--batch-size", "0", check=False), "--batch-size")
    user_error(intra("predict", "--run", cli_run, spot, "--threads", "-1", check=False), "--threads")
    user_error(intra("predict", "--run", cli_run, spot, "--image-threshold", "nan", check=False), "--image-threshold")
    user_error(
        intra("evaluate", "--run", cli_run, "--data", mvtec_root, "--eval-size", "-5", check=False), "--eval-size"
    )
    assert not (tmp_path / "r").exists()


def test_training_on_too_few_images_is_refused(mvtec_root, tmp_path):
    """Issue 13, case 8: one or two images gave a model flagging everything, with exit 0; now one line, nothing written."""
    few = tmp_path / "two"
    few.mkdir()
    for source in sorted((mvtec_root / "train" / "good").glob("*.png"))[:2]:
        (few / source.name).write_bytes(source.read_bytes())
    result = intra("train", "--data", few, "--out", tmp_path / "run", *TINY, check=False)
    user_error(result, "two", "2 image(s)", "at least 3")
    assert not (tmp_path / "run").exists()


def test_a_mask_of_another_size_is_refused_naming_both_sizes(cli_run, tmp_path):
    """Issue 13, case 9: a 64 x 64 image with a 32 x 32 mask was stretched into the pixel metrics."""
    root = make_test_set(tmp_path / "set")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "ground_truth" / "spot" / "000_mask.png")
    result = intra("evaluate", "--run", cli_run, "--data", root, "--out", tmp_path / "eval", check=False)
    user_error(result, "000_mask.png is 32x32 px", "is 64x64 px")
    assert not (tmp_path / "eval").exists()


def test_nan_in_a_score_setting_is_refused_before_training(mvtec_root, tmp_path):
    """Issue 13, case 5: score.gaussian_sigma=nan trained every epoch, then crashed with no model saved."""
    result = intra(
        "train",
        "--data",
        mvtec_root,
        "--out",
        tmp_path / "run",
        *TINY,
        "--set",
        "score.gaussian_sigma=nan",
        check=False,
    )
    user_error(result, "score.gaussian_sigma", "finite")
    assert not (tmp_path / "run").exists()


def test_a_device_that_is_not_there_is_refused_by_name(cli_run, mvtec_root, tmp_path):
    import torch

    spot = mvtec_root / "test" / "spot"
    user_error(intra("predict", "--run", cli_run, spot, "--device", "gpu0", check=False), "--device", "'gpu0'")
    user_error(intra("bench", "--device", "tpu", check=False), "--device", "'tpu'")
    result = intra("train", "--data", mvtec_root, "--out", tmp_path / "r", *TINY, "--device", "cuda:x", check=False)
    user_error(result, "--device", "'cuda:x'")
    assert not (tmp_path / "r").exists()
    if not torch.cuda.is_available():
        user_error(intra("predict", "--run", cli_run, spot, "--device", "cuda", check=False), "no CUDA GPU")

"""Shared fixtures: a tiny configuration and small generated datasets on disk (no ../shared)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)  # two cores: keep each test process to one thread

from intra.config import Config, ModelConfig  # noqa: E402
from intra.data.synthetic import make_dataset  # noqa: E402


def tiny_config(**model) -> Config:
    """A model small enough to train in seconds: 32 px images, 4 px patches, 3x3 windows."""
    cfg = Config()
    cfg.model = ModelConfig(image_size=32, channels=3, patch_size=4, window=3, dim=32, depth=3, heads=2, **model)
    cfg.train.windows_per_image = 20
    cfg.train.batch_size = 64
    cfg.train.lr = 2e-3
    cfg.train.max_epochs = 2
    cfg.train.patience = 5
    cfg.train.threads = 1
    cfg.train.device = "cpu"
    cfg.score.mean_filter = 5
    cfg.score.gaussian_sigma = 1.0
    return cfg


def lively_model(cfg: Config, seed: int = 0):
    """A random network with weights large enough that every input pixel moves the output."""
    from intra.core.model import InpaintingTransformer

    torch.manual_seed(seed)
    model = InpaintingTransformer(cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0, 0.15)
    model.set_pixel_stats(torch.full((cfg.model.channels,), 0.5), torch.full((cfg.model.channels,), 0.25))
    return model


# The real CLI in a subprocess: the tiny model as flags.
TINY = [
    "--image-size",
    "64",
    "--patch-size",
    "4",
    "--window",
    "3",
    "--dim",
    "32",
    "--depth",
    "3",
    "--heads",
    "2",
    "--epochs",
    "2",
    "--windows-per-image",
    "20",
    "--batch-size",
    "64",
    "--threads",
    "1",
    "--device",
    "cpu",
    # fp32 on every machine: the cpu preset's dtype "auto" would train in bf16 only where the CPU has
    # it, and the tests' exact comparisons (two processes against one) and epoch timings assume fp32.
    "--set",
    "train.dtype=fp32",
]


def intra(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "intra.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"intra {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def write_image(path, array, mode=None, **save):
    """Save a numpy array as an image file (folders created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **save)
    return path


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory):
    """A small synthetic MVTec-layout dataset (64 px images) shared by the slower tests."""
    return make_dataset(tmp_path_factory.mktemp("data") / "synthetic", size=64, train=12, test_good=4, per_defect=2)


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory, mvtec_root):
    """A tiny run trained once through the real CLI, shared by the product tests (predict, export, report)."""
    run = tmp_path_factory.mktemp("product") / "run"
    intra(
        "train",
        "--data",
        mvtec_root,
        "--out",
        run,
        *TINY,
        "--set",
        "score.mean_filter=5",
        "--set",
        "train.val_fraction=0.4",
    )
    return run


def user_error(result, *needles) -> str:
    """Check a CLI failure: exit 2, no traceback, last stderr line an 'intra: error:' naming the needles."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Progress bars share stderr without always ending their line: find the one error message.
    errors = re.findall(r"intra: error: [^\r\n]*", result.stderr)
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert str(needle) in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def mixed_root(tmp_path_factory):
    """The synthetic set with images of several sizes and aspect ratios (each cropped, its mask alike)."""
    import numpy as np

    root = make_dataset(tmp_path_factory.mktemp("mixed") / "synthetic", size=96, train=12, test_good=4, per_defect=2)
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.png")):
        if "ground_truth" in path.parts:
            continue
        height, width = int(rng.integers(56, 97)), int(rng.integers(56, 97))
        mask = root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        top = left = 0
        if mask.is_file():  # keep the defect's centre in view
            rows, cols = np.nonzero(np.asarray(Image.open(mask)))
            top = int(np.clip(rows.mean() - height // 2, 0, 96 - height))
            left = int(np.clip(cols.mean() - width // 2, 0, 96 - width))
        box = (left, top, left + width, top + height)
        Image.open(path).crop(box).save(path)
        if mask.is_file():
            Image.open(mask).crop(box).save(mask)
    return root

"""Listing datasets: the MVTec AD layout, its mistakes, and plain folders."""

import numpy as np
import pytest

from intra.data import datasets
from intra.data.datasets import training_images
from intra.errors import IntraError

from conftest import write_image


def test_mvtec_layout_listing(mvtec_root):
    assert len(training_images(mvtec_root)) == 12
    samples = datasets.test_samples(mvtec_root)
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
    write_image(broken / "test" / "good" / "000.png", np.zeros((8, 8), np.uint8))
    write_image(broken / "test" / "dent" / "000.png", np.zeros((8, 8), np.uint8))
    write_image(broken / "ground_truth" / "dent" / "001_mask.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(IntraError, match="has no mask"):
        datasets.test_samples(broken)


def test_a_test_set_without_ground_truth_has_image_labels_only(tmp_path):
    for kind in ("good", "dent"):
        write_image(tmp_path / "test" / kind / "000.png", np.zeros((8, 8), np.uint8))
    samples = datasets.test_samples(tmp_path)
    assert [(s.kind, s.label, s.mask_path) for s in samples] == [("dent", 1, None), ("good", 0, None)]


def test_plain_folder_of_training_images(tmp_path):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.jpg", np.full((20, 20, 3), 50, np.uint8))
    (tmp_path / "imgs" / "readme.txt").write_text("ignored")
    assert [p.name for p in training_images(tmp_path / "imgs")] == ["0.jpg", "1.jpg", "2.jpg"]


def test_training_needs_a_minimum_number_of_images(tmp_path):
    """Issue 13, case 8: one or two training images would give a model that flags everything: refused."""
    for i in range(2):
        write_image(tmp_path / "train" / "good" / f"{i}.png", np.full((20, 20), 50, np.uint8))
    with pytest.raises(IntraError, match=r"holds 2 image\(s\): intra needs at least 3"):
        training_images(tmp_path)
    write_image(tmp_path / "train" / "good" / "2.png", np.full((20, 20), 50, np.uint8))
    assert len(training_images(tmp_path)) == datasets.MIN_TRAIN_IMAGES == 3


def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path):
    """Issue 13, case 9: never stretched into the pixel metrics; the message names both sizes."""
    write_image(tmp_path / "test" / "good" / "000.png", np.zeros((40, 60), np.uint8))
    write_image(tmp_path / "test" / "dent" / "000.png", np.zeros((40, 60), np.uint8))
    write_image(tmp_path / "ground_truth" / "dent" / "000_mask.png", np.zeros((30, 60), np.uint8))
    with pytest.raises(IntraError, match=r"000_mask.png is 60x30 px but its image .*000.png is 60x40 px"):
        datasets.test_samples(tmp_path)
    write_image(tmp_path / "ground_truth" / "dent" / "000_mask.png", np.zeros((40, 60), np.uint8))
    assert len(datasets.test_samples(tmp_path)) == 2


def test_the_validation_split_leaves_images_to_train_on():
    import torch

    from intra.config import TrainConfig

    for count, fraction in [(3, 0.9), (5, 1.0), (10, 0.1)]:
        train, val = datasets.validation_split(count, TrainConfig(val_fraction=fraction), torch.Generator())
        assert len(train) >= 1 and len(val) >= 1 and sorted([*train.tolist(), *val.tolist()]) == list(range(count))

"""The generated datasets: layout on disk, masks, determinism, and what the aligned-object set promises."""

import numpy as np
import pytest
from PIL import Image

from intra.data import datasets
from intra.data.synthetic import (
    DEFECT_KINDS,
    OBJECT_DEFECT_KINDS,
    make_dataset,
    make_object_dataset,
    object_sample,
)

GENERATORS = [(make_dataset, DEFECT_KINDS), (make_object_dataset, OBJECT_DEFECT_KINDS)]


def _png_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _gray(image):
    return image.mean(axis=-1)


@pytest.mark.parametrize("make, kinds", GENERATORS)
def test_layout_counts_and_masks(tmp_path, make, kinds):
    root = make(tmp_path / "set", size=48, train=5, test_good=3, per_defect=2, seed=0)
    assert len(list((root / "train" / "good").glob("*.png"))) == 5
    assert len(list((root / "test" / "good").glob("*.png"))) == 3
    for kind in kinds:
        images = sorted((root / "test" / kind).glob("*.png"))
        assert len(images) == 2
        for path in images:
            image = np.asarray(Image.open(path))
            mask = np.asarray(Image.open(root / "ground_truth" / kind / f"{path.stem}_mask.png"))
            assert image.shape == (48, 48, 3) and mask.shape == (48, 48)
            assert set(np.unique(mask)) == {0, 255}  # binary and not empty
    samples = datasets.test_samples(root)  # the library reads it as an MVTec category
    assert {s.kind for s in samples} == {"good", *kinds}
    assert sum(s.label for s in samples) == 2 * len(kinds)


@pytest.mark.parametrize("make, kinds", GENERATORS)
def test_the_same_seed_writes_the_same_files(tmp_path, make, kinds):
    def files(name, seed):
        return _png_bytes(make(tmp_path / name, size=32, train=2, test_good=1, per_defect=1, seed=seed))

    assert files("a", 0) == files("b", 0)
    assert files("a", 0) != files("c", 1)


def test_normal_objects_vary_in_pose_and_light_yet_stay_aligned():
    rng = np.random.default_rng(0)
    images = np.stack([_gray(object_sample(rng, 128)[1]) for _ in range(24)])  # (N, H, W)
    # Variation: every image differs from the next, in placement and in brightness.
    assert np.abs(images[1:] - images[:-1]).mean(axis=(1, 2)).min() > 0.01
    assert images.mean(axis=(1, 2)).std() > 0.01
    y, x = np.mgrid[0:128, 0:128]
    metal = images > 0.3
    centres = np.stack([(metal * x).sum((1, 2)), (metal * y).sum((1, 2))]) / metal.sum((1, 2))
    assert np.all((centres.std(axis=1) > 0.4) & (centres.std(axis=1) < 3))
    # Alignment: the images correlate, and their mean still has sharp edges (rings, holes).
    correlation = np.corrcoef(images.reshape(len(images), -1))[np.triu_indices(len(images), 1)]
    assert correlation.mean() > 0.85 and correlation.min() > 0.6
    mean = images.mean(axis=0)
    assert np.abs(np.diff(mean, axis=1)).max() > 0.15 and np.abs(np.diff(mean, axis=0)).max() > 0.15


def test_a_model_of_the_object_inpaints_what_a_smooth_fill_cannot():
    """The mean of training normals (a stand-in for a model that learnt the cap) fills 16 px windows
    on the cap far better than the mean of each window's border: the object has structure to learn."""
    rng = np.random.default_rng(1)
    images = np.stack([_gray(object_sample(rng, 128)[1]) for _ in range(36)])
    learnt, test = images[:30].mean(axis=0), images[30:]
    learnt_error, smooth_error = [], []
    for image in test:
        for top in range(24, 89, 8):
            for left in range(24, 89, 8):
                window = image[top : top + 16, left : left + 16]
                border = image[top - 1 : top + 17, left - 1 : left + 17].copy()
                border[1:-1, 1:-1] = np.nan
                smooth_error.append(np.mean((window - np.nanmean(border)) ** 2))
                learnt_error.append(np.mean((window - learnt[top : top + 16, left : left + 16]) ** 2))
    assert np.mean(learnt_error) < 0.6 * np.mean(smooth_error)


@pytest.mark.parametrize("kind", OBJECT_DEFECT_KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_each_object_defect_changes_its_mask_and_little_else(kind, seed):
    clean, image, mask = object_sample(np.random.default_rng(seed), 128, kind)
    assert clean.shape == image.shape == (128, 128, 3) and mask.shape == (128, 128) and mask.dtype == bool
    assert mask.any()
    change = np.abs(image - clean).max(axis=-1)
    assert change[mask].mean() > 50 * change[~mask].mean()
    assert change[mask].sum() > 0.7 * change.sum()  # the mask holds most of what changed
    relative = (np.abs(image - clean).mean(axis=-1) / clean.mean(axis=-1))[mask].mean()
    if kind == "stain":
        assert 0.01 < relative < 0.08  # low contrast: a few percent of the intensity
    else:
        assert relative > 0.15
    if kind == "spot":
        assert 5 <= mask.sum() <= 40  # 3-6 px across
    if kind == "missing":  # the mat shows through: darker than the metal it replaced
        assert _gray(image)[mask].mean() < _gray(clean)[mask].mean() - 0.15


def test_defects_vary_with_the_seed():
    for kind in OBJECT_DEFECT_KINDS:
        masks = [object_sample(np.random.default_rng(seed), 64, kind)[2] for seed in range(3)]
        assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_a_normal_sample_is_its_own_clean_image_and_unknown_kinds_fail():
    clean, image, mask = object_sample(np.random.default_rng(0), 32)
    np.testing.assert_array_equal(clean, image)
    assert not mask.any()
    with pytest.raises(ValueError, match="unknown defect kind"):
        object_sample(np.random.default_rng(0), 32, "dent")

"""Datasets on disk: the MVTec AD layout or a plain folder of images, listed as paths and samples.

MVTec AD layout:  ROOT/train/good/*, ROOT/test/<kind>/*, ROOT/ground_truth/<kind>/<stem>_mask.png
(`good` test images need no mask). Listing checks the layout (missing folders, defect images
without masks, masks without images, masks of another size than their image, too few training
images) and names what is wrong; reading the files is `images`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig
from ..errors import IntraError
from .images import image_size

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
MIN_TRAIN_IMAGES = 3  # training refuses fewer defect-free images


@dataclass
class Sample:
    """One test image: path, defect kind ("good" for normal), label (0 normal, 1 anomalous), mask path."""

    path: Path
    kind: str
    label: int
    mask_path: Path | None = None


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path, what: str = "images") -> list[Path]:
    """Sorted image files directly inside `folder`; IntraError if it is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IntraError(f"{what} folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if is_image(p))
    if not paths:
        raise IntraError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {what} folder {folder}")
    return paths


def training_images(root: str | Path) -> list[Path]:
    """Training images of an MVTec-layout root (ROOT/train/good) or of a plain folder of images.

    At least MIN_TRAIN_IMAGES: with fewer, one image would be both trained on and held out for the
    thresholds, and the model would flag everything.
    """
    root = Path(root)
    if not root.exists():
        raise IntraError(f"training data folder not found: {root}")
    folder = root / "train" / GOOD if (root / "train" / GOOD).is_dir() else root
    paths = list_images(folder, "training")
    if len(paths) < MIN_TRAIN_IMAGES:
        raise IntraError(
            f"training folder {folder} holds {len(paths)} image(s): intra needs at least {MIN_TRAIN_IMAGES} "
            "(some to learn from, one held out to calibrate the thresholds)"
        )
    return paths


def test_samples(root: str | Path) -> list[Sample]:
    """Every test image of an MVTec-layout root with its kind, label and mask path.

    A root without any ground_truth/ folder is a set with image labels only (no masks, no pixel
    metrics); with ground_truth/, every defect image needs its mask.
    """
    root = Path(root)
    labels_only = not (root / "ground_truth").is_dir()
    if labels_only:
        log.warning("%s has no ground_truth folder: image labels only, no pixel metrics", root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise IntraError(f"no test folder in {root} (expected the MVTec AD layout: {root}/test/<kind>/)")
    samples: list[Sample] = []
    kinds = sorted(d for d in test_dir.iterdir() if d.is_dir())
    if not kinds:
        raise IntraError(f"no defect-kind folders in {test_dir}")
    for kind_dir in kinds:
        kind = kind_dir.name
        for path in list_images(kind_dir, f"test/{kind}"):
            if kind == GOOD:
                samples.append(Sample(path, kind, 0))
                continue
            mask = root / "ground_truth" / kind / f"{path.stem}_mask.png"
            if labels_only:
                samples.append(Sample(path, kind, 1))
                continue
            if not mask.is_file():
                raise IntraError(f"defect image {path} has no mask: expected {mask}")
            _check_mask_size(path, mask)
            samples.append(Sample(path, kind, 1, mask))
        _check_orphan_masks(root / "ground_truth" / kind, {s.path.stem for s in samples if s.kind == kind})
    if not any(s.label == 0 for s in samples) or not any(s.label == 1 for s in samples):
        raise IntraError(f"{test_dir} needs both good and defective images to compute AUROC")
    return samples


def _check_mask_size(image: Path, mask: Path) -> None:
    """A mask must cover its image pixel for pixel: stretching another size would misplace the defect."""
    image_wh, mask_wh = image_size(image), image_size(mask)
    if image_wh != mask_wh:
        raise IntraError(
            f"mask {mask} is {mask_wh[0]}x{mask_wh[1]} px but its image {image} is {image_wh[0]}x{image_wh[1]} px: "
            "a mask must have its image's size"
        )


def _check_orphan_masks(folder: Path, stems: set[str]) -> None:
    """A mask without its test image means mismatched names: refuse rather than silently ignore it."""
    if not folder.is_dir():
        return
    for mask in sorted(folder.iterdir()):
        stem = mask.stem.removesuffix("_mask")
        if is_image(mask) and stem not in stems:
            raise IntraError(
                f"mask {mask} has no test image (expected {folder.parent.parent / 'test' / folder.name / stem}.<png|jpg|...>)"
            )


def validation_split(count: int, cfg: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, validation) index split of `count` training images: `val_fraction` of them, at most
    `val_max_images`, drawn first from `generator` (so the split of a run is reproduced from its seed).

    With a single image there is nothing to hold out: validation reuses it (logged as a warning).
    """
    if count < 2:
        log.warning("only one training image: validating on the training image itself")
        return torch.arange(count), torch.arange(count)
    n_val = min(cfg.val_max_images, max(1, round(cfg.val_fraction * count)), count - 1)  # one left to train on
    order = torch.randperm(count, generator=generator)
    return order[n_val:].sort().values, order[:n_val].sort().values

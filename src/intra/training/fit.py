"""fit(): train an InpaintingTransformer on defect-free images and save a run folder.

Paper section 4: per epoch `windows_per_image` random windows per training image; a validation
split of 10 % of the images (at most 20) scored on a fixed set of windows; Adam; early stopping
when the validation loss has not improved for `patience` epochs, keeping the best weights. After
training, the mean difference map of the training images is computed and stored with the model,
and the decision thresholds are calibrated on the validation images (see `inference.calibration`).

Run folder: config.json (resolved config), train_log.jsonl (one line per epoch),
model.safetensors + model.json (see `checkpoint`), and while training runs
training_state.safetensors, rewritten atomically after every epoch: `fit(..., resume=True)`
(`intra train --resume RUN`) continues from it and, with the same thread count, ends with
bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import check_new_run, save_checkpoint
from ..config import Config, reading_mismatch, validate
from ..core.model import InpaintingTransformer
from ..data.datasets import training_images, validation_split
from ..data.geometry import Geometry, resolve_geometry, warn_distorted
from ..data.images import image_size, load_images, resolve_color, standardize
from ..errors import IntraError
from ..files import replacing_folder, write_json
from ..inference.calibration import calibrate
from ..inference.detector import Detector
from ..runtime import configure_threads, machine, resolve_device, resolve_dtype_name
from . import distributed, state
from .trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    detector: Detector
    stats: dict
    main: bool = True  # False in the processes of a distributed run other than rank 0 (they write nothing)


# A kept network inpaints when its error on the held-out images is clearly below the better trivial fill's
# (ring mean or smooth fill): the test. Above this share it barely beats smoothing, and its maps
# show normal structure nearly as strongly as defects.
INPAINTS_BELOW = 0.9


def logged_value(log_path: Path, epoch: int, key: str) -> float | None:
    """`key` of epoch `epoch` in train_log.jsonl (None if absent): the log also covers epochs before a resume."""
    if not log_path.is_file():
        return None
    for line in log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("epoch") == epoch:
            return record.get(key)
    return None


def inpainting_warning(stats: dict) -> str | None:
    """A warning when the kept network has not learned to inpaint clearly better than a trivial fill, else None."""
    ratio = stats.get("kept_inpaint_ratio")
    if ratio is None or ratio < INPAINTS_BELOW:
        return None
    trained_on = stats.get("trained_on", {})
    where = f" in {trained_on['dtype']}" if "dtype" in trained_on else ""
    if trained_on.get("native_bf16") is False:
        where += " on a CPU without bf16 instructions"
    return (
        f"the kept network (epoch {stats['best_epoch']} of {stats['epochs']}, {stats['train_seconds'] / 60:.1f} "
        f"minutes{where}) inpaints the held-out images with {ratio:.2f}x the error of the better trivial fill "
        "(val_inpaint_ratio in train_log.jsonl): it has not learned to inpaint clearly better than smoothing, so "
        "its anomaly maps show normal structure too. More training time (--max-minutes) usually lowers the ratio"
    )


def image_fingerprint(data: str | Path, paths: list[Path], sizes: list[tuple[int, int]]) -> str:
    """What a training state remembers of its images: their names below `data` and sizes, hashed."""
    text = "\n".join(f"{os.fsencode(os.path.relpath(p, data))!r}\t{w}x{h}" for p, (w, h) in zip(paths, sizes))
    return f"{len(paths)} images, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def check_resumable(run_dir: Path, data: str | Path, saved: dict, images_seen: str) -> None:
    """Refuse a resume that could not continue the interrupted training as it was."""
    if saved.get("processes", 1) > 1:
        raise IntraError(
            f"{run_dir} was trained by {saved['processes']} processes (torchrun), whose training state holds only "
            "the first one's sampling: it cannot be resumed; train it anew"
        )
    if saved.get("images", images_seen) != images_seen:  # states of older versions did not record them
        raise IntraError(
            f"{run_dir} was training on other images ({saved['images']}) than {data} holds now ({images_seen}): "
            "the validation split would change; resume with the same images, or train anew"
        )


def fit(
    cfg: Config,
    data: str | Path,
    run_dir: str | Path,
    progress: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> FitResult:
    """Train on the images of `data` (an MVTec-layout root or a folder of images) into `run_dir`.

    With `resume`, continue the interrupted training saved in run_dir (cfg must be its config). A
    run_dir that already holds a run is refused unless `overwrite`: then the new run is trained in
    a temporary sibling folder that replaces the old run only once the new model is saved; if that
    training is stopped after an epoch, the sibling is kept and `resume` finishes it there.
    """
    run_dir = Path(run_dir)
    main = distributed.world_from_env().main
    if not resume and main and check_new_run(run_dir, overwrite):
        with replacing_folder(run_dir, keep=state.kept_if_resumable(run_dir)) as staging:
            return fit(cfg, data, staging, progress)
    staged = state.resumable_folder(run_dir) if resume and main else run_dir
    if staged != run_dir:  # an interrupted --overwrite: finish the new run where it was training, then swap
        with replacing_folder(run_dir, adopt=staged, keep=state.kept_if_resumable(run_dir)) as staging:
            return fit(cfg, data, staging, progress, resume=True)
    paths = training_images(data)
    color = resolve_color(cfg.data.color, paths)
    cfg = copy.deepcopy(cfg)
    cfg.data.color = color
    cfg.model.channels = 1 if color == "gray" else 3
    sizes = [image_size(p) for p in paths]
    resolve_geometry(cfg, sizes)
    validate(cfg)
    warn_distorted(
        Geometry.of(cfg),
        paths,
        sizes,
        "training",
        "resized out of the ordinary, so the network learns them at another size",
    )
    if reading_mismatch(cfg):
        log.warning("%s", reading_mismatch(cfg))
    configure_threads(cfg.train.threads)
    world, device = distributed.setup(resolve_device(cfg.train.device))
    cfg.train.dtype = resolve_dtype_name(cfg.train.dtype, device)
    log.info("training in %s on %s", cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)

    if resume and world.active:
        raise IntraError("--resume continues single-process runs only: resume without torchrun")
    images_seen = image_fingerprint(data, paths, sizes)
    saved = state.load(run_dir) if resume else None
    if saved is not None:
        check_resumable(run_dir, data, saved[1], images_seen)
    # Read every image before creating anything: a bad file must not leave a half-made run folder.
    images = load_images(paths, Geometry.of(cfg), color, threads=cfg.train.threads)  # each (C, h, w)
    if cfg.data.standardize:
        images = [standardize(x) for x in images]
    if not resume and world.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / state.TRAINING_STATE).unlink(missing_ok=True)  # a stale one would be resumed by mistake
        except OSError as exc:
            raise IntraError(f"cannot write to run folder {run_dir}: {exc.strerror or exc}") from None
        write_json(run_dir / "config.json", cfg.to_dict())
    train_idx, val_idx = validation_split(len(images), cfg.train, generator)
    log.info("%d training images (%s), %d held out for validation", len(train_idx), color, len(val_idx))

    train = [images[i].to(device) for i in train_idx]
    val = [images[i].to(device) for i in val_idx]
    pixels = torch.cat([x.flatten(1) for x in train], dim=1)  # (C, every training pixel)
    model = InpaintingTransformer(cfg.model)
    model.set_pixel_stats(pixels.mean(dim=1), pixels.std(dim=1))
    model = model.to(device)
    trainer = Trainer(model, train, val, cfg, generator, world)
    log_path = run_dir / "train_log.jsonl"
    if saved is not None:
        state.restore(trainer, *saved)
        state.truncate_log(log_path, trainer.epoch)
        log.info("resuming %s after epoch %d", run_dir, trainer.epoch)
    data_path = str(Path(data).resolve())
    if world.main:
        stats = trainer.run(
            log_path,
            progress,
            on_epoch=lambda t: state.save(
                run_dir, *state.capture(t, data=data_path, images=images_seen, processes=world.size)
            ),
        )
    else:
        stats = trainer.run(None)  # only rank 0 writes the log and the training state
    model.load_state_dict(trainer.best_state)

    # The machine it trained on and the dtype "auto" resolved to there: the same preset trains fewer epochs
    # in its minutes on a CPU without bf16 instructions (docs/benchmarks.md, "bf16 training").
    stats.update(train_images=len(train_idx), color=color, trained_on={**machine(device), "dtype": cfg.train.dtype})
    if world.main:
        stats["kept_inpaint_ratio"] = logged_value(log_path, stats["best_epoch"], "val_inpaint_ratio")
        warning = inpainting_warning(stats)
        if warning:
            log.warning("%s", warning)
    detector = Detector(model, cfg, device=device, stats=stats)
    if not world.main:
        world.barrier()  # wait for rank 0's calibration and checkpoint
        return FitResult(detector, stats, main=False)
    detector = calibrate(detector, train, val, progress)
    save_checkpoint(run_dir, model, detector.cfg, detector.tensors(), detector.stats)
    (run_dir / state.TRAINING_STATE).unlink(missing_ok=True)  # training is over: the model is in model.*
    world.barrier()
    return FitResult(detector, detector.stats)

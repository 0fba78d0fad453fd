"""fit(): train an InpaintingTransformer on defect-free images and save a run folder.

Paper section 4: per epoch `windows_per_image` random windows per training image; a validation
split of 10 % of the images (at most 20) scored on a fixed set of windows; Adam; early stopping
when the validation loss has not improved for `patience` epochs, keeping the best weights. After
training, the mean difference map of the training images is computed and stored with the model.

Run folder: config.json (resolved config), train_log.jsonl (one line per epoch),
model.safetensors + model.json (see `checkpoint`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint, write_json
from .config import Config, validate
from .data import load_images, resolve_color, standardize, training_images
from .errors import IntraError
from .inference import Detector, resolve_device
from .losses import inpainting_loss
from .model import InpaintingTransformer
from .optim import WeightEMA, build_optimizer, lr_factor, set_lr
from .sampling import Batch, WindowSampler

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    detector: Detector
    stats: dict


def split_validation(count: int, cfg: Config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, validation) index split: val_fraction of the images, at most val_max_images.

    With a single image there is nothing to hold out: validation reuses it (logged as a warning).
    """
    if count < 2:
        log.warning("only one training image: validating on the training image itself")
        return torch.arange(count), torch.arange(count)
    n_val = min(cfg.train.val_max_images, max(1, round(cfg.train.val_fraction * count)))
    order = torch.randperm(count, generator=generator)
    return order[n_val:].sort().values, order[:n_val].sort().values


def mean_map_subset(items, cfg: Config):
    """The training images (or paths) the mean map averages: all, or score.mean_map_images evenly spaced."""
    count = cfg.score.mean_map_images
    if not count or count >= len(items):
        return items
    return items[:: math.ceil(len(items) / count)]


def configure_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def fit(cfg: Config, data: str | Path, run_dir: str | Path, progress: bool = False) -> FitResult:
    """Train on the images of `data` (an MVTec-layout root or a folder of images) into `run_dir`."""
    run_dir = Path(run_dir)
    paths = training_images(data)
    color = resolve_color(cfg.data.color, paths)
    cfg = copy.deepcopy(cfg)
    cfg.data.color = color
    cfg.model.channels = 1 if color == "gray" else 3
    validate(cfg)
    configure_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", cfg.to_dict())
    except OSError as exc:
        raise IntraError(f"cannot write to run folder {run_dir}: {exc}") from None
    images = load_images(paths, cfg.model.image_size, color)  # (n, C, H, W)
    if cfg.data.standardize:
        images = standardize(images)
    train_idx, val_idx = split_validation(len(images), cfg, generator)
    log.info("%d training images (%s), %d held out for validation", len(train_idx), color, len(val_idx))

    model = InpaintingTransformer(cfg.model)
    model.set_pixel_stats(images[train_idx].mean(dim=(0, 2, 3)), images[train_idx].std(dim=(0, 2, 3)))
    model = model.to(device)
    trainer = Trainer(model, images[train_idx].to(device), images[val_idx].to(device), cfg, generator)
    stats = trainer.run(run_dir / "train_log.jsonl", progress)
    model.load_state_dict(trainer.best_state)

    detector = Detector(model, cfg, device=device)
    batches = mean_map_subset(images[train_idx], cfg).split(max(1, cfg.score.chunk_windows // cfg.model.grid**2))
    mean_map = detector.fit_mean_map(tqdm(batches, desc="mean map", disable=not progress, leave=False))
    val_maps, val_scores = detector.predict(images[val_idx])
    stats.update(
        train_images=len(train_idx),
        val_images=len(val_idx),
        color=color,
        val_score_max=float(val_scores.max()),
        # Overlays saturate at twice the hottest pixel seen on held-out normal images.
        overlay_vmax=2 * float(val_maps.max()),
    )
    save_checkpoint(run_dir, model, cfg, {"mean_map": mean_map, "std_map": detector.std_map}, stats)
    detector.stats = stats
    return FitResult(detector, stats)


class Trainer:
    """The epoch loop: sampling, optimisation, validation, early stopping, the training log."""

    def __init__(
        self,
        model: InpaintingTransformer,
        train_images: torch.Tensor,
        val_images: torch.Tensor,
        cfg: Config,
        generator: torch.Generator,
    ):
        self.model, self.cfg, self.generator = model, cfg, generator
        self.sampler = WindowSampler(train_images, cfg)
        self.val_batches = _validation_batches(val_images, cfg)
        self.optimizer = self.build_optimizer()
        # Weight average (train.ema): validated and kept as the best weights instead of the raw ones.
        self.ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema else None
        self.steps_per_epoch = math.ceil(cfg.train.windows_per_image * len(train_images) / cfg.train.batch_size)
        self.epoch = 0
        self.step = 0  # optimisation steps so far (with the elapsed time, drives the lr schedule)
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_state = copy.deepcopy(model.state_dict())

    @property
    def eval_model(self) -> InpaintingTransformer:
        """The weights that are validated and kept: the EMA copy if there is one."""
        return self.ema.model if self.ema is not None else self.model

    def build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg.train)

    def progress(self, seconds: float) -> float:
        """Training progress in [0, 1] for the lr schedule: the larger of the step and time fractions."""
        t = self.cfg.train
        fraction = self.step / (t.max_epochs * self.steps_per_epoch)
        if t.max_minutes:
            fraction = max(fraction, seconds / (60 * t.max_minutes))
        return min(fraction, 1.0)

    def forward(self, model: InpaintingTransformer, batch: Batch) -> torch.Tensor:
        """Predicted covered patches shaped like batch.target (one or several covered per window)."""
        if batch.covered.dtype == torch.bool:  # several covered patches per window: (n, P)
            return model.forward_tokens(batch.patches, batch.covered, batch.positions)[batch.covered].view_as(batch.target)
        return model(batch.patches, batch.covered, batch.positions).view_as(batch.target)

    def train_step(self, batch_number: int, seconds: float = 0.0) -> dict[str, torch.Tensor]:
        """One optimisation step on a fresh random batch; returns the detached loss terms."""
        t = self.cfg.train
        lr = t.lr * lr_factor(t, self.progress(seconds))
        set_lr(self.optimizer, lr)
        batch = self.sampler.sample(t.batch_size, self.generator)
        pred = self.forward(self.model, batch)
        loss, parts = inpainting_loss(pred, batch.target, t.alpha, t.beta)
        if not torch.isfinite(loss):
            raise IntraError(
                f"training diverged: loss is {float(loss)} in epoch {self.epoch}, batch {batch_number} (try a lower train.lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        parts["loss"] = loss.detach()
        parts["lr"] = torch.tensor(lr)
        return parts

    def train_epoch(self, deadline: float, progress: bool, start: float | None = None) -> dict[str, float]:
        """Steps until the epoch is done or the deadline passes; returns mean loss terms and steps."""
        self.model.train()
        start = time.perf_counter() if start is None else start
        totals: dict[str, float] = {}
        done = 0
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch}", disable=not progress, leave=False)
        for _ in bar:
            parts = self.train_step(done + 1, time.perf_counter() - start)
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            done += 1
            if done % 20 == 0:
                bar.set_postfix(loss=f"{totals['loss'] / done:.4f}")
            if time.perf_counter() > deadline:
                break
        means = {f"train_{k}": v / max(done, 1) for k, v in totals.items()}
        return {**means, "steps": done}

    @torch.no_grad()
    def validate(self) -> float:
        """Loss on the fixed validation windows."""
        model = self.eval_model.eval()
        total, count = 0.0, 0
        for batch in self.val_batches:
            pred = self.forward(model, batch)
            loss, _ = inpainting_loss(pred, batch.target, self.cfg.train.alpha, self.cfg.train.beta)
            total += float(loss) * len(pred)
            count += len(pred)
        return total / max(count, 1)

    def run(self, log_path: Path, progress: bool = False) -> dict:
        """Epochs until patience, max_epochs or max_minutes; the best weights end in best_state."""
        t = self.cfg.train
        start = time.perf_counter()
        deadline = start + t.max_minutes * 60 if t.max_minutes else math.inf
        with log_path.open("w", encoding="utf-8") as log_file:
            while self.epoch < t.max_epochs:
                self.epoch += 1
                record = {"epoch": self.epoch, **self.train_epoch(deadline, progress, start)}
                record["val_loss"] = val_loss = self.validate()
                record["seconds"] = round(time.perf_counter() - start, 3)
                improved = val_loss < self.best_loss
                if improved:
                    self.best_loss, self.best_epoch = val_loss, self.epoch
                    self.best_state = copy.deepcopy(self.eval_model.state_dict())
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                line = f"epoch {self.epoch:4d}  train {record.get('train_loss', math.nan):.5f}  val {val_loss:.5f}{'  *' if improved else ''}  {record['seconds']:.0f}s"
                log.info(line)
                if progress:
                    tqdm.write(line)
                if self.epoch - self.best_epoch >= t.patience or time.perf_counter() > deadline:
                    break
        return {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_loss,
            "train_seconds": round(time.perf_counter() - start, 2),
        }


def _validation_batches(val_images: torch.Tensor, cfg: Config) -> list:
    """A fixed set of validation windows (no augmentation), drawn once from a dedicated seed.

    One covered patch per window whatever train.cover_spacing is: the validation loss measures the
    paper's task, comparable between settings.
    """
    sampler = WindowSampler(val_images, cfg, augment=False, cover_spacing=0)
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    total = cfg.train.val_windows_per_image * len(val_images)
    sizes = [min(cfg.train.batch_size, total - i) for i in range(0, total, cfg.train.batch_size)]
    return [sampler.sample(n, generator) for n in sizes]

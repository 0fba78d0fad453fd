"""fit(): train an InpaintingTransformer on defect-free images and save a run folder.

Paper section 4: per epoch `windows_per_image` random windows per training image; a validation
split of 10 % of the images (at most 20) scored on a fixed set of windows; Adam; early stopping
when the validation loss has not improved for `patience` epochs, keeping the best weights. After
training, the mean difference map of the training images is computed and stored with the model,
and the decision thresholds are calibrated on the validation images (see `thresholds`).

Run folder: config.json (resolved config), train_log.jsonl (one line per epoch),
model.safetensors + model.json (see `checkpoint`), and while training runs
training_state.safetensors, rewritten atomically after every epoch: `fit(..., resume=True)`
(`intra train --resume RUN`) continues from it and, with the same thread count, ends with
bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import TRAINING_STATE, atomic_write, load_training_state, save_checkpoint, save_training_state, write_json
from .config import Config, validate
from .data import load_images, resolve_color, standardize, training_images
from .errors import IntraError
from .inference import Detector, resolve_device
from .losses import inpainting_loss
from .model import InpaintingTransformer
from .optim import WeightEMA, build_optimizer, lr_factor, set_lr
from .sampling import Batch, WindowSampler, concat_batches
from .thresholds import calibrate

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    detector: Detector
    stats: dict
    main: bool = True  # False in the processes of a distributed run other than rank 0 (they write nothing)


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


def fit(cfg: Config, data: str | Path, run_dir: str | Path, progress: bool = False, resume: bool = False) -> FitResult:
    """Train on the images of `data` (an MVTec-layout root or a folder of images) into `run_dir`.

    With `resume`, continue the interrupted training saved in run_dir (cfg must be its config).
    """
    run_dir = Path(run_dir)
    paths = training_images(data)
    color = resolve_color(cfg.data.color, paths)
    cfg = copy.deepcopy(cfg)
    cfg.data.color = color
    cfg.model.channels = 1 if color == "gray" else 3
    validate(cfg)
    configure_threads(cfg.train.threads)
    world, device = distributed.setup(resolve_device(cfg.train.device))
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)

    if resume and world.active:
        raise IntraError("--resume continues single-process runs only: resume without torchrun")
    # Read every image before creating anything: a bad file must not leave a half-made run folder.
    images = load_images(paths, cfg.model.image_size, color)  # (n, C, H, W)
    if cfg.data.standardize:
        images = standardize(images)
    if not resume and world.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / TRAINING_STATE).unlink(missing_ok=True)  # a stale one would be resumed by mistake
        except OSError as exc:
            raise IntraError(f"cannot write to run folder {run_dir}: {exc.strerror or exc}") from None
        write_json(run_dir / "config.json", cfg.to_dict())
    train_idx, val_idx = split_validation(len(images), cfg, generator)
    log.info("%d training images (%s), %d held out for validation", len(train_idx), color, len(val_idx))

    model = InpaintingTransformer(cfg.model)
    model.set_pixel_stats(images[train_idx].mean(dim=(0, 2, 3)), images[train_idx].std(dim=(0, 2, 3)))
    model = model.to(device)
    trainer = Trainer(model, images[train_idx].to(device), images[val_idx].to(device), cfg, generator, world)
    log_path = run_dir / "train_log.jsonl"
    if resume:
        trainer.load_state(*load_training_state(run_dir))
        _truncate_log(log_path, trainer.epoch)
        log.info("resuming %s after epoch %d", run_dir, trainer.epoch)
    data_path = str(Path(data).resolve())
    if world.main:
        stats = trainer.run(log_path, progress, on_epoch=lambda t: save_training_state(run_dir, *t.state_dict(data=data_path)))
    else:
        stats = trainer.run(None)  # only rank 0 writes the log and the training state
    model.load_state_dict(trainer.best_state)

    detector = Detector(model, cfg, device=device)
    if not world.main:
        world.barrier()  # wait for rank 0's mean map and checkpoint
        return FitResult(detector, stats, main=False)
    batches = mean_map_subset(images[train_idx], cfg).split(max(1, cfg.score.chunk_windows // cfg.model.grid**2))
    mean_map = detector.fit_mean_map(tqdm(batches, desc="mean map", disable=not progress, leave=False))
    val_maps, val_scores = detector.predict(images[val_idx])
    if len(val_idx) < 10:
        log.warning("thresholds calibrated on only %d validation image(s): expect them to be rough", len(val_idx))
    stats.update(
        train_images=len(train_idx),
        val_images=len(val_idx),
        color=color,
        val_score_max=float(val_scores.max()),
        # Overlays saturate at twice the hottest pixel seen on held-out normal images.
        overlay_vmax=2 * float(val_maps.max()),
        **calibrate(val_scores.numpy(), val_maps.numpy(), cfg.score),
    )
    save_checkpoint(run_dir, model, cfg, {"mean_map": mean_map, "std_map": detector.std_map}, stats)
    (run_dir / TRAINING_STATE).unlink(missing_ok=True)  # training is over: the model is in model.*
    detector.stats = stats
    world.barrier()
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
        world: distributed.World | None = None,
    ):
        self.model, self.cfg, self.generator = model, cfg, generator
        self.world = world or distributed.World()
        self.device = train_images.device
        self.sampler = WindowSampler(train_images, cfg)
        # This process's share of each global batch, one generator per sampling shard.
        t = cfg.train
        self.generators = self.world.shard_generators(generator, t.sample_shards, t.batch_size, t.seed)
        self.shard_size = t.batch_size // (len(self.generators) * self.world.size)
        # The network as train_step calls it: DDP-wrapped when distributed, compiled on request.
        self.network = self.world.wrap(model, self.device)
        self.loss = inpainting_loss  # not compiled: inductor miscompiles the replicate-padding backward
        if t.compile:
            self.network = torch.compile(self.network)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t.dtype == "bf16")
        self.val_batches = _validation_batches(val_images, cfg)[self.world.rank :: self.world.size]
        self.optimizer = self.build_optimizer()
        # Weight average (train.ema): validated and kept as the best weights instead of the raw ones.
        self.ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema else None
        self.steps_per_epoch = math.ceil(cfg.train.windows_per_image * len(train_images) / cfg.train.batch_size)
        self.epoch = 0
        self.step = 0  # optimisation steps so far (with the elapsed time, drives the lr schedule)
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_state = copy.deepcopy(model.state_dict())
        self.elapsed = 0.0  # seconds spent in earlier sessions of a resumed run

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

    def forward(self, model, batch: Batch) -> torch.Tensor:
        """Predicted covered patches shaped like batch.target (one or several covered per window).

        `model` is the network or its DDP/compiled wrapper: only its forward is called.
        """
        pred = model(batch.patches, batch.covered, batch.positions)
        if batch.covered.dtype == torch.bool:  # several covered patches per window: (n, T, P)
            pred = pred[batch.covered]
        return pred.view_as(batch.target)

    def train_step(self, batch_number: int, seconds: float = 0.0) -> dict[str, torch.Tensor]:
        """One optimisation step on a fresh random batch; returns the detached loss terms."""
        t = self.cfg.train
        lr = t.lr * lr_factor(t, self.progress(seconds))
        set_lr(self.optimizer, lr)
        batch = self.sample()
        with self.autocast:
            pred = self.forward(self.network, batch)
        pred = pred.float()  # the loss in fp32 also under bf16
        loss, parts = self.loss(pred, batch.target, t.alpha, t.beta)
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

    def sample(self) -> Batch:
        """This process's share of a global batch: one piece per sampling shard."""
        if len(self.generators) == 1:
            return self.sampler.sample(self.shard_size, self.generators[0])
        return concat_batches([self.sampler.sample(self.shard_size, g) for g in self.generators])

    def mean_loss(self, totals: dict[str, torch.Tensor], steps: int) -> float:
        """The mean training loss of the epoch so far; IntraError if it is not finite."""
        loss = float(totals["loss"]) / max(steps, 1)
        if not math.isfinite(loss):
            raise IntraError(f"training diverged: loss is {loss} in epoch {self.epoch}, by batch {steps} (try a lower train.lr)")
        return loss

    def out_of_time(self, deadline: float) -> bool:
        """Past the deadline, agreed by all processes (they must stop at the same step)."""
        if deadline == math.inf:
            return False
        return self.world.any(time.perf_counter() > deadline, self.device)

    def train_epoch(self, deadline: float, progress: bool, start: float | None = None) -> dict[str, float]:
        """Steps until the epoch is done or the deadline passes; returns mean loss terms and steps."""
        self.model.train()
        start = time.perf_counter() if start is None else start
        totals: dict[str, torch.Tensor] = {}  # summed on the device: reading a value waits for it
        done = 0
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch}", disable=not progress, leave=False)
        for _ in bar:
            parts = self.train_step(done + 1, time.perf_counter() - start)
            for k, v in parts.items():
                totals[k] = totals[k] + v if k in totals else v
            done += 1
            if done % 20 == 0:
                bar.set_postfix(loss=f"{self.mean_loss(totals, done):.4f}")
            if self.out_of_time(deadline):
                break
        self.mean_loss(totals, done)
        sums = self.world.all_sum([float(v) for v in totals.values()], self.device)  # mean over the processes' windows
        means = {f"train_{k}": v / max(done * self.world.size, 1) for k, v in zip(totals, sums)}
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
        total, count = self.world.all_sum([total, count], self.device)
        return total / max(count, 1)

    def run(self, log_path: Path | None, progress: bool = False, on_epoch=None) -> dict:
        """Epochs until patience, max_epochs or max_minutes; the best weights end in best_state.

        Continues from self.epoch (0, or a resumed state), appending to the log; calls
        on_epoch(self) after every epoch (fit saves the training state there). log_path None
        writes no log (the processes of a distributed run other than rank 0).
        """
        t = self.cfg.train
        start = time.perf_counter() - self.elapsed
        deadline = start + t.max_minutes * 60 if t.max_minutes else math.inf
        with log_path.open("a" if self.epoch else "w", encoding="utf-8") if log_path else io.StringIO() as log_file:
            while self.epoch < t.max_epochs and self.epoch - self.best_epoch < t.patience and not self.out_of_time(deadline):
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
                self.elapsed = time.perf_counter() - start
                if on_epoch is not None:
                    on_epoch(self)
        return {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_loss,
            "train_seconds": round(time.perf_counter() - start, 2),
        }


    def state_dict(self, **extra) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue bit-identically: (tensors, JSON-able state).

        Tensors: current and best weights, optimizer tensors, RNG states; the rest (epoch, best
        loss, elapsed time, optimizer hyperparameters) is plain JSON. No pickle.
        """
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.model.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        tensors.update({f"rng.shard.{j}": g.get_state() for j, g in enumerate(self.generators) if g is not self.generator})
        if torch.cuda.is_available() and any(p.is_cuda for p in self.model.parameters()):
            tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        optim = self.optimizer.state_dict()
        scalars: dict[str, dict] = {}
        for index, entries in optim["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = value
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "elapsed": self.elapsed,
            "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars},
            **extra,
        }
        return tensors, state

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Restore what state_dict saved (the Trainer must be built from the same config)."""
        device = next(self.model.parameters()).device

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.model.load_state_dict(part("model."))
            self.best_state = {k: v.to(device) for k, v in part("best.").items()}
            if self.ema is not None:
                self.ema.model.load_state_dict(part("ema."))
                self.ema.updates = state["ema_updates"]
            optim_state: dict[int, dict] = {}
            for key, value in part("optimizer.").items():
                index, name = key.split(".", 1)
                optim_state.setdefault(int(index), {})[name] = value
            for index, entries in state["optimizer"]["scalars"].items():
                optim_state.setdefault(int(index), {}).update(entries)
            self.optimizer.load_state_dict({"state": optim_state, "param_groups": state["optimizer"]["param_groups"]})
            torch.set_rng_state(tensors["rng.torch"])
            self.generator.set_state(tensors["rng.generator"])
            for j, g in enumerate(self.generators):
                if g is not self.generator:
                    g.set_state(tensors[f"rng.shard.{j}"])
            cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
            self.epoch, self.best_epoch, self.step = state["epoch"], state["best_epoch"], state["step"]
            self.best_loss, self.elapsed = state["best_loss"], state["elapsed"]
        except (KeyError, RuntimeError, ValueError) as exc:
            raise IntraError(f"the training state does not fit this run's config: {str(exc).splitlines()[0][:200]}") from None


def _truncate_log(log_path: Path, epoch: int) -> None:
    """Keep the log lines of epochs <= epoch: later ones were written after the last saved state."""
    if not log_path.is_file():
        return
    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the interruption
    atomic_write(log_path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))


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

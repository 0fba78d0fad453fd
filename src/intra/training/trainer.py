"""The epoch loop: sampling, optimisation, validation, early stopping and the training log.

`fit` builds a Trainer and runs it; `state` saves and restores it for `--resume`.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..core.losses import inpainting_loss
from ..core.model import InpaintingTransformer
from ..data.defects import paste_defects
from ..data.sampling import Batch, WindowSampler, concat_batches
from ..errors import IntraError
from ..evaluation.inpainting import best_fill, fill_errors, squared_error
from ..inference.choice import differences, synthetic_metrics
from ..inference.detector import Detector
from ..runtime import resolve_dtype_name
from . import distributed
from .optim import WeightEMA, build_optimizer, lr_factor, set_lr

log = logging.getLogger(__name__)

# train.select -> the record entry it follows (lower is better)
SELECTION = {"inpaint": "val_inpaint", "loss": "val_loss", "defects": "val_defects_gap"}


class Trainer:
    """The epoch loop: sampling, optimisation, validation, early stopping, the training log."""

    def __init__(
        self,
        model: InpaintingTransformer,
        train_images: torch.Tensor | list[torch.Tensor],
        val_images: torch.Tensor | list[torch.Tensor],
        cfg: Config,
        generator: torch.Generator,
        world: distributed.World | None = None,
    ):
        self.model, self.cfg, self.generator = model, cfg, generator
        self.world = world or distributed.World()
        self.device = train_images[0].device
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
        bf16 = resolve_dtype_name(t.dtype, self.device) == "bf16"
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.val_batches = _validation_batches(val_images, cfg)[self.world.rank :: self.world.size]
        # Inpainting quality on the held-out images as scoring reads them, beside trivial fills (once).
        self.val_images = val_images[self.world.rank :: self.world.size]
        self.fills = fill_errors(val_images, cfg.model.patch_size)
        # train.select = defects: one defect pasted into each held-out image (every process holds them all,
        # so that all choose the same epoch), drawn once from the seed that calibration's choice uses.
        self.pasted = None  # (held-out images, the same with a defect each, masks)
        if t.select == "defects" and len(val_images):
            held_out = list(val_images)
            generator = torch.Generator().manual_seed(t.seed + 2)
            self.pasted = (held_out, *paste_defects(held_out, generator, one_each=True))
        self.optimizer = self.build_optimizer()
        # Weight average (train.ema): validated and kept as the best weights instead of the raw ones.
        self.ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema else None
        self.steps_per_epoch = math.ceil(cfg.train.windows_per_image * len(train_images) / cfg.train.batch_size)
        self.epoch = 0
        self.step = 0  # optimisation steps so far (with the elapsed time, drives the lr schedule)
        self.best_metric, self.best_epoch = math.inf, 0  # the selection metric (train.select), lower is better
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
        return model(batch.patches, batch.covered, batch.positions).view_as(batch.target)  # (n covered, C, K, K)

    def train_step(self, seconds: float = 0.0) -> dict[str, torch.Tensor]:
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
        (loss * self.world.share(len(pred), self.device)).backward()
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
            raise IntraError(
                f"training diverged: loss is {loss} in epoch {self.epoch}, by batch {steps} (try a lower train.lr)"
            )
        return loss

    def clock(self, start: float) -> float:
        """Seconds since `start` by the slowest process's clock, the same on every process: the lr
        schedule and the time budget read it, and processes that read their own clocks would step
        with different learning rates (their weights drifting apart) or stop at different steps."""
        return self.world.max(time.perf_counter() - start, self.device)

    def train_epoch(self, progress: bool, start: float | None = None) -> dict[str, float]:
        """Steps until the epoch is done or the time budget (counted from `start`) is spent; returns
        mean loss terms and steps."""
        self.model.train()
        start = time.perf_counter() if start is None else start
        timed = bool(self.cfg.train.max_minutes)  # untimed, nothing reads the clock (no per-step all-reduce)
        budget = 60 * self.cfg.train.max_minutes if timed else math.inf
        seconds = self.clock(start) if timed else 0.0
        totals: dict[str, torch.Tensor] = {}  # summed on the device: reading a value waits for it
        done = 0
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch}", disable=not progress, leave=False)
        for _ in bar:
            parts = self.train_step(seconds)
            for k, v in parts.items():
                totals[k] = totals[k] + v if k in totals else v
            done += 1
            if done % 20 == 0:
                bar.set_postfix(loss=f"{self.mean_loss(totals, done):.4f}")
            seconds = self.clock(start) if timed else 0.0
            if seconds > budget:
                break
        self.mean_loss(totals, done)
        sums = self.world.all_sum([float(v) for v in totals.values()], self.device)  # mean over the processes' windows
        means = {f"train_{k}": v / max(done * self.world.size, 1) for k, v in zip(totals, sums)}
        return {**means, "steps": done}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The loss on the fixed validation windows (covered as in training) and the inpainting error of the
        held-out images read as scoring reads them, with the trivial fills' errors beside it."""
        model = self.eval_model.eval()
        total, count = 0.0, 0
        for batch in self.val_batches:
            pred = self.forward(model, batch)
            loss, _ = inpainting_loss(pred, batch.target, self.cfg.train.alpha, self.cfg.train.beta)
            total += float(loss) * len(pred)
            count += len(pred)
        errors, reconstructions = torch.zeros(0), None
        if len(self.val_images):  # a process of a distributed run may hold none of the few held-out images
            reconstructions = Detector(model, self.cfg, device=self.device).reconstruct(self.val_images)
            errors = squared_error(reconstructions, self.val_images)
        total, count, error_sum, images = self.world.all_sum(
            [total, count, float(errors.sum()), len(errors)], self.device
        )
        inpaint = error_sum / max(images, 1)
        record = {
            "val_loss": total / max(count, 1),
            "val_inpaint": inpaint,
            "val_inpaint_ratio": inpaint / best_fill(self.fills),
            "val_fills": self.fills,
        }
        if self.pasted is not None:
            record.update(self.pasted_detection(model, reconstructions if self.world.size == 1 else None))
        return record

    def pasted_detection(self, model: InpaintingTransformer, normal_reconstructions=None) -> dict:
        """How the raw map of score.* (no training statistics) finds the defects pasted into the held-out
        images: {"val_defects": pixel AUROC, AUPRO, image AUROC; "val_defects_gap": 1 - mean of the first two}.

        Why select on it: on magnetic tile the inpainting error kept falling over a run's last epochs
        while its detection of real defects fell, and the pasted defects' pixel metrics fell with it;
        with one defect per image the criterion is noisier, so it is an option, not the preset's
        (docs/benchmarks.md, "Which epoch to keep"). `normal_reconstructions`: the held-out images'
        reconstructions when validate has them all already.
        """
        detector = Detector(model, self.cfg, device=self.device)
        normal, defective, masks = self.pasted
        maps = []
        for images, reconstructions in ((normal, normal_reconstructions), (defective, None)):
            if reconstructions is None:
                reconstructions = detector.reconstruct(images)
            maps.append(differences(self.cfg, list(zip(images, reconstructions))))
        found = synthetic_metrics(*maps, masks)
        shown = {key: round(found[key], 4) for key in ("pixel_auroc", "aupro", "image_auroc")}
        return {"val_defects": shown, "val_defects_gap": 1 - found["map"]}

    def run(self, log_path: Path | None, progress: bool = False, on_epoch=None) -> dict:
        """Epochs until patience, max_epochs or max_minutes; the best weights end in best_state.

        Continues from self.epoch (0, or a resumed state), appending to the log; calls
        on_epoch(self) after every epoch (fit saves the training state there). log_path None
        writes no log (the processes of a distributed run other than rank 0).
        """
        t = self.cfg.train
        start = time.perf_counter() - self.elapsed
        with log_path.open("a" if self.epoch else "w", encoding="utf-8") if log_path else io.StringIO() as log_file:
            while (
                self.epoch < t.max_epochs
                and self.epoch - self.best_epoch < t.patience
                and not (t.max_minutes and self.clock(start) > 60 * t.max_minutes)
            ):
                self.epoch += 1
                record = {"epoch": self.epoch, **self.train_epoch(progress, start)}
                record.update(self.validate())
                record["seconds"] = round(time.perf_counter() - start, 3)
                metric = record[SELECTION[t.select]]
                improved = metric < self.best_metric
                if improved:
                    self.best_metric, self.best_epoch = metric, self.epoch
                    self.best_state = copy.deepcopy(self.eval_model.state_dict())
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                line = (
                    f"epoch {self.epoch:4d}  train {record.get('train_loss', math.nan):.5f}  val {record['val_loss']:.5f}  "
                    f"inpaint {record['val_inpaint']:.5f} ({record['val_inpaint_ratio']:.2f} x the best fill)"
                    + (f"  pasted defects {1 - record['val_defects_gap']:.3f}" if "val_defects_gap" in record else "")
                    + f"{'  *' if improved else ''}  {record['seconds']:.0f}s"
                )
                log.info(line)
                if progress:
                    tqdm.write(line)
                self.elapsed = time.perf_counter() - start
                if on_epoch is not None:
                    on_epoch(self)
        return {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "selected_by": SELECTION[t.select],
            "best_metric": self.best_metric,
            "val_fills": self.fills,
            "train_seconds": round(time.perf_counter() - start, 2),
        }


def _validation_batches(val_images: torch.Tensor, cfg: Config) -> list:
    """A fixed set of validation windows (no augmentation), drawn once from a dedicated seed, covered
    as training covers them (one patch, or the lattice of train.cover_spacing): the task being learned."""
    sampler = WindowSampler(val_images, cfg, augment=False)
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    total = cfg.train.val_windows_per_image * len(val_images)
    sizes = [min(cfg.train.batch_size, total - i) for i in range(0, total, cfg.train.batch_size)]
    return [sampler.sample(n, generator) for n in sizes]

"""What the cpu preset's inference and training cost under the options tried for speed, in one process.

    python benchmarks/cpu_options.py --threads 2

Prints, on random weights and random 128 px images (the `cpu` preset's network):

- attention over one chunk's windows (533 windows of 49 tokens, 4 heads): the fused kernel with
  MFSA's unequal q/k and v widths (what PyTorch falls back from), explicit products over the whole
  chunk, the fused kernel with q/k zero-padded to v's width (`attend`'s "sdpa"), and explicit
  products in cache-sized slices of windows (`attend`'s "matmul", its choice on a CPU);
- the preset's linear layer shapes through oneDNN, with and without a fused GELU (GFLOP/s);
- where reconstruction time goes (torch profiler, self time by operator group);
- ms per image of `Detector.reconstruct` by chunk size, with torch.compile, and with bf16;
- training windows per second of `Trainer.train_step` by batch size, in fp32, under bf16 autocast
  and under torch.compile (fp32 and bf16); `--training-only` prints only these;
- where a training step's time goes, by operator group, and the windows per second the step would
  reach if everything but its matrix products took no time (`--training-profile` prints only this).

Best of 3 repetitions after a warm-up (attention: the median of alternating rounds); an experiment
script for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import profile

from intra.config import preset
from intra.core.model import CPU_SLICE_WINDOWS, InpaintingTransformer, attend
from intra.inference.detector import Detector
from intra.runtime import resolve_dtype_name, reuse_freed_memory
from intra.training.trainer import Trainer


def best_ms(fn, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def attention_kernels(rounds: int = 15) -> None:
    """The cpu preset's attention over one chunk, as the blocks call it: (533, 49, 32) q and k, (533, 49, 64) v.

    The four ways are timed in turn, `rounds` times each, and the median kept: one timing swings by a
    fifth on a shared 2-core host, alternating puts that swing on every way alike.
    """
    q, k, v = torch.rand(533, 49, 32), torch.rand(533, 49, 32), torch.rand(533, 49, 64)
    heads = [t.unflatten(-1, (4, -1)).transpose(1, 2) for t in (q, k, v)]
    ways = {
        "sdpa with unequal widths": lambda: F.scaled_dot_product_attention(*heads),
        "explicit products over the whole chunk": lambda: (
            ((heads[0] @ heads[1].transpose(-2, -1)) * 8**-0.5).softmax(-1) @ heads[2]
        ),
        "sdpa with q, k padded": lambda: attend(q, k, v, 4, kernel="sdpa"),
        f"explicit products in slices of {CPU_SLICE_WINDOWS} windows": lambda: attend(q, k, v, 4, kernel="matmul"),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            times[name].append(best_ms(way, repeat=1))
    medians = ", ".join(f"{name} {statistics.median(ms):.1f} ms" for name, ms in times.items())
    print(f"attention, 533 windows, median of {rounds} alternating rounds: {medians}")


def linear_layers() -> None:
    """The cpu preset's linear layers through oneDNN on a chunk of 128 windows (6272 rows), with and without
    the fused exact GELU that q, k and the feed-forward's first layer carry: GFLOP/s by shape."""
    rows = 128 * 49
    for inputs, outputs in ((64, 128), (64, 256), (128, 32), (64, 64), (256, 64)):
        x, weight = torch.rand(rows, inputs), torch.rand(outputs, inputs)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        rates = []
        for act, algorithm in (("none", ""), ("gelu", "none")):

            def linear(x=x, packed=packed, act=act, algorithm=algorithm):
                return torch.ops.mkldnn._linear_pointwise(x, packed, None, act, [], algorithm)

            ms = best_ms(linear, repeat=10)
            rates.append(f"{2 * rows * inputs * outputs / ms / 1e6:.0f}")
        print(f"linear {inputs} -> {outputs}, 128 windows: {rates[0]} GFLOP/s, with the fused GELU {rates[1]} GFLOP/s")


def reconstruction_profile(model: InpaintingTransformer, cfg, images: torch.Tensor) -> None:
    detector = Detector(model, cfg, device="cpu", dtype="fp32")
    detector.reconstruct(images)
    with profile() as prof:
        detector.reconstruct(images)
    times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(times.values())
    linear = sum(t for name, t in times.items() if "linear" in name or name in ("aten::addmm", "aten::mm"))
    attention = sum(t for name, t in times.items() if any(op in name for op in ("attention", "softmax", "bmm")))
    print(
        f"reconstruction profile: linear layers {100 * linear / total:.0f} %, attention {100 * attention / total:.0f} %,"
        f" the rest {100 * (total - linear - attention) / total:.0f} %"
    )


def reconstruction_options(model: InpaintingTransformer, cfg, images: torch.Tensor) -> None:
    for chunk in (64, 128, 256, 533, 1024):
        cfg.score.chunk_windows = chunk
        detector = Detector(model, cfg, device="cpu", dtype="fp32")
        ms = best_ms(lambda d=detector: d.reconstruct(images)) / len(images)
        print(f"reconstruct, chunks of {detector.chunk_windows()} windows: {ms:.1f} ms/image")
    cfg.score.chunk_windows = 2048
    for options in ({"compile": True, "dtype": "fp32"}, {"dtype": "bf16"}):
        detector = Detector(model, cfg, device="cpu", **options)
        start = time.perf_counter()
        detector.reconstruct(images)
        warm = time.perf_counter() - start
        ms = best_ms(lambda d=detector: d.reconstruct(images)) / len(images)
        print(f"reconstruct, {options} ({detector.backend.describe()}): {ms:.1f} ms/image, first call {warm:.1f} s")


def preset_trainer(batch: int, dtype: str = "", compiled: bool = False) -> Trainer:
    """A Trainer of the cpu preset's network on 16 random 128 px images, at `batch` windows a step, in
    `dtype` ("" = the preset's own), compiled on request."""
    cfg = preset("cpu")
    cfg.model.channels, cfg.train.batch_size, cfg.train.compile = 3, batch, compiled
    cfg.train.dtype = dtype or cfg.train.dtype
    torch.manual_seed(0)
    images = torch.rand(16, 3, 128, 128)
    return Trainer(InpaintingTransformer(cfg.model), images, images[:2], cfg, torch.Generator().manual_seed(0))


def training_batches() -> None:
    runs = [*(("fp32", b, False) for b in (32, 64, 128, 256)), *(("bf16", b, False) for b in (32, 64, 256))]
    for dtype, batch, compiled in [*runs, ("fp32", 32, True), ("fp32", 64, True), ("bf16", 64, True)]:
        trainer = preset_trainer(batch, dtype, compiled)
        steps = max(6, 2048 // batch)
        if compiled:  # compile (and recompile for the lattice's varying covered counts) before timing
            for _ in range(steps):
                trainer.train_step()
        ms = best_ms(lambda t=trainer, n=steps: [t.train_step() for _ in range(n)], 2)
        label = f"{dtype}, compiled" if compiled else dtype
        print(f"training, batch {batch}, {label}: {steps * batch / ms * 1000:.0f} windows/s")


# Operator groups of a training step's profile (self time); what matches none is "the rest".
STEP_GROUPS = {
    "matrix products": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "mkldnn::_linear_pointwise"),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::clone"),
    "GELU and its gradient": ("aten::gelu", "aten::gelu_backward"),
    "softmax and its gradient": ("aten::_softmax", "aten::_softmax_backward_data"),
    "layer norms and their gradients": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
}


def training_profile(batches: tuple[int, ...] = (64, 256), steps: int = 10) -> None:
    """Self time of the preset's training step (its own dtype) by operator group, and the step's bound.

    The bound is the measured windows per second divided by the products' share of the profiled
    time: the rate if casts, activations, norms, the loss, sampling and the optimizer were free and
    the products ran as they do now. Shares come from the profiler (which slows small operators more
    than large ones, so the products' share is if anything understated and the bound overstated).
    """
    for batch in batches:
        trainer = preset_trainer(batch)
        n = max(steps, 2560 // batch)
        rate = n * batch / best_ms(lambda t=trainer, n=n: [t.train_step() for _ in range(n)], 3) * 1000
        with profile() as prof:
            for _ in range(n):
                trainer.train_step()
        times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        total = sum(times.values())
        shares = {group: sum(times.get(op, 0.0) for op in ops) / total for group, ops in STEP_GROUPS.items()}
        shares["the rest"] = 1 - sum(shares.values())
        dtype = resolve_dtype_name(trainer.cfg.train.dtype, torch.device("cpu"))
        listed = ", ".join(f"{group} {100 * share:.0f} %" for group, share in shares.items())
        print(f"training step, batch {batch}, {dtype}: {rate:.0f} windows/s; self time: {listed}")
        print(f"  if only the matrix products took time: {rate / shares['matrix products']:.0f} windows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--training-only", action="store_true", help="time only the training steps")
    parser.add_argument("--training-profile", action="store_true", help="only where a training step's time goes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the intra command does
    if args.training_only:
        training_batches()
        return
    if args.training_profile:
        training_profile()
        return
    cfg = preset("cpu")
    cfg.model.channels = 3
    torch.manual_seed(0)
    model = InpaintingTransformer(cfg.model).eval()
    images = torch.rand(8, 3, 128, 128)
    attention_kernels()
    linear_layers()
    reconstruction_profile(model, cfg, images)
    reconstruction_options(model, cfg, images)
    training_batches()


if __name__ == "__main__":
    main()

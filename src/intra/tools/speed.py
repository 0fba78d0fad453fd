"""`intra bench`: inference and training throughput, held against the machine's own matmul ceiling.

One run, one device, one dtype: (1) the batched inference of `Detector.reconstruct` on random
images (with the backend and dtype that actually ran): windows (forward passes)/s, ms per image, peak memory, achieved GFLOP/s; with
`score.cover_spacing` = s a pass covers a lattice s apart and reads the patches it owns, so an image
takes fewer passes; (2) the naive
loop, one window per forward pass and one patch per window, on a few windows, and the speed-up
over it per image; (3) training steps (sampling, forward,
backward, Adam) of `Trainer.train_step`; (4) a large matrix product in the same dtype, the ceiling
the achieved rates are compared with. FLOPs are counted from the config by `window_flops`
(matrix products only, a multiply-add = 2 FLOPs; tested against torch.utils.flop_counter).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import CPU_TRAIN_BATCH, Config, ModelConfig, apply_overrides, preset
from ..core.model import InpaintingTransformer
from ..core.windows import Plan, one_patch_plan, patchify, unpatchify
from ..inference import packed
from ..inference.detector import Detector
from ..runtime import machine, resolve_device, resolve_dtype, resolve_dtype_name

log = logging.getLogger(__name__)


def window_flops(m: ModelConfig, read: float = 1) -> float:
    """Forward FLOPs of the network for one window that returns `read` patches: every matrix product,
    2 FLOPs per multiply-add.

    Per block and token: q and k (MFSA: D -> 2D -> D/2 each, 3 D^2 multiply-adds; MSA: D^2 each),
    v and the output projection (D^2 each), the feed-forward network (2 * mlp_ratio * D^2), and
    the attention itself (T * D/2 for the scores with MFSA's narrower q/k, T * D for the values).
    Plus the patch embedding (P * D per token) and the head (D * P per read patch; once with the
    mean head). With the covered-token head the last block runs its queries, attention, output
    projection and FFN for the read tokens only (`Block.forward(select=...)`), so those are
    counted `read` times there, not T: the work done, not the work of a whole window. (Compiled
    inference runs the whole last block; it is counted the same, which understates its rate.)
    """
    t, d, p = m.window**2, m.dim, m.patch_dim
    qk_width = d // 2 if m.attention == "mfsa" else d
    q = 3 * d * d if m.attention == "mfsa" else d * d  # one of q, k
    keys = q + d * d  # k and v: every token, every block
    queries = q + d * d + 2 * int(m.mlp_ratio * d) * d + t * qk_width + t * d  # q, proj, FFN, attention
    last = t if m.head == "mean" else read  # tokens the last block computes outputs for
    blocks = (m.depth - 1) * t * (keys + queries) + t * keys + last * queries
    head = d * p * (1 if m.head == "mean" else read)
    return 2 * (t * p * d + blocks + head)


def train_window_flops(m: ModelConfig, covered: float = 1) -> float:
    """Forward + backward FLOPs per training window with `covered` covered patches: 3x the forward,
    less the patch embedding's input gradient (the pixels need none)."""
    t = m.window**2
    return 3 * window_flops(m, covered) - 2 * t * m.patch_dim * m.dim


def covered_per_window(cfg: Config) -> float:
    """Covered patches per training window: 1, or (L/s)^2 on average over the lattice's random phases."""
    s = cfg.train.cover_spacing
    return (cfg.model.window / s) ** 2 if s else 1.0


@dataclass
class BenchOptions:
    preset: str = "paper"
    image_size: int = 256
    device: str = "cpu"
    batch: int = 0  # images per inference call; 0 = 1 on the CPU, 8 on a GPU
    dtype: str = "auto"  # auto = bf16 where the device computes it natively, as `intra` runs by default
    compile: bool = False
    repeat: int = 3  # timed repetitions of each measurement, after one warm-up
    naive_windows: int = 0  # windows timed in the naive loop; 0 = 16 on the CPU, 64 on a GPU
    train_batch: int = 0  # windows per training step; 0 = the preset's, at most CPU_TRAIN_BATCH on the CPU
    overrides: dict = field(default_factory=dict)  # config keys, e.g. {"score.chunk_windows": 256}


def bench_config(opts: BenchOptions) -> Config:
    cfg = preset(opts.preset)
    cfg.model.image_size = opts.image_size
    cfg.model.channels = 3  # RGB: the larger of the two cases
    cfg.train.dtype = opts.dtype
    cfg.train.compile = opts.compile
    cfg.train.device = opts.device
    return apply_overrides(cfg, opts.overrides)


def run_bench(opts: BenchOptions) -> dict:
    """All measurements of `intra bench`; returns one flat dict (see `docs/benchmarks.md`)."""
    device = resolve_device(opts.device)
    cpu = device.type == "cpu"
    opts = replace(opts, dtype=resolve_dtype_name(opts.dtype, device))
    cfg = bench_config(opts)
    torch.manual_seed(0)
    detector = Detector(InpaintingTransformer(cfg.model), cfg, device=device, dtype=opts.dtype, compile=opts.compile)
    batch = opts.batch or (1 if cpu else 8)
    images = torch.rand(batch, cfg.model.channels, opts.image_size, opts.image_size, device=device)
    result: dict = {
        "preset": opts.preset,
        "image_size": opts.image_size,
        "activation": cfg.model.activation,
        "device": device_name(device),
        "dtype": opts.dtype,
        "compile": opts.compile,
        "threads": torch.get_num_threads() if cpu else None,
        **{f"ran_{key}": value for key, value in detector.backend.describe().items()},  # what actually ran
    }
    result.update(inference_throughput(detector, images, opts.repeat))
    result.update(naive_throughput(detector, images[:1], opts.naive_windows or (16 if cpu else 64), opts.repeat))
    naive_ms_per_image = 1000 * cfg.model.grid**2 / result["naive_windows_per_s"]  # the paper: one pass per patch
    result["speedup"] = naive_ms_per_image / result["ms_per_image"]
    result.update(train_throughput(cfg, opts, device))
    result.update(matmul_ceiling(device, resolve_dtype(opts.dtype)))
    # The fp32 ceiling too, whatever ran: bf16 halves the products' cost, and the targets are set in fp32.
    fp32 = result if opts.dtype == "fp32" else matmul_ceiling(device, torch.float32)
    result["matmul_fp32_gflops"] = fp32["matmul_gflops"]
    for prefix, gflops in (("", result["achieved_gflops"]), ("train_", result["train_gflops"])):
        result[f"{prefix}fraction_of_matmul"] = gflops / result["matmul_gflops"]
        result[f"{prefix}fraction_of_fp32_matmul"] = gflops / result["matmul_fp32_gflops"]
    return result


def inference_throughput(detector: Detector, images: torch.Tensor, repeat: int) -> dict:
    """Batched `Detector.reconstruct` of `images`: rate, time per image, FLOP rate, peak memory."""
    m = detector.cfg.model
    plan = detector.plan((m.grid, m.grid))
    per_image = plan.passes
    reads = float(plan.read.sum()) / per_image  # patches each pass returns, on average
    log.info("inference: %d images of %d windows, %d repetitions", len(images), per_image, repeat)
    start = time.perf_counter()
    detector.reconstruct(images)  # warm-up (and compilation)
    synchronize(detector.device)
    warmup = time.perf_counter() - start
    reset_peak_memory(detector.device)
    faults = page_faults()
    seconds = timed(lambda: detector.reconstruct(images), repeat, detector.device)
    faults = None if faults is None else (page_faults() - faults) / repeat
    windows_per_s = len(images) * per_image / seconds
    return {
        "batch_images": len(images),
        "windows_per_image": per_image,
        "patches_per_window": int(plan.covered.sum(dim=1).max()),  # the most patches a pass covers
        "covered_per_window": float(plan.covered.sum()) / per_image,
        "chunk_windows": detector.chunk_windows(),
        "warmup_s": warmup,
        "peak_mem_mb": peak_memory_mb(detector.device),
        "page_faults_per_call": faults,
        "windows_per_s": windows_per_s,
        "ms_per_image": 1000 * seconds / len(images),
        "reads_per_window": reads,
        "gflop_per_window": window_flops(m, reads) / 1e9,
        "achieved_gflops": windows_per_s * window_flops(m, reads) / 1e9,
    }


@torch.inference_mode()
def naive_reconstruct(
    model: InpaintingTransformer, images: torch.Tensor, plan: Plan, limit: int | None = None
) -> torch.Tensor:
    """The reference loop: one window per forward pass of the plain module, pass by pass through `plan`.

    (B, C, H, W) -> (B, C, H, W). What unofficial versions do with the paper's plan; with the same
    plan as `Detector.reconstruct` it is the like-for-like check of the engine. With `limit`, only
    the first `limit` passes run (the rest stays 0): `intra bench` times a few passes of it.
    """
    m = model.cfg
    patches = patchify(images, m.patch_size)  # (B, M*N, P)
    out = torch.zeros_like(patches)
    plan = plan.to(images.device)
    done = 0
    for b in range(len(images)):
        for tokens, covered, read in zip(plan.tokens, plan.covered, plan.read):
            if limit is not None and done >= limit:
                break
            pixels = model(patches[b, tokens][None], covered[None], tokens[None])  # (covered, P)
            out[b, tokens[read]] = pixels[read[covered]]
            done += 1
    return unpatchify(out, m.channels, plan.grid)


def naive_throughput(detector: Detector, image: torch.Tensor, windows: int, repeat: int) -> dict:
    """The naive loop (`naive_reconstruct` of the paper's one-patch plan, plain module) on `windows` windows."""
    m = detector.cfg.model
    plan = one_patch_plan((m.grid, m.grid), m.window)
    windows = min(windows, plan.passes)  # an image holds no more: the rate divides by what ran
    log.info("naive loop: %d windows, one per forward pass", windows)
    model = detector.model
    naive_reconstruct(model, image, plan, limit=2)  # warm-up
    seconds = timed(lambda: naive_reconstruct(model, image, plan, limit=windows), repeat, detector.device)
    return {"naive_windows": windows, "naive_windows_per_s": windows / seconds}


def train_throughput(cfg: Config, opts: BenchOptions, device: torch.device) -> dict:
    """Windows/s of `Trainer.train_step` (sampling, forward, loss, backward, Adam) on random images."""
    trainer = bench_trainer(cfg, opts, device)
    log.info("training: batches of %d windows, %d repetitions", cfg.train.batch_size, opts.repeat)
    start = time.perf_counter()
    trainer.train_step()  # warm-up (and compilation)
    trainer.train_step()
    synchronize(device)
    warmup = time.perf_counter() - start
    seconds = timed(lambda: trainer.train_step(), opts.repeat, device)
    windows_per_s = cfg.train.batch_size / seconds
    covered = covered_per_window(cfg)
    return {
        "train_batch": cfg.train.batch_size,
        "train_covered_per_window": covered,
        "train_gflop_per_window": train_window_flops(cfg.model, covered) / 1e9,
        "train_warmup_s": warmup,
        "train_windows_per_s": windows_per_s,
        "train_gflops": windows_per_s * train_window_flops(cfg.model, covered) / 1e9,
    }


def bench_trainer(cfg: Config, opts: BenchOptions, device: torch.device):
    """A Trainer on 8 random images, with the benchmark's batch size."""
    from ..training.trainer import Trainer

    cpu = device.type == "cpu"
    cfg.train.batch_size = opts.train_batch or (
        min(CPU_TRAIN_BATCH, cfg.train.batch_size) if cpu else cfg.train.batch_size
    )
    size = cfg.model.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, cfg.model.channels, size, size, generator=generator).to(device)
    model = InpaintingTransformer(cfg.model).to(device)
    return Trainer(model, images, images[:1], cfg, generator)


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> dict:
    """GFLOP/s of a large square matrix product in `dtype`, through aten and (CPU) through oneDNN.

    The ceiling is the faster of the two: on CPU-2, aten's fp32 product (MKL) reaches less than
    half of what oneDNN does, and the network runs on oneDNN.
    """
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3
    out = {"matmul_size": n, "matmul_aten_gflops": flops / timed(lambda: a @ b, 5, device, warmup=True) / 1e9}
    out["matmul_gflops"] = out["matmul_aten_gflops"]
    if device.type == "cpu" and packed.available(dtype):
        weight = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), n)

        def onednn():
            return torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")

        out["matmul_onednn_gflops"] = flops / timed(onednn, 5, device, warmup=True) / 1e9
        out["matmul_gflops"] = max(out["matmul_gflops"], out["matmul_onednn_gflops"])
    return out


def timed(fn, repeat: int, device: torch.device, warmup: bool = False) -> float:
    """Median seconds of `repeat` calls of fn (device work included)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Restart peak-memory tracking: CUDA's allocator statistics, or the process's peak RSS (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        log.info("cannot reset the peak RSS: peak_mem_mb is the process's peak so far")


def page_faults() -> int | None:
    """This process's minor page faults so far (pages the OS handed it, zeroed); None where unknown (Windows).

    A forward pass whose freed activations went back to the OS faults them in again on the next
    call; `allocator.reuse_freed_memory` stops that, and this count shows whether it did.
    """
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated, or the process's peak resident set (VmHWM) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    described = machine(device)
    return (
        f"cpu ({described['cpu']}, {platform.machine()}, {described['threads']} threads, {described['cpu_capability']})"
    )


def _fp32_share(r: dict, key: str) -> str:
    """The share of the fp32 ceiling, for a run whose own ceiling was another dtype's; else nothing."""
    return "" if r["dtype"] == "fp32" else f", {100 * r[key]:.0f}% of the fp32 ceiling"


def format_table(r: dict) -> str:
    """The human-readable summary of a `run_bench` result."""
    ceiling = (
        f"{r['matmul_gflops']:.0f} GFLOP/s ({r['matmul_size']}^3 in {r['dtype']}, aten {r['matmul_aten_gflops']:.0f}"
    )
    ceiling += f", oneDNN {r['matmul_onednn_gflops']:.0f})" if "matmul_onednn_gflops" in r else ")"
    if r["dtype"] != "fp32":
        ceiling += f"; fp32 {r['matmul_fp32_gflops']:.0f} GFLOP/s"
    peak = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f} MB"
    faults = "n/a" if r["page_faults_per_call"] is None else f"{r['page_faults_per_call']:.0f}"
    rows = [
        (
            "setup",
            f"{r['preset']} preset ({r['activation']}), {r['image_size']} px, {r['windows_per_image']} windows/image "
            f"({r['covered_per_window']:.1f} patches covered, {r['reads_per_window']:.1f} read per window), "
            f"{r['device']}, {r['dtype']}" + (", compiled" if r["compile"] else ""),
        ),
        (
            "FLOPs per window",
            f"{r['gflop_per_window']:.3f} GFLOP inference ({r['reads_per_window']:.1f} patches read), "
            f"{r['train_gflop_per_window']:.3f} training ({r['train_covered_per_window']:.1f} covered)",
        ),
        ("matmul ceiling", ceiling),
        (
            "inference",
            f"{r['windows_per_s']:.1f} windows/s, {r['ms_per_image']:.1f} ms/image, {r['achieved_gflops']:.0f} GFLOP/s "
            f"= {100 * r['fraction_of_matmul']:.0f}% of the ceiling" + _fp32_share(r, "fraction_of_fp32_matmul"),
        ),
        (
            "",
            f"ran on {r['ran_backend']} ({r['ran_dtype']}), batch {r['batch_images']} images, "
            f"chunks of {r['chunk_windows']} windows, peak memory {peak}, {faults} page faults per call",
        ),
        (
            "naive loop",
            f"{r['naive_windows_per_s']:.1f} windows/s (one window per forward pass): speed-up per image {r['speedup']:.1f}x",
        ),
        (
            "training",
            f"{r['train_windows_per_s']:.1f} windows/s, {r['train_gflops']:.0f} GFLOP/s "
            f"= {100 * r['train_fraction_of_matmul']:.0f}% of the ceiling"
            + _fp32_share(r, "train_fraction_of_fp32_matmul")
            + f" (batch {r['train_batch']}, {r['dtype']})",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in rows)

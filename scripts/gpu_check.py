"""One device run: correctness on the GPU, then the speed of the paper and cpu presets.

    PYTHONPATH=src python3 scripts/gpu_check.py            # on the GPU machine; results under $OUT
    PYTHONPATH=src python3 scripts/gpu_check.py --device cpu --quick   # a dry run of the script here

Checks (fp32 batched vs naive reconstruction, bf16 vs fp32 anomaly maps), then times in one process
the pieces `intra bench` is made of (speed.inference_throughput, naive_throughput,
train_throughput, matmul_ceiling) for several variants: eager and torch.compile, chunk sizes,
training batch sizes. Variants run in order of importance and are skipped when the time budget
runs short. Every result is appended to OUT/gpu_check.jsonl as soon as it exists; a short table
is printed last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from intra.config import preset
from intra.core.model import InpaintingTransformer
from intra.inference.calibration import difference_statistics
from intra.inference.detector import Detector
from intra.tools import speed
from intra.tools.speed import BenchOptions, bench_config

log = logging.getLogger("gpu_check")


def lively(cfg, seed: int = 0) -> InpaintingTransformer:
    """A random network whose output depends strongly on its input (as in tests/test_inference.py)."""
    torch.manual_seed(seed)
    model = InpaintingTransformer(cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(
                1.0 if name.endswith(("norm1.weight", "norm2.weight")) else 0.0, 0.15 if cfg.model.dim < 128 else 0.05
            )
    model.set_pixel_stats(torch.full((cfg.model.channels,), 0.5), torch.full((cfg.model.channels,), 0.25))
    return model


def correctness(device: torch.device, quick: bool) -> list[dict]:
    """Like with like: the engine against the pass-by-pass loop of the same plan (fp32, max abs diff), and
    bf16 against fp32 anomaly maps (relative L2 error), each row naming the backend and dtype that ran."""
    rows = []
    for name, size in (("cpu", 64), ("paper", 128 if quick else 256)):
        cfg = preset(name)
        cfg.model.image_size = size
        cfg.model.channels = 3
        model = lively(cfg)
        fp32 = Detector(model, cfg, device=device, dtype="fp32")
        bf16 = Detector(model, cfg, device=device, dtype="bf16")
        images = torch.rand(2, 3, size, size, device=device)
        batched = fp32.reconstruct(images)
        naive = speed.naive_reconstruct(fp32.model, images[:1], fp32.plan((cfg.model.grid, cfg.model.grid)))
        [(fp32.mean_map, fp32.std_map)] = difference_statistics(fp32, [torch.rand(2, 3, size, size, device=device)])
        bf16.mean_map, bf16.std_map = fp32.mean_map, fp32.std_map  # the same normalisation (score.zscore too)
        maps32, _ = fp32.predict(images)
        maps16, _ = bf16.predict(images)
        rows.append(
            {
                "check": f"{name} preset {size}px, {fp32.plan((cfg.model.grid, cfg.model.grid)).passes} passes per image",
                "fp32_ran": fp32.backend.describe(),
                "bf16_ran": bf16.backend.describe(),
                "batched_vs_naive_max_abs": float((batched[:1] - naive).abs().max()),
                "reconstruction_std": float(naive.std()),
                "bf16_map_rel_err": float((maps16 - maps32).norm() / maps32.norm()),
            }
        )
        log.info("correctness %s", rows[-1])
    return rows


def inference_variant(
    name: str, size: int, device: torch.device, dtype: str, compile: bool, batch: int, chunk: int
) -> dict:
    cfg = bench_config(BenchOptions(name, size, str(device), dtype=dtype, compile=compile))
    cfg.score.chunk_windows, cfg.score.memory_mb = chunk, 1e6  # the chunk is the variable here
    torch.manual_seed(0)
    detector = Detector(InpaintingTransformer(cfg.model), cfg, device=device, dtype=dtype, compile=compile)
    images = torch.rand(batch, 3, size, size, device=device)
    row = {
        "kind": "inference",
        "preset": name,
        "image_size": size,
        "dtype": dtype,
        "compile": compile,
        "batch": batch,
        "chunk": chunk,
    }
    row.update(speed.inference_throughput(detector, images, repeat=5))
    row["command"] = (
        f"intra bench --preset {name} --image-size {size} --device cuda --dtype {dtype} --batch {batch}"
        + (" --compile" if compile else "")
        + f" --set score.chunk_windows={chunk} --set score.memory_mb=1e6"
    )
    return row


def train_variant(name: str, size: int, device: torch.device, dtype: str, compile: bool, batch: int) -> dict:
    opts = BenchOptions(name, size, str(device), dtype=dtype, compile=compile, train_batch=batch, repeat=5)
    row = {"kind": "training", "preset": name, "image_size": size, "dtype": dtype, "compile": compile, "batch": batch}
    row.update(speed.train_throughput(bench_config(opts), opts, device))
    return row


def train_phases(
    name: str, size: int, device: torch.device, dtype: str, compile: bool, batch: int, steps: int = 5
) -> dict:
    """Median seconds of each part of a training step, with the device synchronised between parts."""
    opts = BenchOptions(name, size, str(device), dtype=dtype, compile=compile, train_batch=batch)
    trainer = speed.bench_trainer(bench_config(opts), opts, device)
    t = trainer.cfg.train
    for _ in range(2):
        trainer.train_step()
    times: dict[str, list[float]] = {}

    def tick(label: str, begin: float) -> float:
        speed.synchronize(device)
        now = time.perf_counter()
        times.setdefault(label, []).append(now - begin)
        return now

    for _ in range(steps):
        speed.synchronize(device)
        now = time.perf_counter()
        batch_ = trainer.sample()
        now = tick("sample", now)
        with trainer.autocast:
            pred = trainer.forward(trainer.network, batch_)  # one or several covered patches per window
        now = tick("forward", now)
        loss, _ = trainer.loss(pred.float(), batch_.target, t.alpha, t.beta)
        now = tick("loss", now)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        now = tick("backward", now)
        trainer.optimizer.step()
        tick("adam", now)
    row = {"kind": "phases", "preset": name, "dtype": dtype, "compile": compile, "batch": batch}
    row.update({k: round(1000 * sorted(v)[len(v) // 2], 3) for k, v in times.items()})  # ms
    return row


def profiled(label: str, fn, out: Path, steps: int = 3) -> dict:
    """torch.profiler over `steps` calls of fn: top kernels by device time, host syncs, to a file."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    speed.synchronize(torch.device("cuda")) if torch.cuda.is_available() else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    device_time = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    total = sum(device_time(e) for e in events) or 1
    top = sorted(events, key=device_time, reverse=True)[:12]
    syncs = (
        sum(
            e.count
            for e in events
            if "Synchronize" in e.key or (torch.cuda.is_available() and e.key == "aten::_local_scalar_dense")
        )
        / steps
    )
    sort = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    with (out / f"profile_{label}.txt").open("w") as f:
        f.write(
            events.table(sort_by=sort, row_limit=40)
            + "\n\n"
            + events.table(sort_by="self_cpu_time_total", row_limit=40)
        )
    return {
        "kind": "profile",
        "label": label,
        "wall_ms": round(1000 * wall, 3),
        "device_busy_ms": round(total / 1000 / steps, 3),
        "host_syncs_per_call": syncs,
        "top": [(e.key[:60], round(100 * device_time(e) / total, 1)) for e in top],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    parser.add_argument(
        "--budget-s", type=float, default=400, help="stop starting new variants after this many seconds"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a dry run on the CPU")
    parser.add_argument(
        "--part",
        default="full",
        choices=["full", "focus"],
        help="full: everything; focus: profiles and the key variants",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        handlers=[logging.FileHandler(out / "gpu_check.log"), logging.StreamHandler(sys.stderr)],
    )
    for name in ("cache_size_limit", "recompile_limit"):  # many shapes of one compiled function in one process
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    device = torch.device(args.device)
    start = time.time()
    results: list[dict] = []

    def record(row: dict) -> None:
        row["t_s"] = round(time.time() - start, 1)
        results.append(row)
        with (out / "gpu_check.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("%s", row)

    def attempt(fn, *a) -> None:
        if time.time() - start > args.budget_s:
            log.info("skipped (time budget): %s %s", fn.__name__, a)
            return
        try:
            record(fn(*a))
        except Exception as exc:  # one failing variant must not lose the others
            log.exception("failed: %s %s", fn.__name__, a)
            record({"kind": "error", "what": f"{fn.__name__}{a}", "error": repr(exc)[:300]})

    env = {"kind": "env", "torch": torch.__version__, "device": speed.device_name(device)}
    if device.type == "cuda":
        env["smi"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
    record(env)
    for row in correctness(device, args.quick):
        record({"kind": "check", **row})

    q = args.quick
    paper = ("cpu", 64) if q else ("paper", 256)  # a dry run on a CPU times the small network only
    small = ("cpu", 64 if q else 128)
    if args.part == "focus":
        focus(args, device, paper, small, attempt, record, out)
        print(summary(results))
        return 0
    record({"kind": "matmul", "dtype": "bf16", **speed.matmul_ceiling(device, torch.bfloat16)})
    record({"kind": "matmul", "dtype": "fp32", **speed.matmul_ceiling(device, torch.float32)})
    # The full `intra bench` (every key), eager bf16.
    attempt(
        lambda: {
            "kind": "bench",
            **speed.run_bench(
                BenchOptions(*paper, str(device), batch=2 if q else 8, dtype="bf16", train_batch=8 if q else 256)
            ),
        }
    )
    b = 2 if q else 16

    def infer(setup, dtype, compile, batch, chunk):
        return attempt(inference_variant, *setup, device, dtype, compile, batch, 64 if q else chunk)

    def train(setup, dtype, compile, batch):
        return attempt(train_variant, *setup, device, dtype, compile, 8 if q else batch)

    # Most informative first: later ones are skipped if the time budget runs out.
    infer(paper, "bf16", True, b, 1024)
    infer(paper, "bf16", False, b, 4096)
    infer(paper, "bf16", True, b, 4096)
    train(paper, "bf16", False, 256)
    train(paper, "bf16", True, 256)
    infer(small, "bf16", False, 4 if q else 64, 16384)
    train(small, "bf16", False, 32)
    train(small, "bf16", False, 1024)
    attempt(
        lambda: {
            "kind": "bench",
            **speed.run_bench(
                BenchOptions(*small, str(device), batch=4 if q else 64, dtype="fp32", train_batch=8 if q else 32)
            ),
        }
    )
    train(paper, "bf16", True, 1024)
    infer(paper, "bf16", False, b, 1024)
    infer(paper, "bf16", True, b, 256)
    infer(small, "bf16", True, 4 if q else 64, 4096)
    train(small, "bf16", True, 1024)
    infer(paper, "fp32", False, 2 if q else 8, 1024)
    train(paper, "fp32", False, 256)
    print(summary(results))
    return 0


def focus(args, device, paper, small, attempt, record, out) -> None:
    """Where the time goes (phases, profiles), then the variants that decide the targets."""
    q = args.quick
    attempt(train_phases, *small, device, "bf16", False, 8 if q else 1024)
    attempt(train_phases, *paper, device, "bf16", False, 8 if q else 256)

    def profile_training(setup, batch):
        opts = BenchOptions(*setup, str(device), dtype="bf16", train_batch=batch)
        trainer = speed.bench_trainer(bench_config(opts), opts, device)
        return profiled(f"train_{setup[0]}_{batch}", lambda: trainer.train_step(), out)

    def profile_inference(setup, batch, chunk, compile):
        cfg = bench_config(BenchOptions(*setup, str(device), dtype="bf16", compile=compile))
        cfg.score.chunk_windows, cfg.score.memory_mb = chunk, 1e6
        detector = Detector(InpaintingTransformer(cfg.model), cfg, device=device, dtype="bf16", compile=compile)
        images = torch.rand(batch, 3, setup[1], setup[1], device=device)
        return profiled(
            f"infer_{setup[0]}_{chunk}_{'compiled' if compile else 'eager'}", lambda: detector.reconstruct(images), out
        )

    attempt(profile_training, small, 8 if q else 1024)
    attempt(profile_training, paper, 8 if q else 256)
    attempt(profile_inference, paper, 2 if q else 16, 64 if q else 4096, False)
    attempt(train_variant, *paper, device, "bf16", False, 8 if q else 256)
    attempt(train_variant, *small, device, "bf16", False, 8 if q else 32)
    attempt(train_variant, *paper, device, "bf16", True, 8 if q else 256)
    attempt(train_variant, *paper, device, "bf16", True, 8 if q else 512)
    attempt(inference_variant, *paper, device, "bf16", True, 2 if q else 32, 64 if q else 8192)
    attempt(profile_inference, paper, 2 if q else 16, 64 if q else 4096, True)
    attempt(train_variant, *small, device, "bf16", True, 8 if q else 32)


def summary(results: list[dict]) -> str:
    lines = [f"{'what':58s} {'windows/s':>10s} {'ms/image':>9s} {'GFLOP/s':>9s} {'peak MB':>8s} {'warmup s':>8s}"]
    for r in results:
        if r["kind"] == "env":
            lines.insert(0, f"{r['device']} | torch {r['torch']} | {r.get('smi', '')}")
        elif r["kind"] == "check":
            lines.append(
                f"check {r['check']}: batched-naive {r['batched_vs_naive_max_abs']:.2e}, bf16 map rel err {r['bf16_map_rel_err']:.2e}"
            )
        elif r["kind"] == "matmul":
            lines.append(f"matmul {r['dtype']} {r['matmul_size']}^3: {r['matmul_gflops']:.0f} GFLOP/s")
        elif r["kind"] == "inference":
            what = f"infer {r['preset']} {r['image_size']} {r['dtype']} {'compiled' if r['compile'] else 'eager'} batch {r['batch']} chunk {r['chunk']}"
            lines.append(
                f"{what:58s} {r['windows_per_s']:10.0f} {r['ms_per_image']:9.3f} {r['achieved_gflops']:9.0f} "
                f"{r['peak_mem_mb']:8.0f} {r['warmup_s']:8.1f}"
            )
        elif r["kind"] == "training":
            what = f"train {r['preset']} {r['image_size']} {r['dtype']} {'compiled' if r['compile'] else 'eager'} batch {r['batch']}"
            lines.append(
                f"{what:58s} {r['train_windows_per_s']:10.0f} {'':9s} {r['train_gflops']:9.0f} {'':8s} {r['train_warmup_s']:8.1f}"
            )
        elif r["kind"] == "bench":
            lines.append(
                f"bench {r['preset']} {r['dtype']}: {r['windows_per_s']:.0f} win/s, {r['ms_per_image']:.3f} ms/img, naive "
                f"{r['naive_windows_per_s']:.0f} win/s (x{r['speedup']:.1f}), train {r['train_windows_per_s']:.0f} win/s, "
                f"{100 * r['fraction_of_matmul']:.0f}% of matmul"
            )
        elif r["kind"] == "phases":
            parts = ", ".join(f"{k} {r[k]:.2f}" for k in ("sample", "forward", "loss", "backward", "adam"))
            lines.append(f"phases {r['preset']} {r['dtype']} batch {r['batch']} (ms): {parts}")
        elif r["kind"] == "profile":
            lines.append(
                f"profile {r['label']}: wall {r['wall_ms']:.2f} ms/call, device busy {r['device_busy_ms']:.2f} ms, "
                f"host syncs {r['host_syncs_per_call']:.0f}; top: " + "; ".join(f"{k} {v}%" for k, v in r["top"][:6])
            )
        elif r["kind"] == "error":
            lines.append(f"ERROR {r['what'][:60]}: {r['error'][:80]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

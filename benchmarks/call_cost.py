"""Why one image per call runs at a smaller share of the machine than eight: the fixed cost of a call.

    python benchmarks/call_cost.py --threads 2 --rounds 5

The `cpu` preset (random weights, fp32, freed memory kept as `intra` keeps it) reconstructs 1, 2, 4
and 8 random 128 px images per call, alternating within every round; the median of the rounds is
kept. A line fitted to the time of a call against the images in it splits a call into a fixed part
(its intercept: what a call costs whatever it holds) and a part per image (its slope). Then one
image per call under torch's profiler: the time inside ATen operators against the call's time
there; the rest is Python and dispatch between operators (the profiler adds its own cost to both).
Shares are of the same run's fp32 matrix-product ceiling (`intra bench`'s), with the FLOPs
`intra bench` counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from intra.allocator import reuse_freed_memory
from intra.core.model import InpaintingTransformer
from intra.inference.detector import Detector
from intra.tools.speed import BenchOptions, bench_config, matmul_ceiling, window_flops

COUNTS = (1, 2, 4, 8)  # images per call


def per_call_ms(detector: Detector, images: torch.Tensor, calls: int) -> float:
    """Median wall time of `calls` reconstructions of `images`, after one warm-up, in ms."""
    detector.reconstruct(images)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        detector.reconstruct(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def operator_share(detector: Detector, image: torch.Tensor, calls: int) -> tuple[float, float]:
    """(ms inside ATen operators, ms of the whole call) per call of `image`, under the profiler."""
    detector.reconstruct(image)  # warm-up, not recorded
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(calls):
            with torch.profiler.record_function("reconstruct call"):  # the call's own span, not the profiler's start
                detector.reconstruct(image)
    events = profile.key_averages()
    whole = next(event for event in events if event.key == "reconstruct call").cpu_time_total
    inside = sum(event.self_cpu_time_total for event in events if event.key.startswith(("aten::", "mkldnn::")))
    return inside / 1000 / calls, whole / 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    cfg = bench_config(BenchOptions(preset="cpu", image_size=128, dtype="fp32"))
    torch.manual_seed(0)
    detector = Detector(InpaintingTransformer(cfg.model), cfg, device=torch.device("cpu"), dtype="fp32")
    plan = detector.plan((cfg.model.grid, cfg.model.grid))
    flop = plan.passes * window_flops(cfg.model, float(plan.read.sum()) / plan.passes)  # one image, as `intra bench`
    batches = {count: torch.rand(count, 3, cfg.model.image_size, cfg.model.image_size) for count in COUNTS}
    times: dict[int, list[float]] = {count: [] for count in COUNTS}  # ms per call
    for _ in range(args.rounds):
        for count in COUNTS:
            times[count].append(per_call_ms(detector, batches[count], args.calls))
    median = {count: statistics.median(values) for count, values in times.items()}
    per_image, fixed = np.polyfit(np.array(COUNTS, dtype=np.float64), [median[count] for count in COUNTS], 1)
    inside, whole = operator_share(detector, batches[1], args.calls)
    ceiling = matmul_ceiling(torch.device("cpu"), torch.float32)["matmul_gflops"]

    def share(ms_per_image: float) -> str:
        return f"{100 * flop / (ms_per_image / 1000) / 1e9 / ceiling:.0f} %"

    print(
        f"| cpu preset, {cfg.model.image_size} px, fp32, {args.threads} threads, median of {args.rounds} rounds "
        f"| ms per image | share of the fp32 ceiling ({ceiling:.0f} GFLOP/s) |"
    )
    print("|---|--:|--:|")
    for count in COUNTS:
        print(f"| {count} per call | {median[count] / count:.2f} | {share(median[count] / count)} |")
    print(f"| fit over those: fixed per call | {fixed:.2f} | |")
    print(f"| fit: per image (1 per call without the fixed part) | {per_image:.2f} | {share(per_image)} |")
    print(f"| 1 per call under the profiler: inside ATen operators / whole call | {inside:.2f} / {whole:.2f} | |")
    print(
        json.dumps(
            {
                "threads": args.threads,
                "rounds": args.rounds,
                "ceiling_gflops": ceiling,
                "gflop_per_image": flop / 1e9,
                "ms_per_call": times,
                "fixed_ms": fixed,
                "per_image_ms": per_image,
                "profiled_operators_ms": inside,
                "profiled_call_ms": whole,
            }
        )
    )


if __name__ == "__main__":
    main()

"""What the MLPs' activation costs on this CPU: GELU (the paper's, exact erf) against ReLU.

Times, on a (rows, hidden) activation as the `cpu` preset's feed-forward layer makes it (36 windows
of 49 tokens, 256 features): each element-wise function alone, and oneDNN's packed linear layer
64 -> 256 with no activation, with GELU fused and with ReLU fused (`inference/packed.py`). Best of
`--rounds`, microseconds per call. `model.activation` picks the network's (docs/benchmarks.md).

    python benchmarks/activation_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F
from torch import nn

from intra.inference.packed import PackedLinear, available


def best_us(fn, calls: int, rounds: int) -> float:
    """Best of `rounds` averages over `calls` calls, in microseconds."""
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=36 * 49, help="tokens in a chunk (default: one 128 px image)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, hidden = torch.randn(args.rows, 64), torch.randn(args.rows, 256)
    timings = {
        "relu": lambda: torch.relu(hidden),
        "gelu (erf)": lambda: F.gelu(hidden),
        "erf": lambda: torch.erf(hidden),
        "exp": lambda: torch.exp(hidden),
        "copy": lambda: hidden.clone(),
    }
    if available():
        linear = nn.Linear(64, 256)
        for act in ("none", "gelu", "relu"):
            timings[f"packed linear 64->256, {act}"] = functools.partial(PackedLinear(linear, act), x)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads"
    )
    print(f"{args.rows} x 256 elements ({args.rows} x 64 into the linear layer); best of {args.rounds}")
    for name, fn in timings.items():
        print(f"{name:34s} {best_us(fn, args.calls, args.rounds):8.1f} us")


if __name__ == "__main__":
    main()

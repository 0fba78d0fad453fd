"""`intra bench` with and without `allocator.reuse_freed_memory`, alternating, in fresh processes.

    python benchmarks/freed_memory.py --threads 2 --rounds 3 --batch 1 8 16

The `intra` command asks glibc to keep freed blocks of up to 32 MB (`allocator.reuse_freed_memory`),
so a forward pass reuses its activations' pages instead of faulting fresh ones in. The setting is
process-wide and cannot be undone once made, so each measurement runs `intra bench` in a new
process: "kept" as the command runs, "returned" with the call replaced by a no-op (glibc's
defaults). The two alternate within every round, so a change in the machine's load falls on both;
the table gives the median of the rounds. Inference only: `intra bench` also times training, which
is printed beside it but allocates too little per step to change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# Runs `intra bench` in this process; argv[1] is "kept" or "returned", the rest are bench's flags.
WORKER = r"""
import sys
import intra.cli as cli
if sys.argv[1] == "returned":
    cli.reuse_freed_memory = lambda: False
sys.exit(cli.main(["bench", *sys.argv[2:]]))
"""


def bench(mode: str, flags: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, mode, *flags], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per measurement (bench's --repeat)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16], help="images per call")
    args = parser.parse_args()
    print(
        "| cpu preset, 128 px, images per call | freed memory | page faults per call | ms per image | share of the fp32 ceiling | training windows/s |"
    )
    print("|---|---|--:|--:|--:|--:|")
    for batch in args.batch:
        flags = ["--preset", "cpu", "--image-size", "128", "--threads", str(args.threads), "--dtype", "fp32"]
        flags += ["--batch", str(batch), "--repeat", str(args.repeat)]
        rows: dict[str, list[dict]] = {"returned": [], "kept": []}
        for _ in range(args.rounds):
            for mode, results in rows.items():
                results.append(bench(mode, flags))
        for mode, results in rows.items():
            ms = statistics.median(r["ms_per_image"] for r in results)
            share = statistics.median(r["fraction_of_matmul"] for r in results)
            train = statistics.median(r["train_windows_per_s"] for r in results)
            faults = statistics.median(r["page_faults_per_call"] for r in results)
            shares = ", ".join(f"{100 * r['fraction_of_matmul']:.0f}" for r in results)
            print(f"| {batch} | {mode} | {faults:.0f} | {ms:.1f} | {100 * share:.0f} % ({shares}) | {train:.0f} |")


if __name__ == "__main__":
    main()

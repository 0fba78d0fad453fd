"""`intra bench` in fp32 and with `--dtype auto` (the default), alternating, in fresh processes.

    python benchmarks/inference_dtype.py --threads 2 --rounds 3 --batch 1 8 16

`auto` runs bf16 where the CPU computes it natively (AVX-512 BF16 or AMX) and fp32 elsewhere, so
on a CPU without those instructions both rows run the same code. The two alternate within every
round, so a change in the machine's load falls on both; the table gives the median of the rounds
and each round's share of the fp32 matrix-product ceiling, which every `intra bench` run measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def bench(flags: list[str]) -> dict:
    command = [sys.executable, "-m", "intra.cli", "bench", *flags]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per measurement (bench's --repeat)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16], help="images per call")
    args = parser.parse_args()
    print(
        "| cpu preset, 128 px, images per call | --dtype | ran | ms per image | share of the fp32 ceiling (each round) |"
    )
    print("|---|---|---|--:|--:|")
    for batch in args.batch:
        flags = ["--preset", "cpu", "--image-size", "128", "--threads", str(args.threads)]
        flags += ["--batch", str(batch), "--repeat", str(args.repeat), "--naive-windows", "1"]
        rows: dict[str, list[dict]] = {"fp32": [], "auto": []}
        for _ in range(args.rounds):
            for dtype, results in rows.items():
                results.append(bench([*flags, "--dtype", dtype]))
        for dtype, results in rows.items():
            ms = statistics.median(r["ms_per_image"] for r in results)
            share = statistics.median(r["fraction_of_fp32_matmul"] for r in results)
            shares = ", ".join(f"{100 * r['fraction_of_fp32_matmul']:.0f}" for r in results)
            ran = results[0]["ran_dtype"]
            print(f"| {batch} | {dtype} | {ran} | {ms:.1f} | {100 * share:.0f} % ({shares}) |")


if __name__ == "__main__":
    main()

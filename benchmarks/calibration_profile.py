"""Where calibration's time goes: a profile of choosing the scoring again and calibrating a run. A diagnostic.

    python benchmarks/calibration_profile.py --run RUN --data DATA --threads 2 [--lines 45]

Runs `calibration.rescore(detector, {"score.choose": "auto"}, DATA)` (what `intra evaluate --set
score.choose=auto` does before scoring the test set, and `intra train` at its end) under cProfile and
prints the wall time and the functions by cumulative time. An experiment script for
docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from intra.inference.calibration import rescore
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lines", type=int, default=45, help="functions to print")
    args = parser.parse_args()
    configure_threads(args.threads)
    detector = Detector.load(args.run, device="cpu")
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(rescore, detector, {"score.choose": "auto"}, args.data)
    print(f"calibration with the choice: {time.perf_counter() - start:.1f} s under the profiler")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.lines)


if __name__ == "__main__":
    main()

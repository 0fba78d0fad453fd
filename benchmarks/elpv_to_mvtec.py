"""Write the ELPV solar-cell dataset as an MVTec-layout folder (image labels only, no masks).

ELPV (Buerhop-Lutz et al. 2018; `pip install elpv-dataset`): 2624 electroluminescence images of
solar cells, 300 x 300 px, 8-bit gray, each with a defect probability in {0, 1/3, 2/3, 1} and a
type (mono, poly). The split, seeded and written to OUT/split.csv:

    train/good             cells with probability 0, minus the held-out ones
    test/good              --test-good cells with probability 0, drawn at random, stratified by type
    test/defect_mono,
    test/defect_poly       every cell with probability >= 2/3, by type

Cells with probability 1/3 are left out (uncertain). With `--type mono` (or `poly`) only the cells
of that type are written: the same cells the full split puts in each folder, so a model of one
type is tested on exactly the test cells of its type in the full set. There is no ground_truth/ folder, so
`intra evaluate` reports image AUROC only (and per kind: mono or poly defects against all good
test cells). Only this script needs the elpv-dataset package; the library does not.

    python benchmarks/elpv_to_mvtec.py --out /work/runs/quality/elpv
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np


def read_labels() -> tuple[Path, list[tuple[str, float, str]]]:
    import elpv_dataset

    folder = Path(elpv_dataset.__file__).parent / "data"
    rows = []
    for line in (folder / "labels.csv").read_text().splitlines():
        path, probability, kind = line.split()
        rows.append((path, float(probability), kind))
    return folder, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (MVTec layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out good cells (default 0)")
    parser.add_argument("--test-good", type=int, default=300, help="good cells held out for testing (default 300)")
    parser.add_argument("--type", choices=("mono", "poly"), help="write only the cells of this type (default: both)")
    args = parser.parse_args()

    folder, rows = read_labels()
    rng = np.random.default_rng(args.seed)
    good = [r for r in rows if r[1] == 0]
    held_out = set()
    for kind in ("mono", "poly"):  # stratified: each type in proportion to its share of the good cells
        members = [r[0] for r in good if r[2] == kind]
        count = round(args.test_good * len(members) / len(good))
        held_out.update(rng.choice(members, size=count, replace=False).tolist())
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    split = []
    for path, probability, kind in rows:
        if args.type and kind != args.type:
            continue
        if probability == 0:
            target = ("test" if path in held_out else "train") + "/good"
        elif probability >= 2 / 3 - 1e-6:
            target = f"test/defect_{kind}"
        else:
            continue
        destination = out / target / Path(path).name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / path, destination)
        split.append((f"{target}/{Path(path).name}", path, probability, kind))
    with (out / "split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "source", "probability", "type"])
        writer.writerows(split)
    counts = {}
    for target, *_ in split:
        counts[target.rsplit("/", 1)[0]] = counts.get(target.rsplit("/", 1)[0], 0) + 1
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()

"""A cheaper copy of an MVTec-layout dataset for ablations: every N-th test image of each kind.

    python benchmarks/subset.py --data ../shared/data/magnetic-tile --out /work/runs/quality/mt-half --every 2

The training images are linked as they are (train/good is a symbolic link); of the test images
(and their masks) every N-th of each kind, in sorted order starting with the first, is linked.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MVTec-layout dataset")
    parser.add_argument("--out", required=True, help="folder to create (symbolic links)")
    parser.add_argument("--every", type=int, default=2, help="keep every N-th test image per kind (default 2)")
    args = parser.parse_args()
    data, out = Path(args.data).resolve(), Path(args.out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    if not (out / "train" / "good").exists():
        os.symlink(data / "train" / "good", out / "train" / "good")
    kept = 0
    for kind_dir in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        for image in sorted(kind_dir.iterdir())[:: args.every]:
            links = [(image, out / "test" / kind_dir.name / image.name)]
            if kind_dir.name != "good":
                mask = f"{image.stem}_mask.png"
                links.append(
                    (data / "ground_truth" / kind_dir.name / mask, out / "ground_truth" / kind_dir.name / mask)
                )
            for source, target in links:
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.symlink(source, target)
            kept += 1
    print(f"{kept} test images linked under {out}")


if __name__ == "__main__":
    main()

"""Normal images of several looks: anomaly-map statistics per group of training images, found without labels.

    python benchmarks/grouped_statistics.py --run RUN --data DATA --threads 2 [--groups 1 2 3] [--train-images 600]

For a run whose images all have one size (objects), the anomaly map is z-scored per pixel against
the mean and standard deviation of the training images' difference maps. When the normal images
come in several looks (ELPV: monocrystalline and polycrystalline cells), those statistics mix the
looks: the grainy look's large spread hides defects on the plain one. Here the training images are
grouped by k-means on a small descriptor of each image (its gray level pooled to 4 x 4 and the log
energy of its fine detail, each feature standardised), the statistics are computed per group, and
every test image is z-scored against the group whose centre is nearest. No test label and no
metadata choose anything; with `--groups 1` it is the library's statistics.

For each named filter set (the paper's, middle, fine; z-scored, as `score.zscore`) and each group
count, prints image AUROC (the map's maximum), overall and per defect kind, and the group sizes.
If DATA/split.csv gives a `type` per image (benchmarks/elpv_to_mvtec.py writes one), it also prints
how the groups split the training images by type, and scores once more with the types as the
groups: what statistics per look give when the looks are known (metadata, not test labels). Writes the results as JSON to --out. An
experiment script for docs/benchmarks.md, not the library.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from intra.config import scoring
from intra.core import anomaly_map
from intra.core.similarity import gaussian_filter
from intra.data.datasets import test_samples, training_images, validation_split
from intra.data.geometry import Geometry
from intra.data.images import load_images
from intra.files import write_json
from intra.inference.calibration import statistics_of
from intra.inference.detector import Detector
from intra.runtime import configure_threads


def descriptors(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) -> (B, 17): the gray level pooled to 4 x 4, and the log mean energy of the detail
    finer than a Gaussian of sigma 2 px (grain, texture)."""
    gray = images.mean(1, keepdim=True)
    layout = F.adaptive_avg_pool2d(gray, 4).flatten(1)
    detail = ((gray - gaussian_filter(gray, 2.0)) ** 2).flatten(1).mean(1, keepdim=True).clamp_min(1e-12).log()
    return torch.cat([layout, detail], 1).numpy()


def grouped_scores(
    cfg, test_maps: torch.Tensor, train_maps: torch.Tensor, test_groups: np.ndarray, train_groups: np.ndarray
) -> np.ndarray:
    """Image scores: each test map z-scored per pixel against its group's training maps, as the library
    z-scores against all of them (`calibration.statistics_of`, `anomaly_map.normalize`), then its maximum."""
    scores = np.zeros(len(test_maps))
    for group in np.unique(train_groups):
        pick = test_groups == group
        if pick.any():
            mean, std = statistics_of(cfg, train_maps[torch.from_numpy(train_groups == group)])
            z = anomaly_map.normalize(test_maps[torch.from_numpy(pick)], mean, std, anomaly_map.std_floor(std))
            scores[pick] = anomaly_map.image_score(z).numpy()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="trained run folder (images of one size)")
    parser.add_argument("--data", required=True, help="MVTec-layout dataset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 3], help="group counts to try")
    parser.add_argument("--train-images", type=int, default=600, help="training images for the statistics")
    parser.add_argument("--out", help="JSON output (default RUN/grouped_statistics.json)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # signals.py sits beside this script
    from signals import scores_by_kind, summary

    configure_threads(args.threads)
    detector = Detector.load(args.run, device="cpu")
    cfg = detector.cfg
    if cfg.data.resize == "scale" and not (cfg.data.height and cfg.data.width):
        parser.error(f"{args.run} scores images of many sizes (a texture run): per-pixel statistics need one size")
    geometry = Geometry.of(cfg)
    samples = test_samples(args.data)
    kinds = np.array([s.kind for s in samples])
    paths = training_images(args.data)
    train_index, _ = validation_split(len(paths), cfg.train, torch.Generator().manual_seed(cfg.train.seed))
    train_paths = [paths[i] for i in train_index][: args.train_images]
    test, train = (
        torch.stack(load_images(p, geometry, cfg.data.color)) for p in ([s.path for s in samples], train_paths)
    )
    split = Path(args.data) / "split.csv"
    types = {}
    if split.exists():
        types = {Path(row["path"]).name: row.get("type", "") for row in csv.DictReader(split.open())}
    type_names = sorted(set(types.values()))
    train_types = np.array([types.get(p.name, "") for p in train_paths])

    test_features, train_features = descriptors(detector.prepare(test)), descriptors(detector.prepare(train))
    centre, spread = train_features.mean(0), train_features.std(0) + 1e-12
    train_features, test_features = (train_features - centre) / spread, (test_features - centre) / spread
    groupings = {}
    for count in args.groups:
        kmeans = KMeans(n_clusters=count, n_init=10, random_state=0).fit(train_features)
        labels = kmeans.labels_
        groupings[count] = (kmeans.predict(test_features), labels)
        line = f"{count} group(s): training images per group {np.bincount(labels).tolist()}"
        if types:
            by_type = {
                g: {t: int(((labels == g) & (train_types == t)).sum()) for t in type_names} for g in range(count)
            }
            line += f"; by type {by_type}"
        print(line, flush=True)
    if types:  # the known looks as the groups
        test_types = np.array([type_names.index(types[s.path.name]) for s in samples])
        groupings["by type"] = (test_types, np.array([type_names.index(t) for t in train_types]))

    results = []
    for name in ("paper", "middle", "fine"):
        detector.cfg.score = scoring(cfg.score, f"{name}-raw")  # the raw difference; z-scored here, per group
        test_maps, train_maps = (torch.cat([detector.difference_maps(b) for b in x.split(16)]) for x in (test, train))
        for count, (test_groups, train_groups) in groupings.items():
            scores = grouped_scores(cfg, test_maps, train_maps, test_groups, train_groups)
            row = {"filters": name, "groups": count, **scores_by_kind(scores[:, None], None, kinds)}
            results.append(row)
            groups = f"{count} group(s)" if isinstance(count, int) else count
            print(f"{name:6s} z-scored, {groups}: {summary(row)}", flush=True)
    out = Path(args.out) if args.out else Path(args.run) / "grouped_statistics.json"
    write_json(out, {"run": str(args.run), "data": str(args.data), "train_images": len(train), "results": results})
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Evaluate a Detector on an MVTec-layout test set: metrics, tables, curves, heatmaps, an HTML report.

Writes into the output folder:
  metrics.json        `image_auroc`, `pixel_auroc`, `aupro` (FPR <= 0.3), `per_kind` (image AUROC of
                      each defect kind against the good images), `thresholds` (the run's stored
                      thresholds with the F1 they reach here, and the F1-optimal ones: information
                      only, the stored ones are not changed), timing and settings;
  scores.csv          every image's pred_score;
  per_kind.csv, .md   per defect kind: images, image/pixel AUROC and AUPRO against the good images,
                      mean score, share flagged at the stored image threshold;
  roc_image.png, roc_pixel.png, pro.png   the curves;
  report.html         all of the above plus galleries of the highest- and lowest-scored normal and
                      defective images, in one self-contained file (images as data URIs);
  heatmaps/<kind>/    one overlay per test image (unless heatmaps=False).
Pixel metrics are computed at `eval_size` (default: the model's image size): anomaly maps are
resized bilinearly, masks read from their files with nearest-neighbour resizing.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.anomaly_map import filter_sizes
from ..data.datasets import GOOD, Sample, test_samples
from ..data.images import load_image, load_mask
from ..errors import IntraError
from ..files import atomic_write, write_json
from ..inference.detector import Detector
from ..pictures import overlay_panel, png_bytes, save_png, to_rgb_uint8
from . import metrics, plots
from .metrics import f1_report
from .report import gallery_indices, html_report

GALLERY_SIZE = 6  # images per gallery in the HTML report


def evaluate(
    detector: Detector,
    root: str | Path,
    out_dir: str | Path,
    eval_size: int | None = None,
    batch_size: int = 8,
    heatmaps: bool = True,
    progress: bool = False,
) -> dict:
    """Score every test image of `root`, write results into `out_dir`, return the metrics dict."""
    out_dir = Path(out_dir)
    cfg = detector.cfg
    size = cfg.model.image_size
    eval_size = eval_size or size
    samples = test_samples(root)
    maps = np.zeros((len(samples), eval_size, eval_size), dtype=np.float32)
    masks = np.zeros((len(samples), eval_size, eval_size), dtype=bool)
    scores = np.zeros(len(samples), dtype=np.float64)
    for i, sample in enumerate(samples):  # masks first: a bad one fails before the long inference
        if sample.mask_path is not None:
            masks[i] = load_mask(sample.mask_path, eval_size).numpy()
    try:  # before the long inference: an unwritable folder should fail at once
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IntraError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    pictures = []  # uint8 copies of the inputs, for the overlays
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress, leave=False)
    for first in range(0, len(samples), batch_size):
        chunk = samples[first : first + batch_size]
        images = torch.stack([load_image(s.path, size, cfg.data.color) for s in chunk])
        batch_maps, batch_scores = detector.predict(images)
        if eval_size != size:
            batch_maps = F.interpolate(
                batch_maps[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False
            )[:, 0]
        maps[first : first + len(chunk)] = batch_maps.numpy()
        pictures.extend(to_rgb_uint8(image) for image in images)
        scores[first : first + len(chunk)] = batch_scores.numpy()
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - start

    labels = np.array([s.label for s in samples])
    # Image labels only (no ground_truth/): no pixel metrics, tables or curves.
    pixel_masks = masks if any(s.mask_path is not None for s in samples) else None
    pixel_maps = None if pixel_masks is None else maps
    result = metrics.evaluation_metrics(scores, labels, [s.kind for s in samples], pixel_maps, pixel_masks)
    result["thresholds"] = f1_report(scores, labels, pixel_maps, pixel_masks, detector.stats)
    result.update(
        images=len(samples),
        eval_size=eval_size,
        seconds=round(seconds, 2),
        ms_per_image=round(1000 * seconds / len(samples), 2),
        device=str(detector.device),
        threads=torch.get_num_threads(),
        anomaly_map_filters=filter_sizes(cfg.score),
    )
    _write_scores(out_dir / "scores.csv", samples, scores, root)
    if heatmaps:
        _write_heatmaps(out_dir / "heatmaps", samples, pictures, maps, masks, progress)
    rows = per_kind_rows(samples, scores, maps, pixel_masks, detector.stats.get("image_threshold"))
    _write_tables(out_dir, rows)
    curves = plots.curve_pngs(scores, labels, maps, pixel_masks)
    plots.write_curves(out_dir, curves)
    galleries = _galleries(samples, scores, pictures, maps, masks, root, detector.stats.get("image_threshold"))
    page = html_report(
        f"intra evaluation: {Path(root).resolve().name}",
        _subtitle(result, root, detector),
        _metric_rows(result),
        KIND_COLUMNS,
        [[_cell(row[c]) for c in KIND_COLUMNS] for row in rows],
        curves,
        galleries,
    )
    atomic_write(out_dir / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    write_json(out_dir / "metrics.json", result)
    return result


KIND_COLUMNS = ["kind", "images", "image_auroc", "pixel_auroc", "aupro", "mean_score", "flagged"]


def per_kind_rows(
    samples: list[Sample], scores: np.ndarray, maps: np.ndarray, masks: np.ndarray | None, threshold: float | None
) -> list[dict]:
    """One row per kind (good first): AUROCs and AUPRO of the kind against the good images, flagged share.

    masks None (image labels only): no pixel columns.
    """
    kinds = np.array([s.kind for s in samples])
    labels = np.array([s.label for s in samples])
    good = kinds == GOOD
    rows = []
    for kind in [GOOD] + sorted(set(kinds) - {GOOD}):
        chosen = kinds == kind
        row = {
            "kind": kind,
            "images": int(chosen.sum()),
            "image_auroc": None,
            "pixel_auroc": None,
            "aupro": None,
            "mean_score": float(scores[chosen].mean()),
            "flagged": None if threshold is None else float(np.mean(scores[chosen] >= threshold)),
        }
        if kind != GOOD:
            both = chosen | good
            row["image_auroc"] = metrics.auroc(scores[both], labels[both])
            if masks is not None:
                row.update(
                    pixel_auroc=metrics.auroc(maps[both].ravel(), masks[both].ravel()),
                    aupro=metrics.aupro(maps[both], masks[both]),
                )
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_tables(out_dir: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(KIND_COLUMNS)
    writer.writerows([["" if row[c] is None else row[c] for c in KIND_COLUMNS] for row in rows])
    atomic_write(out_dir / "per_kind.csv", lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    lines = ["| " + " | ".join(KIND_COLUMNS) + " |", "|" + "---|" * len(KIND_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in KIND_COLUMNS) + " |" for row in rows]
    text = (
        "\n".join(lines)
        + "\n\nflagged: share of the kind's images with pred_score >= the run's stored image threshold.\n"
    )
    atomic_write(out_dir / "per_kind.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _metric_rows(m: dict) -> list[list[str]]:
    names = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO (FPR <= 0.3)", "aupro"))
    rows = [[name, "-" if m.get(key) is None else f"{m[key]:.4f}"] for name, key in names]  # no masks: no pixel metrics
    for level, entry in m["thresholds"].items():
        if "stored_threshold" in entry:
            rows.append(
                [
                    f"{level} threshold (stored, from normal images)",
                    f"{entry['stored_threshold']:.4g}  (F1 {entry['f1_at_stored']:.3f})",
                ]
            )
        rows.append(
            [
                f"{level} threshold (F1-optimal here, not stored)",
                f"{entry['f1_optimal_threshold']:.4g}  (F1 {entry['f1_max']:.3f})",
            ]
        )
    rows += [
        ["images", str(m["images"])],
        ["ms per image", f"{m['ms_per_image']:.1f} ({m['device']}, {m['threads']} threads)"],
    ]
    return rows


def _subtitle(m: dict, root: str | Path, detector: Detector) -> str:
    return f"data: {Path(root).resolve()}; model: {detector.cfg.model.image_size} px, patch {detector.cfg.model.patch_size}, window {detector.cfg.model.window}; pixel metrics at {m['eval_size']} px"


def _galleries(
    samples: list[Sample],
    scores: np.ndarray,
    pictures: list[np.ndarray],
    maps: np.ndarray,
    masks: np.ndarray,
    root: str | Path,
    threshold: float | None,
) -> dict[str, list[dict]]:
    vmax = float(np.quantile(maps, 0.999))
    labels = np.array([s.label for s in samples])
    galleries = {}
    for title, indices in gallery_indices(scores, labels, GALLERY_SIZE).items():
        galleries[title] = [
            {
                "png": png_bytes(overlay_panel(pictures[i], maps[i], vmax, masks[i] if samples[i].label else None)),
                "caption": f"{samples[i].path.relative_to(root).as_posix()}  score {scores[i]:.4g}",
                "flagged": threshold is not None and bool(scores[i] >= threshold),
            }
            for i in indices
        ]
    return galleries


def _write_scores(path: Path, samples: list[Sample], scores: np.ndarray, root: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "kind", "label", "pred_score"])
    for sample, score in zip(samples, scores):
        writer.writerow([sample.path.relative_to(root), sample.kind, sample.label, f"{score:.8g}"])
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def _write_heatmaps(
    folder: Path, samples: list[Sample], pictures: list[np.ndarray], maps: np.ndarray, masks: np.ndarray, progress: bool
) -> None:
    """One PNG per test image: image | heatmap overlay | mask, on one colour scale for all images."""
    vmax = float(np.quantile(maps, 0.999))
    for i, sample in enumerate(tqdm(samples, desc="heatmaps", disable=not progress, leave=False)):
        mask = masks[i] if sample.kind != GOOD else None
        panel = overlay_panel(pictures[i], maps[i], vmax, mask)
        save_png(panel, folder / sample.kind / f"{sample.path.stem}.png")

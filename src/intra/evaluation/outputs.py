"""Writing an evaluation: tables, curves, heatmaps and the HTML report for people, JSON and CSV for machines.

`write_evaluation(evaluation, out_dir)` writes into the folder:
  metrics.json        the metrics of `scoring.evaluate` (see there);
  scores.csv          every image's pred_score;
  per_kind.csv, .md   per defect kind: images, image/pixel AUROC and AUPRO against the good images,
                      share of the defect pixels, mean score, share flagged at the stored image threshold;
  roc_image.png, roc_pixel.png, pro.png   the curves;
  report.html         all of the above plus galleries of the highest- and lowest-scored normal and
                      defective images, in one self-contained file (images as data URIs);
  heatmaps/<kind>/    one overlay per test image (unless heatmaps=False), a flagged image's peak ringed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.datasets import GOOD, Sample
from ..errors import IntraError
from ..files import write_json, write_text
from ..pictures import overlay_panel, png_bytes, save_png
from . import plots
from .report import gallery_indices, html_report
from .scoring import KIND_COLUMNS, Evaluation

GALLERY_SIZE = 6  # images per gallery in the HTML report


def write_evaluation(
    evaluation: Evaluation, out_dir: str | Path, heatmaps: bool = True, progress: bool = False
) -> Path:
    """Write every file of an evaluation into out_dir (see the module docstring); returns out_dir."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IntraError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    e, m = evaluation, evaluation.metrics
    masks = e.masks or [np.zeros(a.shape, bool) for a in e.maps]
    # One colour scale for every overlay of this evaluation.
    vmax = float(np.quantile(np.concatenate([a.ravel() for a in e.maps]), 0.999))
    _write_scores(out_dir / "scores.csv", e.samples, e.scores, e.root)
    threshold = m["thresholds"].get("image", {}).get("stored_threshold")
    # Where a flagged image's score was found, ringed on its heatmap (as `intra predict` does).
    marks = [
        tuple(peak) if threshold is not None and score >= threshold else None for score, peak in zip(e.scores, e.peaks)
    ]
    if heatmaps:
        _write_heatmaps(out_dir / "heatmaps", e.samples, e.pictures, e.maps, masks, marks, vmax, progress)
    _write_tables(out_dir, e.kind_rows)
    curves = plots.curve_pngs(e.scores, e.labels, e.maps, e.masks)
    plots.write_curves(out_dir, curves)
    galleries = _galleries(e.samples, e.scores, e.pictures, e.maps, masks, marks, e.root, threshold, vmax)
    subtitle = f"data: {e.root.resolve()}; model: {m['model']}; pixel metrics at {m['eval_size']} px"
    rows = [[_cell(row[c]) for c in KIND_COLUMNS] for row in e.kind_rows]
    page = html_report(
        f"intra evaluation: {e.root.resolve().name}", subtitle, _metric_rows(m), KIND_COLUMNS, rows, curves, galleries
    )
    write_text(out_dir / "report.html", page)
    write_json(out_dir / "metrics.json", m)
    return out_dir


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_tables(out_dir: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(KIND_COLUMNS)
    writer.writerows([["" if row[c] is None else row[c] for c in KIND_COLUMNS] for row in rows])
    write_text(out_dir / "per_kind.csv", buffer.getvalue())
    lines = ["| " + " | ".join(KIND_COLUMNS) + " |", "|" + "---|" * len(KIND_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in KIND_COLUMNS) + " |" for row in rows]
    text = (
        "\n".join(lines)
        + "\n\ndefect_pixels: the kind's share of all defect pixels, its weight in the pooled pixel AUROC.\n"
        + "flagged: share of the kind's images with pred_score >= the run's stored image threshold.\n"
    )
    write_text(out_dir / "per_kind.md", text)


def _metric_rows(m: dict) -> list[list[str]]:
    names = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO (FPR <= 0.3)", "aupro"))
    rows = [[name, "-" if m.get(key) is None else f"{m[key]:.4f}"] for name, key in names]  # no masks: no pixel metrics
    for level, entry in m["thresholds"].items():
        if "stored_threshold" in entry:
            rows.append(
                [
                    f"{level} threshold (stored, from normal images)",
                    f"{entry['stored_threshold']:.4g}  (F1 {entry['f1_at_stored']:.3f}; flags "
                    f"{share_text(entry['tpr_at_stored'])} of the defective {level}s, {share_text(entry['fpr_at_stored'])} of the normal)",
                ]
            )
        rows.append(
            [
                f"{level} threshold (F1-optimal here, not stored)",
                f"{entry['f1_optimal_threshold']:.4g}  (F1 {entry['f1_max']:.3f})",
            ]
        )
    if "inpainting" in m:
        p = m["inpainting"]
        rows.append(
            [
                f"inpainting error on the {p['images']} good images",
                f"{p['network']:.3g}  ({p['ratio']:.2f} x the better trivial fill; ring {p['ring']:.3g}, smooth {p['smooth']:.3g}, flat oracle {p['flat']:.3g})",
            ]
        )
    if "localisation" in m:
        where = m["localisation"]
        rows.append(
            [
                f"on the defect, of the {where['defective_images']} defective images",
                f"the image score's peak {share_text(where['score_peak_on_defect'])}, "
                f"the anomaly map's maximum {share_text(where['map_max_on_defect'])}",
            ]
        )
        if "flagged" in where:
            rows.append(
                [
                    "flagged with no region (stored thresholds)",
                    f"{where['flagged_without_region']} of {where['flagged']}",
                ]
            )
    rows += [
        ["images", str(m["images"])],
        ["ms per image", f"{m['ms_per_image']:.1f} ({m['device']}, {m['threads']} threads{_processor(m)})"],
    ]
    return rows


def share_text(value: float | None) -> str:
    """A share as a percentage, with a decimal under 10 % (false alarms of 0.4 % are not "0 %")."""
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if 0 < value < 0.1 else f"{100 * value:.0f} %"


def _processor(m: dict) -> str:
    """ ", AMD EPYC, AVX2", what the timing ran on (metrics written before `machine` was recorded have none)."""
    described = m.get("machine", {})
    named = [described.get(key) for key in ("gpu", "cpu", "cpu_capability") if described.get(key)]
    return "".join(f", {name}" for name in named)


def _galleries(
    samples: list[Sample],
    scores: np.ndarray,
    pictures: list[np.ndarray],
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    marks: list[tuple[float, float] | None],
    root: str | Path,
    threshold: float | None,
    vmax: float,
) -> dict[str, list[dict]]:
    labels = np.array([s.label for s in samples])
    galleries = {}
    for title, indices in gallery_indices(scores, labels, GALLERY_SIZE).items():
        galleries[title] = [
            {
                "png": png_bytes(
                    overlay_panel(pictures[i], maps[i], vmax, masks[i] if samples[i].label else None, marks[i])
                ),
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
    write_text(path, buffer.getvalue())


def _write_heatmaps(
    folder: Path,
    samples: list[Sample],
    pictures: list[np.ndarray],
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    marks: list[tuple[float, float] | None],
    vmax: float,
    progress: bool,
) -> None:
    """One PNG per test image: image | heatmap overlay (a flagged image's peak ringed) | mask, on one colour
    scale for all images."""
    for i, sample in enumerate(tqdm(samples, desc="heatmaps", disable=not progress, leave=False)):
        mask = masks[i] if sample.kind != GOOD else None
        panel = overlay_panel(pictures[i], maps[i], vmax, mask, marks[i])
        save_png(panel, folder / sample.kind / f"{sample.path.stem}.png")

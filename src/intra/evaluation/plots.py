"""Curves as PNG files: image ROC, pixel ROC and the PRO curve (matplotlib, no screen needed).

The curves are the exact ones of `metrics` (every distinct threshold); a pixel curve can have
millions of points, so it is thinned to at most `MAX_POINTS` before drawing, keeping both ends.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_write
from . import metrics

MAX_POINTS = 2000
CURVES = {"roc_image": "Image ROC", "roc_pixel": "Pixel ROC", "pro": "PRO curve"}


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int))
    return x[keep], y[keep]


def _figure(
    x: np.ndarray, y: np.ndarray, title: str, xlabel: str, ylabel: str, area: str, limit: float | None = None
) -> bytes:
    """One curve as PNG bytes (about 480 x 400 px), with the area in the legend."""
    # A Figure on the Agg canvas, without pyplot: no global backend is chosen for the caller.
    fig = Figure(figsize=(4.8, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x, y = _thin(x, y)
    ax.plot(x, y, color="#c2410c", lw=2, label=area)
    if limit is None:
        ax.plot([0, 1], [0, 1], color="#9ca3af", lw=1, ls="--", label="chance")
    else:
        ax.axvline(limit, color="#9ca3af", lw=1, ls="--", label=f"FPR limit {limit}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def curve_pngs(scores: np.ndarray, labels: np.ndarray, maps, masks, aupro_limit: float = 0.3) -> dict[str, bytes]:
    """{"roc_image", "roc_pixel", "pro"} -> PNG bytes, from image scores/labels and maps/masks ((n, H, W) or sequences of (h, w)).

    masks None (a test set with image labels only): the image ROC alone.
    """
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    image_roc = _figure(
        fpr,
        tpr,
        CURVES["roc_image"],
        "false positive rate",
        "true positive rate",
        f"AUROC {metrics.trapezoid(tpr, fpr):.3f}",
    )
    if masks is None:
        return {"roc_image": image_roc}
    pixel_fpr, pixel_tpr, _ = metrics.roc_curve(metrics.flatten(maps), metrics.flatten(masks))
    pro_fpr, pro, _ = metrics.pro_curve(maps, masks)
    aupro = metrics.area_up_to(pro_fpr, pro, aupro_limit) / aupro_limit
    return {
        "roc_image": image_roc,
        "roc_pixel": _figure(
            pixel_fpr,
            pixel_tpr,
            CURVES["roc_pixel"],
            "false positive rate (pixels)",
            "true positive rate (pixels)",
            f"AUROC {metrics.trapezoid(pixel_tpr, pixel_fpr):.3f}",
        ),
        "pro": _figure(
            pro_fpr,
            pro,
            CURVES["pro"],
            "false positive rate (pixels)",
            "per-region overlap",
            f"AUPRO@{aupro_limit} {aupro:.3f}",
            aupro_limit,
        ),
    }


def write_curves(folder: Path, pngs: dict[str, bytes]) -> dict[str, str]:
    """Write each curve as folder/<name>.png; returns {name: file name}."""
    names = {}
    for name, data in pngs.items():
        atomic_write(folder / f"{name}.png", lambda tmp, data=data: tmp.write_bytes(data))
        names[name] = f"{name}.png"
    return names

"""Pictures for people: heatmap overlays of anomaly maps on their images, and the HTML report.

Maps are coloured on one fixed scale [0, vmax] shared by all images of a run, never per-image
min-max: a defect-free image must look calm, not as hot as the worst defect.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_write

# Inferno colormap, sampled at 8 evenly spaced points (RGB 0-255).
_INFERNO = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
    dtype=np.float32,
)


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) non-negative values -> (H, W, 3) uint8 inferno colours, saturating at vmax."""
    t = np.clip(values / max(vmax, 1e-12), 0, 1) * (len(_INFERNO) - 1)
    low = np.floor(t).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (t - low)[..., None]
    return (_INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac).round().astype(np.uint8)


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def overlay_panel(base: np.ndarray, anomaly_map: np.ndarray, vmax: float, mask: np.ndarray | None = None) -> Image.Image:
    """Side by side: the image (H, W, 3) uint8, the heatmap blended over it, and the mask if given."""
    heat = colorize(anomaly_map, vmax)
    h, w = anomaly_map.shape
    if base.shape[:2] != (h, w):
        base = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
    blended = (0.5 * base + 0.5 * heat).round().astype(np.uint8)
    panels = [base, blended]
    if mask is not None:
        panels.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2))
    return Image.fromarray(np.concatenate(panels, axis=1))


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """PNG bytes -> a data: URI, so the HTML report is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def gallery_indices(scores: np.ndarray, labels: np.ndarray, count: int) -> dict[str, list[int]]:
    """Indices of the `count` highest- and lowest-scored normal and defective images, by title.

    A small group is split in two halves, so that no image appears in both of its galleries.
    """
    groups = {}
    for label, name in ((0, "normal"), (1, "defective")):
        chosen = np.flatnonzero(labels == label)
        ordered = chosen[np.argsort(-scores[chosen], kind="stable")]
        high = min(count, (len(ordered) + 1) // 2)
        low = min(count, len(ordered) - high)
        groups[f"Highest-scored {name} images"] = ordered[:high].tolist()
        groups[f"Lowest-scored {name} images"] = ordered[len(ordered) - low :][::-1].tolist()
    return groups


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1f2937; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #e5e7eb; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: .8rem 0; } td, th { border: 1px solid #e5e7eb; padding: .3rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f9fafb; }
.metrics td:nth-child(2) { font-weight: 600; } .muted { color: #6b7280; font-size: .9rem; }
.curves, .gallery { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } figcaption { font-size: .8rem; color: #4b5563; max-width: 390px; overflow-wrap: anywhere; }
.gallery img { width: 384px; image-rendering: pixelated; border: 1px solid #e5e7eb; }
.flag { color: #b91c1c; font-weight: 600; }
"""


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_report(title: str, subtitle: str, metric_rows: list[list[str]], kind_header: list[str], kind_rows: list[list[str]],
                curves: dict[str, bytes], galleries: dict[str, list[dict]]) -> str:
    """The evaluation report as one HTML document: metrics, per-kind table, curves, galleries.

    galleries: {title: [{"png": bytes, "caption": str, "flagged": bool}]}. Images are embedded
    as data URIs; there is no script and no external resource.
    """
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<link rel='icon' href='data:,'>",  # no favicon request: the file stays self-contained
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='muted'>{html.escape(subtitle)}</p>",
        "<h2>Metrics</h2>", _table(["metric", "value"], metric_rows, "metrics"),
        "<h2>Per defect kind</h2>", _table(kind_header, kind_rows),
        "<h2>Curves</h2><div class='curves'>",
        *(f"<img src='{data_uri(png)}' alt='{html.escape(name)}'>" for name, png in curves.items()),
        "</div>",
    ]
    for gallery_title, items in galleries.items():
        parts.append(f"<h2>{html.escape(gallery_title)}</h2><p class='muted'>image | anomaly heatmap | ground-truth mask (defective images)</p><div class='gallery'>")
        for item in items:
            flag = "<span class='flag'>flagged</span> " if item["flagged"] else ""
            parts.append(f"<figure><img src='{data_uri(item['png'])}' alt='{html.escape(item['caption'])}'>"
                         f"<figcaption>{flag}{html.escape(item['caption'])}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

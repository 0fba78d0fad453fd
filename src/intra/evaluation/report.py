"""The HTML evaluation report: metrics, per-kind table, curves and galleries in one self-contained file."""

from __future__ import annotations

import html

import numpy as np

from ..pictures import data_uri


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


def html_report(
    title: str,
    subtitle: str,
    metric_rows: list[list[str]],
    kind_header: list[str],
    kind_rows: list[list[str]],
    curves: dict[str, bytes],
    galleries: dict[str, list[dict]],
) -> str:
    """The evaluation report as one HTML document: metrics, per-kind table, curves, galleries.

    galleries: {title: [{"png": bytes, "caption": str, "flagged": bool}]}. Images are embedded
    as data URIs; there is no script and no external resource.
    """
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<link rel='icon' href='data:,'>",  # no favicon request: the file stays self-contained
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='muted'>{html.escape(subtitle)}</p>",
        "<h2>Metrics</h2>",
        _table(["metric", "value"], metric_rows, "metrics"),
        "<h2>Per defect kind</h2>",
        _table(kind_header, kind_rows),
        "<h2>Curves</h2><div class='curves'>",
        *(f"<img src='{data_uri(png)}' alt='{html.escape(name)}'>" for name, png in curves.items()),
        "</div>",
    ]
    for gallery_title, items in galleries.items():
        parts.append(
            f"<h2>{html.escape(gallery_title)}</h2><p class='muted'>image | anomaly heatmap | ground-truth mask (defective images)</p><div class='gallery'>"
        )
        for item in items:
            flag = "<span class='flag'>flagged</span> " if item["flagged"] else ""
            parts.append(
                f"<figure><img src='{data_uri(item['png'])}' alt='{html.escape(item['caption'])}'>"
                f"<figcaption>{flag}{html.escape(item['caption'])}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

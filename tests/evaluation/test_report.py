"""`intra evaluate` reports: thresholds, per-kind table, curves, and an HTML page that a real browser loads."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import intra

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network, as root, without a screen (see .ci/run, which installs Debian's chromium).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def evaluation(cli_run, mvtec_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "eval"
    intra("evaluate", "--run", cli_run, "--data", mvtec_root, "--out", out, "--threads", "1", "--no-heatmaps")
    return out


def test_evaluate_writes_thresholds_tables_and_curves(evaluation, cli_run):
    metrics = json.loads((evaluation / "metrics.json").read_text())
    stored = json.loads((cli_run / "model.json").read_text())["stats"]
    for level in ("image", "pixel"):
        entry = metrics["thresholds"][level]
        assert entry["stored_threshold"] == stored[f"{level}_threshold"]  # reported, never replaced
        assert 0 <= entry["f1_at_stored"] <= entry["f1_max"] <= 1 and "f1_optimal_threshold" in entry
    # What the stored image threshold flags, read again from scores.csv, and printed by the command.
    scores = list(csv.DictReader((evaluation / "scores.csv").open()))
    threshold = metrics["thresholds"]["image"]["stored_threshold"]
    for label, key in (("1", "tpr_at_stored"), ("0", "fpr_at_stored")):
        chosen = [float(r["pred_score"]) >= threshold for r in scores if r["label"] == label]
        assert metrics["thresholds"]["image"][key] == pytest.approx(sum(chosen) / len(chosen))
    rows = list(csv.DictReader((evaluation / "per_kind.csv").open()))
    assert [r["kind"] for r in rows] == ["good", "scratch", "smudge", "spot"] and rows[0]["image_auroc"] == ""
    assert float(rows[1]["image_auroc"]) == pytest.approx(metrics["per_kind"]["scratch"])
    assert "| kind | images |" in (evaluation / "per_kind.md").read_text()
    for name in ("roc_image", "roc_pixel", "pro"):
        assert Image.open(evaluation / f"{name}.png").size[0] >= 300
    # The timing names what it ran on: the CPU's instruction set decides its speed and dtype.
    assert (
        f"1 threads, {metrics['machine']['cpu']}, {metrics['machine']['cpu_capability']})"
        in (evaluation / "report.html").read_text()
    )


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed here (.ci/run installs it)",
)
def test_html_report_loads_in_headless_chromium(evaluation):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    page_url = Path(evaluation / "report.html").resolve().as_uri()
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM or "/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
        page.goto(page_url, wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        browser.close()
    assert problems == []
    assert len(images) == 3 + 10 and all(done and width > 0 for done, width, _ in images), images
    assert {
        "Metrics",
        "Per defect kind",
        "Curves",
        "Highest-scored normal images",
        "Lowest-scored defective images",
    } <= set(headings)

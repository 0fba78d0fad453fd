"""`intra benchmark`: train and evaluate a grid of configurations, one table of results.

A grid file (.toml or .json) names datasets (MVTec-layout roots), configurations (a preset plus
config overrides) and seeds; every (dataset, configuration, seed) is a *cell*:

    seeds = [0, 1]
    eval_size = 256                        # pixel metrics at a short side of 256 px (default: as scored)
    threads = 1                            # torch threads per process
    set = { "train.max_minutes" = 4 }      # overrides for every configuration

    [datasets]
    tile = "data/magnetic-tile"            # relative to the grid file
    cells = { path = "data/elpv", set = { "train.rotation" = "any" }, seeds = [0] }

    [configs.cpu]
    preset = "cpu"
    [configs.msa]
    set = { "model.attention" = "msa" }
    [configs.three-scales]                 # scoring only: reuses the run trained for `cpu`
    score = { "score.scales" = [1.0, 0.5, 0.25] }

Seeds come from the configuration if it names them, else from the dataset, else from the grid
(here `cells` runs one seed except for configurations that list their own).
Overrides apply in the order preset, grid `set`, dataset `set`, configuration `set`. Cells whose
training settings are equal share one trained run (runs/<dataset>/<hash>-s<seed>); `score`
overrides are applied at evaluation time (`rescore`). Each finished cell writes
cells/<dataset>__<config>__s<seed>.json atomically, so a rerun skips it: the benchmark resumes.
Several processes may work on one output folder at once: a cell (and a run being trained) is
claimed with a file lock, and the others move on. Finally results.md, results.csv and
results.json hold one row per cell and a mean/std summary per (dataset, configuration).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import METADATA
from ..config import PRESETS, Config, apply_overrides, preset, read_config_file, with_score_overrides
from ..errors import IntraError
from ..files import write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class Cell:
    dataset: str
    data: Path
    config: str
    seed: int
    cfg: Config  # the resolved training configuration
    score: dict[str, Any] = field(default_factory=dict)  # score.* overrides at evaluation time
    eval_size: int | None = None

    @property
    def name(self) -> str:
        return f"{self.dataset}__{self.config}__s{self.seed}"

    def run_dir(self, out: Path) -> Path:
        """Runs are keyed by their resolved training config, so equal settings train once."""
        text = json.dumps(self.cfg.to_dict(), sort_keys=True)
        return out / "runs" / self.dataset / f"{hashlib.sha1(text.encode()).hexdigest()[:10]}-s{self.seed}"


def read_grid(path: str | Path) -> list[Cell]:
    """All cells of a grid file, in file order (dataset, configuration, seed)."""
    path = Path(path)
    grid = read_config_file(path)
    if not isinstance(grid.get("datasets"), dict) or not grid["datasets"]:
        raise IntraError(f"{path}: needs a [datasets] table (name = path)")
    if not isinstance(grid.get("configs"), dict) or not grid["configs"]:
        raise IntraError(f"{path}: needs at least one [configs.NAME] table")
    for name in [*grid["datasets"], *grid["configs"]]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise IntraError(f"{path}: name {name!r} must be letters, digits, '_', '-' or '.' (it names files)")
    _check_values(path, "the grid", grid)
    for name, conf in grid["configs"].items():
        if not isinstance(conf, dict):
            raise IntraError(f"{path}: configuration {name!r} must be a table, not {conf!r}")
        _check_values(path, f"configuration {name!r}", conf)
        unknown = sorted(set(conf) - {"preset", "set", "score", "seeds"})
        if unknown:  # e.g. [configs.a.b] in TOML: the dot nests a table instead of naming one
            raise IntraError(
                f"{path}: configuration {name!r} has unknown key(s) {', '.join(unknown)} (quote names with dots)"
            )
    cells = []
    for dataset, spec in grid["datasets"].items():
        spec = spec if isinstance(spec, dict) else {"path": spec}
        _check_values(path, f"dataset {dataset!r}", spec)
        unknown = sorted(set(spec) - {"path", "set", "seeds"})
        if unknown:
            raise IntraError(
                f"{path}: dataset {dataset!r} has unknown key(s) {', '.join(unknown)} (allowed: path, set, seeds)"
            )
        data = (path.parent / spec["path"]).resolve() if "path" in spec else None
        if data is None or not data.is_dir():
            raise IntraError(f"{path}: dataset {dataset!r} folder not found: {data}")
        for name, conf in grid["configs"].items():
            for seed in conf.get("seeds", spec.get("seeds", grid.get("seeds", [0]))):
                cells.append(_cell(path, grid, dataset, data, spec, name, conf, int(seed)))
    return cells


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


# What each key of a grid, a dataset or a configuration holds, checked as the file is read (a wrong
# type found later would fail a benchmark after hours of training).
_VALUES = {
    "seeds": (lambda v: isinstance(v, list) and v and all(_is_count(s, 0) for s in v), "a list of seeds >= 0"),
    "set": (lambda v: isinstance(v, dict), "a table of KEY = VALUE overrides"),
    "score": (lambda v: isinstance(v, dict), "a table of score.KEY = VALUE overrides"),
    "path": (lambda v: isinstance(v, str), "a folder path (text)"),
    "preset": (lambda v: v in PRESETS, f"one of {', '.join(sorted(PRESETS))}"),
    "threads": (lambda v: _is_count(v, 0), "a whole number >= 0"),
    "eval_size": (lambda v: _is_count(v, 1), "a whole number of pixels >= 1"),
}


def _check_values(path: Path, where: str, table: dict) -> None:
    for key, value in table.items():
        ok, wanted = _VALUES.get(key, (None, ""))
        if ok is not None and not ok(value):
            raise IntraError(f"{path}: {where}: {key} must be {wanted}, not {value!r}")


def _cell(path: Path, grid: dict, dataset: str, data: Path, spec: dict, name: str, conf: dict, seed: int) -> Cell:
    overrides = {**grid.get("set", {}), **spec.get("set", {}), **conf.get("set", {})}
    overrides.update({"train.seed": seed, "train.threads": grid.get("threads", 0)})
    try:
        cfg = apply_overrides(preset(conf.get("preset", grid.get("preset", "cpu"))), overrides)
    except IntraError as exc:
        raise IntraError(f"{path}: configuration {name!r}: {exc}") from None
    score = dict(conf.get("score", {}))
    try:  # a score row is applied after the training it re-scores: its mistakes are caught now
        with_score_overrides(cfg, score)
    except IntraError as exc:
        raise IntraError(f"{path}: configuration {name!r}: score: {exc}") from None
    return Cell(dataset, data, name, seed, cfg, score, grid.get("eval_size"))


@contextmanager
def claimed(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking file lock: yields False if another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.name}.json"


def run_grid(
    grid: str | Path,
    out: str | Path,
    jobs: int = 1,
    limit: int = 0,
    report: Callable[[int, int, Cell, dict, str], None] | None = None,
) -> tuple[dict[str, Path], int]:
    """Compute every unfinished cell of a grid file with `jobs` processes, then write the tables.

    This process works through the cells itself while `jobs - 1` helper processes (the same grid,
    one process each) take the cells it has not claimed: cells and runs are shared out through file
    locks. `report(number, total, cell, row, status)` hears of every cell as this process meets it.
    Returns the tables' paths (`write_tables`, over the finished cells) and how many cells or helper
    processes failed (a rerun of the same grid retries them).
    """
    if jobs < 1:
        raise IntraError(f"jobs must be at least 1, not {jobs}")
    if limit < 0:
        raise IntraError(f"limit must not be negative, not {limit}")
    cells = read_grid(grid)
    again = [sys.executable, "-m", "intra.cli", "benchmark", "--grid", str(grid), "--out", str(out)]
    helpers = [subprocess.Popen([*again, "--limit", str(limit)], stdout=subprocess.DEVNULL) for _ in range(jobs - 1)]
    failed = 0
    for number, (cell, row, status) in enumerate(run_cells(cells, out, jobs == 1, limit), start=1):
        failed += status == "failed"
        if report:
            report(number, len(cells), cell, row, status)
    failed += sum(helper.wait() != 0 for helper in helpers)
    paths = write_tables(finished_rows(cells, out), out, f"intra benchmark --grid {grid} --out {out}")
    return paths, failed


def run_cells(
    cells: list[Cell], out: str | Path, progress: bool = False, limit: int = 0
) -> Iterator[tuple[Cell, dict | None, str]]:
    """Compute every unfinished cell; yields (cell, row, status) with status done, cached or failed.

    Cells claimed by another process are revisited until their result appears. With `limit`,
    stop after computing that many cells (a long grid in slices; a rerun continues).
    """
    out = Path(out)
    pending = list(cells)
    computed = 0
    while pending and not (limit and computed >= limit):
        waiting = []
        for cell in pending:
            path = cell_path(out, cell)
            if path.is_file():
                yield cell, json.loads(path.read_text(encoding="utf-8")), "cached"
                continue
            if limit and computed >= limit:
                break
            with claimed(path.with_suffix(".lock")) as mine:
                if not mine or path.is_file():
                    waiting.append(cell)
                    continue
                try:
                    row = _compute(cell, out, progress)
                except (IntraError, ValueError, RuntimeError) as exc:
                    log.error("cell %s failed: %s", cell.name, exc)
                    yield cell, {"error": str(exc)}, "failed"
                    continue
                if row is None:  # its run is being trained by another process
                    waiting.append(cell)
                    continue
                write_json(path, row)
                computed += 1
                yield cell, row, "done"
        if len(waiting) == len(pending):
            time.sleep(5)
        pending = waiting


def _compute(cell: Cell, out: Path, progress: bool) -> dict | None:
    """Train (unless its run exists) and evaluate one cell; None if its run is busy elsewhere."""
    from ..evaluation.outputs import write_evaluation
    from ..evaluation.scoring import evaluate
    from ..inference.calibration import rescore
    from ..inference.detector import Detector
    from ..runtime import configure_threads
    from ..training.fit import fit

    run = cell.run_dir(out)
    if not (run / METADATA).is_file():
        with claimed(run.with_suffix(".lock")) as mine:
            if not mine:
                return None
            if not (run / METADATA).is_file():
                log.info("training %s into %s", cell.name, run)
                fit(cell.cfg, cell.data, run, progress=progress, overwrite=True)  # a cell's unfinished run
    configure_threads(cell.cfg.train.threads)
    detector = Detector.load(run, device=cell.cfg.train.device)
    if cell.score:
        detector = rescore(detector, cell.score, cell.data)
    evaluation = evaluate(detector, cell.data, cell.eval_size, progress=progress)
    write_evaluation(evaluation, out / "cells" / cell.name, heatmaps=False)
    metrics, stats = evaluation.metrics, detector.stats
    inpainting = metrics.get("inpainting", {})
    return {
        "dataset": cell.dataset,
        "config": cell.config,
        "seed": cell.seed,
        "image_auroc": metrics["image_auroc"],
        "pixel_auroc": metrics["pixel_auroc"],
        "aupro": metrics["aupro"],
        "per_kind": metrics["per_kind"],
        "train_seconds": stats.get("train_seconds"),
        "epochs": stats.get("epochs"),
        "best_epoch": stats.get("best_epoch"),
        "inpaint": inpainting.get("network"),  # on the good test images, against the trivial fills
        "inpaint_ratio": inpainting.get("ratio"),
        "fill_ring": inpainting.get("ring"),
        "fill_smooth": inpainting.get("smooth"),
        "fill_flat": inpainting.get("flat"),
        "ms_per_image": metrics["ms_per_image"],
        "eval_size": metrics["eval_size"],
        "threads": metrics["threads"],
        "run": str(run.relative_to(out)),
        "score": cell.score,
    }


SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "inpaint_ratio", "train_seconds", "ms_per_image")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds per (dataset, config), in first-appearance order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["config"]), []).append(row)
    summary = []
    for (dataset, config), members in groups.items():
        entry: dict[str, Any] = {"dataset": dataset, "config": config, "seeds": len(members)}
        for key in SUMMARY_KEYS:
            values = [m[key] for m in members if m.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


def _fmt(value: Any, digits: int = 3, std: Any = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _inpainting(row: dict) -> str:
    if row.get("inpaint") is None:
        return "-"
    return f"{row['inpaint']:.2e} ({row['fill_ring']:.2e}, {row['fill_smooth']:.2e}, {row['fill_flat']:.2e})"


def markdown(rows: list[dict], summary: list[dict], command: str) -> str:
    """The results as markdown: the command, a summary over seeds, then one row per cell."""
    lines = [
        f"Command: `{command}`",
        "",
        "| dataset | configuration | seeds | image AUROC | pixel AUROC | AUPRO | inpainting / best fill | train s | ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['config']} | {s['seeds']} | {_fmt(s['image_auroc'], 3, s['image_auroc_std'])} | "
            f"{_fmt(s['pixel_auroc'], 3, s['pixel_auroc_std'])} | {_fmt(s['aupro'], 3, s['aupro_std'])} | "
            f"{_fmt(s['inpaint_ratio'], 2, s['inpaint_ratio_std'])} | {_fmt(s['train_seconds'], 0)} | {_fmt(s['ms_per_image'], 1)} |"
        )
    lines += [
        "",
        "| dataset | configuration | seed | image AUROC | pixel AUROC | AUPRO | image AUROC per kind | inpainting error (ring, smooth, flat fills) | kept epoch | train s | ms/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in r["per_kind"].items())
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r['seed']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
            f"{_fmt(r['aupro'])} | {kinds} | {_inpainting(r)} | {r.get('best_epoch', '-')} of {r.get('epochs', '-')} | "
            f"{_fmt(r['train_seconds'], 0)} | {_fmt(r['ms_per_image'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out: str | Path, command: str) -> dict[str, Path]:
    """results.md, results.csv (per-kind AUROCs as auroc_<kind> columns) and results.json in out."""
    out = Path(out)
    summary = summarize(rows)
    kinds = sorted({k for r in rows for k in r["per_kind"]})
    columns = [
        "dataset",
        "config",
        "seed",
        "image_auroc",
        "pixel_auroc",
        "aupro",
        *[f"auroc_{k}" for k in kinds],
        "train_seconds",
        "inpaint",
        "inpaint_ratio",
        "fill_ring",
        "fill_smooth",
        "fill_flat",
        "best_epoch",
        "epochs",
        "ms_per_image",
        "eval_size",
        "threads",
        "run",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{f"auroc_{k}": v for k, v in r["per_kind"].items()}})
    paths = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    write_text(paths["md"], markdown(rows, summary, command))
    write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], {"command": command, "summary": summary, "rows": rows})
    return paths


def finished_rows(cells: list[Cell], out: str | Path) -> list[dict]:
    """Rows of the cells that have a result file, in grid order."""
    paths = [cell_path(Path(out), c) for c in cells]
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths if p.is_file()]

"""Predict on new images, streaming, in anomalib's vocabulary: one record per image, files per image.

A record: `path` (absolute), `pred_score` (max of the anomaly map), `pred_label` (score >= the
image threshold), `threshold` and `pixel_threshold` (calibrated at training, see `inference.calibration`),
`defect_area` (pixels of `pred_mask` at the image's own resolution), `image_size` [w, h],
`regions` (connected regions of `pred_mask`, largest first: `bbox` [x0, y0, x1, y1), `area`,
`peak_score`, `centroid` [x, y]; see `inference.prediction`) and `seconds` (its share of its
batch's wall time). With an output folder, each image also gets:

  anomaly_maps/<name>.png  the anomaly map at the resolution it was scored at, as a 16-bit PNG: pixel value v
                           means low + v / 65535 * (anomaly_map_max - low), with the map's maximum
                           (the record's `anomaly_map_max`) and its minimum `low` in the PNG's text
                           chunks "intra.anomaly_map_max" and "intra.anomaly_map_min" (0 when
                           absent; z-scored maps go below 0); `read_anomaly_map` decodes it.
  overlays/<name>.png      image | heatmap on the run's fixed colour scale | predicted mask.
  masks/<name>.png         pred_mask (0/255) at the image's own resolution.

and the record is appended to predictions.jsonl, flushed, after its files are written. Rerunning
with the same output folder skips the images already recorded there, so an interrupted run
resumes where it stopped. Memory stays bounded: images are read, scored and written one batch at
a time and records are not kept. <name> mirrors the inputs' folders below their common folder.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from .data.datasets import IMAGE_SUFFIXES, is_image
from .data.geometry import Geometry, image_size
from .data.images import load_images
from .errors import IntraError
from .files import atomic_write, write_json
from .inference.detector import Detector
from .inference.prediction import predicted
from .pictures import overlay_panel, save_png, to_rgb_uint8

log = logging.getLogger(__name__)

RECORDS = "predictions.jsonl"
MANIFEST = "predict.json"
MAP_MAX_KEY = "intra.anomaly_map_max"
MAP_MIN_KEY = "intra.anomaly_map_min"


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, recursively, sorted) and glob patterns -> absolute image paths, in order, without repeats.

    Folders and globs keep only files with an image suffix (others, such as notes.txt, are
    ignored); a file named explicitly must have one. A file that has one but cannot be decoded is
    refused when it is reached.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_image(p) and not _hidden(p.relative_to(path)))
            if not found:
                raise IntraError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in input folder {path}")
            paths.extend(found)
        elif path.is_file():
            if not is_image(path):
                raise IntraError(f"{path} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
            paths.append(path)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if is_image(Path(p)))
            if not matches:
                raise IntraError(f"no images match {item!r}")
            paths.extend(matches)
        else:
            raise IntraError(f"input not found: {item}")
    return list(dict.fromkeys(p.resolve() for p in paths))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def output_names(paths: list[Path]) -> list[str]:
    """Output file names (PNG) mirroring the paths below their common folder: a/1.png, b/1.png stay apart."""
    if not paths:
        return []
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return [p.relative_to(root).with_suffix(".png").as_posix() for p in paths]


def open_output(out_dir: Path, manifest: dict) -> set[str]:
    """Create or reopen an output folder; returns the paths already predicted there.

    A record cut short by an interruption (the last line) is dropped. A folder holding
    predictions made with another run or other thresholds is refused rather than mixed.
    """
    records = out_dir / RECORDS
    previous = out_dir / MANIFEST
    if previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != manifest:
            raise IntraError(
                f"{out_dir} holds predictions made with another run or thresholds ({previous}): choose another --out"
            )
    write_json(previous, manifest)
    if not records.is_file():
        return set()
    lines = records.read_text(encoding="utf-8").split("\n")
    done, kept = set(), []
    for line in lines:
        try:
            done.add(json.loads(line)["path"])
            kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # the cut line (or the empty string after the last newline)
    if len(kept) != len(lines) - 1 or lines[-1]:
        atomic_write(records, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))
    return done


def predict_paths(
    detector: Detector,
    paths: list[Path],
    out_dir: Path | None = None,
    batch_size: int = 8,
    thresholds: dict | None = None,
    done: set[str] = frozenset(),
    progress: bool = False,
) -> Iterator[dict]:
    """Score images in batches, yielding one record per image not in `done` (see the module doc).

    thresholds: {"image_threshold", "pixel_threshold"}; by default the run's calibrated ones.
    """
    cfg = detector.cfg
    stats = detector.stats
    thresholds = thresholds or stats
    image_threshold, pixel_threshold = thresholds.get("image_threshold"), thresholds.get("pixel_threshold")
    vmax = float(stats.get("overlay_vmax", 0.0))
    names = dict(zip(paths, output_names(paths)))
    todo = [p for p in paths if str(p) not in done]
    try:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        records = None if out_dir is None else (out_dir / RECORDS).open("a", encoding="utf-8")
    except OSError as exc:
        raise IntraError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=None if progress else True)
    try:
        for first in range(0, len(todo), batch_size):
            start = time.perf_counter()
            chunk = todo[first : first + batch_size]
            images = load_images(chunk, Geometry.of(cfg), cfg.data.color)  # each (C, h, w) as scored
            maps, scores = detector.predict(images)
            for path, image, amap, score in zip(chunk, images, maps, scores):
                prediction = predicted(amap, float(score), image_size(path), image_threshold, pixel_threshold)
                record = {"path": str(path), **prediction.to_record()}
                if out_dir is not None:
                    files = _write_files(out_dir, names[path], image, amap, prediction.pred_mask, pixel_threshold, vmax)
                    record.update(files)
                record["seconds"] = round((time.perf_counter() - start) / len(chunk), 4)
                if records is not None:
                    records.write(json.dumps(record, ensure_ascii=False) + "\n")
                    records.flush()
                bar.update()
                yield record
    except OSError as exc:
        raise IntraError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    finally:
        bar.close()
        if records is not None:
            records.close()


def _write_files(
    out_dir: Path,
    name: str,
    image: torch.Tensor,
    amap: torch.Tensor,
    mask: np.ndarray | None,
    pixel_threshold: float | None,
    vmax: float,
) -> dict:
    """Anomaly map (16-bit PNG), overlay and mask of one image; returns their record entries."""
    values = amap.numpy()
    peak = float(values.max())
    save_anomaly_map(values, out_dir / "anomaly_maps" / name)
    small_mask = None if pixel_threshold is None else values >= pixel_threshold
    save_png(overlay_panel(to_rgb_uint8(image), values, vmax or peak, small_mask), out_dir / "overlays" / name)
    entries = {"anomaly_map": f"anomaly_maps/{name}", "anomaly_map_max": peak, "overlay": f"overlays/{name}"}
    if mask is not None:
        save_png(Image.fromarray(mask.astype(np.uint8) * 255), out_dir / "masks" / name)
        entries["pred_mask"] = f"masks/{name}"
    return entries


def save_anomaly_map(values: np.ndarray, path: Path) -> None:
    """(H, W) floats -> 16-bit PNG spanning [min(0, minimum), maximum], both in text chunks."""
    peak, low = float(values.max()), min(0.0, float(values.min()))
    span = peak - low
    scaled = np.round((values - low) / span * 65535) if span > 0 else np.zeros_like(values)
    info = PngImagePlugin.PngInfo()
    info.add_text(MAP_MAX_KEY, repr(peak))
    info.add_text(MAP_MIN_KEY, repr(low))
    picture = Image.fromarray(scaled.astype(np.uint16))
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", pnginfo=info))


def read_anomaly_map(path: str | Path) -> np.ndarray:
    """A map written by save_anomaly_map -> (H, W) float32 (within (max - min) / 131070 of the original)."""
    with Image.open(path) as picture:
        peak, low = float(picture.text[MAP_MAX_KEY]), float(picture.text.get(MAP_MIN_KEY, 0.0))
        return low + np.asarray(picture, dtype=np.float32) / 65535 * (peak - low)

"""Predict on new images, streaming, in anomalib's vocabulary: one record per image, files per image.

A record: `path` (absolute), `pred_score` (max of the anomaly map, or of the image score's own map),
`peak` [x, y] (the pixel that maximum lies at), `pred_label` (score >= the image threshold), `threshold` and `pixel_threshold` (calibrated at training, see `inference.calibration`),
`defect_area` (pixels of `pred_mask` at the image's own resolution), `image_size` [w, h],
`regions` (connected regions of `pred_mask`, largest first: `bbox` [x0, y0, x1, y1), `area`,
`peak_score`, `centroid` [x, y]; see `inference.prediction`) and `seconds` (its share of its
batch's wall time). An image that cannot be read (undecodable, too
small, over the pixel budget, several frames: see `data.images`) is skipped: its record is
`{"path", "error", "seconds"}` and the rest of its batch is scored as usual. With an output
folder, each image also gets (<name>: see below):

  anomaly_maps/<name>  the anomaly map at the resolution it was scored at, as a 16-bit PNG: value v
                       means low + v / 65535 * (anomaly_map_max - low), with the map's maximum
                       (the record's `anomaly_map_max`) and its minimum `low` in the PNG's text
                       chunks "intra.anomaly_map_max" and "intra.anomaly_map_min" (0 when
                       absent; z-scored maps go below 0); `read_anomaly_map` decodes it.
  overlays/<name>      image | heatmap on the run's fixed colour scale (a flagged image's `peak`
                       ringed in cyan) | predicted mask.
  masks/<name>         pred_mask (0/255) at the image's own resolution.

and the record is appended to predictions.jsonl after its files are written. <name> mirrors the
inputs' folders below their common folder and keeps the input's suffix (`a/x.jpg` ->
`a/x_jpg.png`), with an index where two inputs would share one (`predict_folder`). Rerunning with
the same output folder skips the images already recorded there, so an interrupted run resumes
where it stopped; unreadable images are retried. The folder is locked while a process predicts
into it, and may not lie inside an input folder (nor an input inside it). Memory stays bounded:
images are read, scored and written one batch at a time and records are not kept.
"""

from __future__ import annotations

import glob
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from .data.datasets import IMAGE_SUFFIXES, is_image
from .data.geometry import Geometry
from .data.images import image_size, try_load_images
from .errors import IntraError
from .files import atomic_write
from .inference.detector import Detector
from .inference.prediction import predicted
from .pictures import overlay_panel, save_png, to_rgb_uint8
from .predict_folder import MANIFEST, RECORDS, PredictFolder, check_not_nested, dumps, output_names

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "RECORDS", "Predictions", "dumps", "expand_inputs", "output_names", "predict_paths"]
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


def resolve_thresholds(stats: dict, image_threshold: float | None = None, pixel_threshold: float | None = None) -> dict:
    """The thresholds to predict with: the given ones, else the run's calibrated ones (None if it has none).

    Any finite number is a threshold (z-scored maps and scores can be negative); NaN and infinity are refused.
    """
    chosen = {"image_threshold": image_threshold, "pixel_threshold": pixel_threshold}
    for name, value in chosen.items():
        if value is not None and not math.isfinite(value):
            raise IntraError(f"--{name.replace('_', '-')} must be a finite number, not {value}")
    return {name: stats.get(name) if value is None else float(value) for name, value in chosen.items()}


class Predictions:
    """`intra predict` as a library call: iterate for the records, then read the counts or `summary()`.

        with Predictions(detector, ["new_images/"], "predictions", run_dir="runs/x") as job:
            for record in job:
                ...
        print(job.summary())

    Opening checks everything before any image is read: the inputs (expand_inputs), the thresholds
    (resolve_thresholds) and the output folder (not inside an input folder; locked; its earlier
    records, made with the same run and thresholds, are skipped).
    """

    def __init__(
        self,
        detector: Detector,
        inputs: list[str | Path],
        out_dir: str | Path | None = None,
        run_dir: str | Path | None = None,
        batch_size: int = 8,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        threads: int = 0,
    ):
        if batch_size <= 0:
            raise IntraError(f"--batch-size must be positive, not {batch_size}")
        self.detector, self.batch_size, self.threads = detector, batch_size, threads
        self.paths = expand_inputs([str(item) for item in inputs])
        self.thresholds = resolve_thresholds(detector.stats, image_threshold, pixel_threshold)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.folder: PredictFolder | None = None
        if self.out_dir is not None:
            check_not_nested(self.out_dir, inputs, self.paths)
            settings = {"run": None if run_dir is None else str(Path(run_dir).resolve()), **self.thresholds}
            if run_dir is not None:
                from .checkpoint import run_hashes

                settings["weights_sha256"] = run_hashes(run_dir)["weights_sha256"]
            self.folder = PredictFolder.open(self.out_dir, settings, self.paths)
        self.skipped = 0 if self.folder is None else sum(str(p) in self.folder.done for p in self.paths)
        self.predicted = self.anomalous = self.unlocated = self.failed = self.warned = 0
        self.first_error: str | None = None
        self.seconds = 0.0

    def __iter__(self) -> Iterator[dict]:
        return self.run()

    def run(self, progress: bool = False) -> Iterator[dict]:
        """Score the images not yet recorded, yielding one record each (see the module doc)."""
        start = time.perf_counter()
        out = self.folder if self.folder is not None else None
        try:
            for record in predict_paths(
                self.detector,
                self.paths,
                out,
                self.batch_size,
                self.thresholds,
                progress=progress,
                threads=self.threads,
            ):
                if "error" in record:
                    self.failed += 1
                    self.first_error = self.first_error or record["error"]
                else:
                    self.predicted += 1
                    self.anomalous += bool(record["pred_label"])
                    self.unlocated += bool(record["pred_label"]) and not record["regions"]
                    self.warned += "warning" in record
                yield record
        finally:
            self.seconds = time.perf_counter() - start

    def summary(self) -> str:
        """One line: counts, what ran, the threshold used, what was skipped and where the records are."""
        ran = self.detector.backend.describe()
        text = (
            f"predicted {self.predicted} images in {self.seconds:.1f}s on {ran['backend']} ({ran['dtype']}, "
            f"{ran['device']}): {self.anomalous} anomalous (pred_score >= {self.thresholds['image_threshold']})"
        )
        if self.unlocated:
            text += (
                f"; {self.unlocated} of them with no region above the pixel threshold"
                ' (their records\' "peak" says where the score was found)'
            )
        if self.failed:
            text += f'; {self.failed} could not be read (their records hold "error")'
        if self.warned:
            text += f'; {self.warned} resized unlike the training images, less reliable (their records hold "warning")'
        if self.skipped:
            text += f"; {self.skipped} already done in {self.out_dir}"
        if self.out_dir is not None:
            text += f"; records in {self.out_dir / RECORDS}"
        return text

    def close(self) -> None:
        if self.folder is not None:
            self.folder.close()

    def __enter__(self) -> Predictions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_paths(
    detector: Detector,
    paths: list[Path],
    out_dir: Path | PredictFolder | None = None,
    batch_size: int = 8,
    thresholds: dict | None = None,
    done: set[str] = frozenset(),
    progress: bool = False,
    threads: int = 0,
) -> Iterator[dict]:
    """Score images in batches, yielding one record per image not done (see the module doc).

    out_dir: an output folder (opened, locked and closed here) or an open PredictFolder (its
    recorded images are skipped too). thresholds: {"image_threshold", "pixel_threshold"}; by
    default the run's calibrated ones. threads: image decoding threads (0 = one per CPU, at most 8).
    """
    thresholds = thresholds or resolve_thresholds(detector.stats)
    if out_dir is not None and not isinstance(out_dir, PredictFolder):
        with PredictFolder.open(Path(out_dir), dict(thresholds), paths) as folder:
            yield from predict_paths(detector, paths, folder, batch_size, thresholds, done, progress, threads)
        return
    folder: PredictFolder | None = out_dir
    skip = set(done) | (folder.done if folder is not None else set())
    todo = [p for p in paths if str(p) not in skip]
    names = folder.names if folder is not None else {}
    cfg = detector.cfg
    geometry = Geometry.of(cfg)
    image_threshold, pixel_threshold = thresholds.get("image_threshold"), thresholds.get("pixel_threshold")
    vmax = float(detector.stats.get("overlay_vmax", 0.0))
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=None if progress else True)
    try:
        for first in range(0, len(todo), batch_size):
            start = time.perf_counter()
            chunk = todo[first : first + batch_size]
            loaded = try_load_images(chunk, geometry, cfg.data.color, threads)  # (C, h, w) or errors
            readable = [image for image in loaded if not isinstance(image, IntraError)]
            scored = iter(zip(readable, *detector.detect(readable))) if readable else iter(())
            for path, image in zip(chunk, loaded):
                record = {"path": str(path), "error": str(image)} if isinstance(image, IntraError) else None
                if record is None:
                    image, amap, score, peak = next(scored)
                    try:
                        prediction = predicted(
                            amap, float(score), image_size(path), image_threshold, pixel_threshold, geometry, peak
                        )
                        record, mask = {"path": str(path), **prediction.to_record()}, prediction.pred_mask
                    except IntraError as exc:  # the file changed or vanished since it was read
                        record, mask = {"path": str(path), "error": str(exc)}, None
                    if folder is not None and "error" not in record:
                        record.update(
                            _write_files(
                                folder.path, names[str(path)], image, amap, mask, pixel_threshold, vmax, prediction.mark
                            )
                        )
                record["seconds"] = round((time.perf_counter() - start) / len(chunk), 4)
                if folder is not None:
                    folder.append(record)
                bar.update()
                yield record
    finally:
        bar.close()


def _write_files(
    out_dir: Path,
    name: str,
    image: torch.Tensor,
    amap: torch.Tensor,
    mask: np.ndarray | None,
    pixel_threshold: float | None,
    vmax: float,
    mark: tuple[float, float] | None = None,
) -> dict:
    """Anomaly map (16-bit PNG), overlay (ringing `mark`) and mask of one image; returns their record entries."""
    values = amap.numpy()
    peak = float(values.max())
    save_anomaly_map(values, out_dir / "anomaly_maps" / name)
    save_png(overlay(image, amap, pixel_threshold, vmax, mark), out_dir / "overlays" / name)
    entries = {"anomaly_map": f"anomaly_maps/{name}", "anomaly_map_max": peak, "overlay": f"overlays/{name}"}
    if mask is not None:
        save_png(Image.fromarray(mask.astype(np.uint8) * 255), out_dir / "masks" / name)
        entries["pred_mask"] = f"masks/{name}"
    return entries


def overlay(
    image: torch.Tensor, amap: torch.Tensor, pixel_threshold: float | None, vmax: float, mark=None
) -> Image.Image:
    """The overlay of one image as scored: image | heatmap | mask (`pictures.overlay_panel`).

    image (C, h, w) in [0, 1], amap (h, w); vmax is the run's fixed colour scale (0: the map's own maximum);
    mark: (x, y) as fractions of width and height to ring on the heatmap (a flagged image's peak), or None.
    """
    values = amap.numpy()
    mask = None if pixel_threshold is None else values >= pixel_threshold
    spot = None if mark is None else (float(mark[0]), float(mark[1]))
    return overlay_panel(to_rgb_uint8(image), values, vmax or float(values.max()), mask, spot)


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

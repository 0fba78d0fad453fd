"""One image's prediction in anomalib's vocabulary, at the image's own resolution, with its defect regions.

`ImagePrediction`: `pred_score` (the maximum of the anomaly map, or of the image score's own map
with `score.image_scoring`), `peak` (x, y): the pixel of the image that maximum lies at, `pred_label`
(score >= the image threshold), `anomaly_map` and `pred_mask` (map >= the pixel threshold) upsampled
bilinearly from the resolution the image was scored at to its own, and `regions`: one entry per
connected region of the mask (8-connected), largest first, each with its bounding box [x0, y0, x1,
y1) in pixels, area, peak score and centroid (x, y); and `warning`, set when the image had to be
resized unlike the training images (`Geometry.distortion`), so that its score is less reliable.

The image threshold and the pixel threshold are calibrated apart (`inference.calibration`), and
with `score.image_scoring` the label and the mask come from two different maps: an image can be
flagged with no region above the pixel threshold. `peak` still says where to look. `Detector.predict_image`,
`intra predict` and `intra serve` build their results with `predicted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..data.geometry import Geometry


@dataclass
class Region:
    """A connected defect region of a predicted mask."""

    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), pixels of the image
    area: int  # pixels
    peak_score: float  # the anomaly map's maximum inside the region
    centroid: tuple[float, float]  # x, y

    def to_dict(self) -> dict:
        return {
            "bbox": list(self.bbox),
            "area": self.area,
            "peak_score": self.peak_score,
            "centroid": list(self.centroid),
        }


@dataclass
class ImagePrediction:
    """What a Detector says about one image (see the module docstring)."""

    pred_score: float
    pred_label: bool | None  # None when the run has no image threshold
    threshold: float | None
    pixel_threshold: float | None
    image_size: tuple[int, int]  # the image's own (width, height)
    anomaly_map: np.ndarray  # (height, width) float32 at the image's own resolution
    pred_mask: np.ndarray | None  # (height, width) bool; None without a pixel threshold
    regions: list[Region] = field(default_factory=list)
    peak: tuple[float, float] | None = None  # (x, y) pixels of the image: where pred_score was found
    warning: str | None = None  # why the score is less reliable than the training images' (see the module doc)

    @property
    def mark(self) -> tuple[float, float] | None:
        """The peak as fractions of width and height when the image is flagged (what overlays ring), else None."""
        if not self.pred_label or self.peak is None:
            return None
        return self.peak[0] / self.image_size[0], self.peak[1] / self.image_size[1]

    def to_record(self) -> dict:
        """The JSON-able part (no arrays): what `intra predict` writes per image; "warning" only when set."""
        record = {
            "pred_score": self.pred_score,
            "pred_label": self.pred_label,
            "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold,
            "defect_area": None if self.pred_mask is None else int(self.pred_mask.sum()),
            "image_size": list(self.image_size),
            "regions": [region.to_dict() for region in self.regions],
            "peak": None if self.peak is None else list(self.peak),
        }
        if self.warning:
            record["warning"] = self.warning
        return record


def regions(mask: np.ndarray, anomaly_map: np.ndarray) -> list[Region]:
    """Connected regions (8-connected) of a boolean mask (H, W), largest first, scored on the map (H, W)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
    found = []
    for index, box in enumerate(ndimage.find_objects(labelled), start=1):
        inside = labelled[box] == index
        ys, xs = np.nonzero(inside)
        found.append(
            Region(
                bbox=(int(box[1].start), int(box[0].start), int(box[1].stop), int(box[0].stop)),
                area=int(inside.sum()),
                peak_score=float(anomaly_map[box][inside].max()),
                centroid=(float(xs.mean() + box[1].start), float(ys.mean() + box[0].start)),
            )
        )
    return sorted(found, key=lambda r: (-r.area, r.bbox))


def predicted(
    scored_map: torch.Tensor,
    score: float,
    size: tuple[int, int],
    image_threshold: float | None,
    pixel_threshold: float | None,
    geometry: Geometry | None = None,
    peak: torch.Tensor | None = None,
) -> ImagePrediction:
    """An ImagePrediction from the anomaly map (h, w) as scored, the image score and the image's own (width, height).

    geometry: the run's, to say when the image was resized unlike the training images (None: say nothing).
    peak: where the score was found, (x, y) as fractions of width and height (`anomaly_map.peak`).
    """
    width, height = size
    full = F.interpolate(scored_map.float()[None, None], size=(height, width), mode="bilinear", align_corners=False)
    anomaly_map = full[0, 0].cpu().numpy()
    mask = None if pixel_threshold is None else anomaly_map >= pixel_threshold
    return ImagePrediction(
        pred_score=float(score),
        pred_label=None if image_threshold is None else bool(score >= image_threshold),
        threshold=image_threshold,
        pixel_threshold=pixel_threshold,
        image_size=(width, height),
        anomaly_map=anomaly_map,
        pred_mask=mask,
        regions=[] if mask is None else regions(mask, anomaly_map),
        peak=None if peak is None else (round(float(peak[0]) * width, 1), round(float(peak[1]) * height, 1)),
        warning=None if geometry is None else geometry.distortion(width, height),
    )

"""The in-memory image API: any kind of image in, a typed prediction at the image's own resolution out."""

import numpy as np
import pytest
import torch
from PIL import Image

from intra.core import anomaly_map
from intra.data.images import load_image
from intra.errors import IntraError
from intra.inference.detector import Detector
from intra.inference.prediction import predicted, regions


def test_regions_are_connected_components_largest_first():
    mask = np.zeros((10, 12), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[5:9, 6:11] = True  # 20 pixels
    mask[9, 11] = True  # touches the big one diagonally: the same region (8-connectivity)
    scores = np.zeros((10, 12), np.float32)
    scores[2, 2], scores[7, 7] = 5.0, 3.0
    found = regions(mask, scores)
    assert [r.area for r in found] == [21, 4]
    assert found[0].bbox == (6, 5, 12, 10) and found[0].peak_score == 3.0
    assert found[1].bbox == (1, 1, 3, 3) and found[1].centroid == (1.5, 1.5) and found[1].peak_score == 5.0


def test_predict_image_takes_arrays_pil_images_and_paths(cli_run, mvtec_root):
    detector = Detector.load(cli_run, device="cpu")
    path = sorted((mvtec_root / "test" / "spot").iterdir())[0]
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    by_path = detector.predict_image(path)
    for same in (pil, array, array.astype(np.float32) / 255, (array.astype(np.uint16) * 257)):
        result = detector.predict_image(same)
        assert result.pred_score == pytest.approx(by_path.pred_score, rel=1e-5, abs=1e-6)
    assert by_path.anomaly_map.shape == (pil.height, pil.width) and by_path.pred_mask.shape == (pil.height, pil.width)
    assert by_path.pred_label == (by_path.pred_score >= detector.stats["image_threshold"])
    assert sum(r.area for r in by_path.regions) == int(by_path.pred_mask.sum())
    # A larger copy of the image comes back at its own, larger resolution.
    big = np.asarray(pil.resize((pil.width * 2, pil.height + 30)))
    assert detector.predict_image(big).anomaly_map.shape == (pil.height + 30, pil.width * 2)
    # Batches give what single images give; a threshold can be overridden.
    many = list(detector.predict_images([path, array, big], batch_size=2, image_threshold=-1e9))
    assert [m.pred_label for m in many] == [True] * 3
    assert many[0].pred_score == pytest.approx(by_path.pred_score, rel=1e-5)
    record = many[0].to_record()
    assert set(record) >= {"pred_score", "pred_label", "regions", "defect_area", "image_size"}
    # The run's images share one size (an object run): the wider copy is stretched to it and says so.
    assert "warning" not in record and many[1].warning is None
    assert "stretched" in many[2].warning and many[2].to_record()["warning"] == many[2].warning
    with pytest.raises(IntraError, match="numpy array"):
        detector.predict_image(b"not an image")
    with pytest.raises(IntraError, match="float image array"):
        detector.predict_image(array.astype(np.float32))  # 0..255 floats: not in [0, 1]


def test_a_flagged_image_with_no_region_still_says_where_its_score_was_found():
    scored = torch.zeros(8, 10)
    scored[6, 2] = 3.0  # the maximum at column 2, row 6
    peak = anomaly_map.peak(scored[None])[0]
    assert peak.tolist() == pytest.approx([2.5 / 10, 6.5 / 8])
    # An image of twice the scored size: the peak lands on the same spot, in the image's pixels.
    found = predicted(scored, 3.0, (20, 16), image_threshold=1.0, pixel_threshold=5.0, peak=peak)
    assert found.pred_label and found.regions == [] and found.peak == (5.0, 13.0)
    assert found.to_record()["peak"] == [5.0, 13.0]


def test_the_peak_is_the_maximum_of_the_map_the_image_score_comes_from(cli_run, mvtec_root):
    detector = Detector.load(cli_run, device="cpu", dtype="fp32")
    paths = sorted((mvtec_root / "test").rglob("*.png"))[:4]
    images = torch.stack([load_image(path, 64, "rgb") for path in paths])
    seen = detector.inspect(images)
    own = detector.image_score_config()  # the tiny run's automatic choice gives the image score a map of its own
    scoring = own or detector.cfg.score
    diff = anomaly_map.difference_map(seen.images, seen.reconstructions, scoring)
    image_maps = anomaly_map.normalize(diff, *detector.statistics(tuple(diff.shape[-2:]), image=own is not None))
    for image_map, score, peak in zip(image_maps, seen.scores, seen.peaks):
        row, column = divmod(int(image_map.argmax()), image_map.shape[1])
        assert float(image_map[row, column]) == pytest.approx(float(score), rel=1e-5)
        assert peak.tolist() == pytest.approx([(column + 0.5) / 64, (row + 0.5) / 64])
    by_path = detector.predict_image(paths[0])
    assert by_path.peak == pytest.approx((float(seen.peaks[0, 0]) * 64, float(seen.peaks[0, 1]) * 64), abs=0.05)

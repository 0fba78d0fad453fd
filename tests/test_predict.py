"""`intra predict`: records, files, thresholds, streaming and resuming, through the real CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from intra.config import ScoreConfig
from intra.data.images import load_image
from intra.evaluation.metrics import f1_at
from intra.inference.calibration import thresholds
from intra.inference.detector import Detector
from intra.predict import RECORDS, predict_paths, read_anomaly_map

from conftest import intra, user_error

KEYS = {
    "path",
    "pred_score",
    "pred_label",
    "threshold",
    "pixel_threshold",
    "defect_area",
    "image_size",
    "seconds",
    "anomaly_map",
    "anomaly_map_max",
    "overlay",
    "pred_mask",
}


def test_predict_writes_records_maps_overlays_masks_and_resumes(cli_run, mvtec_root, tmp_path):
    out = tmp_path / "pred"
    result = intra(
        "predict", "--run", cli_run, mvtec_root / "test", "--out", out, "--threads", "1", "--batch-size", "3"
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 10 and all(set(r) == KEYS for r in records)
    assert "predicted 10 images" in result.stderr.strip().splitlines()[-1]
    stats = json.loads((cli_run / "model.json").read_text())["stats"]
    detector = Detector.load(cli_run, device="cpu")
    for r in records:
        assert r["threshold"] == stats["image_threshold"] and r["pred_label"] == (r["pred_score"] >= r["threshold"])
        amap = read_anomaly_map(out / r["anomaly_map"])
        expected, score = detector.predict(load_image(r["path"], 64, "rgb")[None])
        step = (r["anomaly_map_max"] - min(0.0, float(expected[0].min()))) / 65535  # one 16-bit level
        assert np.abs(amap - expected[0].numpy()).max() <= step
        # A batch of 3 against 1: other matrix shapes sum in another order (float32, ~1e-6 relative).
        assert score.item() == pytest.approx(r["pred_score"], rel=1e-5)
        mask = np.asarray(Image.open(out / r["pred_mask"]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() == r["defect_area"]
        assert Image.open(out / r["overlay"]).size == (3 * 64, 64)
    assert (out / "anomaly_maps" / "spot" / "000.png").is_file() and (
        out / "anomaly_maps" / "good" / "000.png"
    ).is_file()
    assert Image.open(out / records[0]["anomaly_map"]).mode.startswith("I;16")

    # Interrupted after 3 images, in the middle of writing the 4th record: rerun finishes the rest only.
    lines = (out / RECORDS).read_text().splitlines()
    (out / RECORDS).write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    before = [(out / r["overlay"]).stat().st_mtime_ns for r in records[:3]]
    resumed = intra("predict", "--run", cli_run, mvtec_root / "test", "--out", out, "--threads", "1")
    assert [json.loads(line)["path"] for line in resumed.stdout.splitlines()] == [r["path"] for r in records[3:]]
    assert "7 images" in resumed.stderr and "3 already done" in resumed.stderr
    final = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    assert [r["path"] for r in final] == [r["path"] for r in records]
    assert [(out / r["overlay"]).stat().st_mtime_ns for r in records[:3]] == before

    # The same folder with other thresholds would mix two kinds of records: refused.
    user_error(
        intra("predict", "--run", cli_run, mvtec_root / "test", "--out", out, "--image-threshold", "1", check=False),
        str(out),
    )


def test_predict_streams_one_batch_at_a_time(cli_run, mvtec_root, tmp_path):
    """Records come out before later images are even read: a bad 5th image fails only after 4 records."""
    paths = sorted((mvtec_root / "test" / "good").glob("*.png"))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    stream = predict_paths(Detector.load(cli_run, device="cpu"), [*paths, bad], tmp_path / "out", batch_size=2)
    got = [next(stream) for _ in range(4)]
    assert [r["path"] for r in got] == [str(p) for p in paths]
    with pytest.raises(Exception, match="bad.png"):
        next(stream)


def test_thresholds_from_normal_images_do_not_flag_every_normal_image():
    rng = np.random.default_rng(0)
    val_scores, val_maps = rng.gamma(4, 0.01, 40), rng.gamma(4, 0.01, (40, 32, 32)).astype(np.float32)
    t = thresholds(val_scores, val_maps, ScoreConfig())
    new_scores, new_maps = rng.gamma(4, 0.01, 4000), rng.gamma(4, 0.01, (100, 32, 32))
    assert np.mean(new_scores >= t["image_threshold"]) < 0.05
    assert np.mean(new_maps >= t["pixel_threshold"]) < 0.005
    # With anomalies scoring higher, the stored threshold still finds them.
    scores = np.r_[new_scores[:100], 0.2 + rng.random(20)]
    assert f1_at(scores, np.r_[np.zeros(100), np.ones(20)], t["image_threshold"]) > 0.8


def test_trained_run_stores_thresholds_from_its_validation_images(cli_run):
    stats = json.loads((cli_run / "model.json").read_text())["stats"]
    assert stats["val_images"] == 5 and "5 held-out normal images" in stats["threshold_source"]
    assert 0 < stats["pixel_threshold"] and 0 < stats["image_threshold"] <= stats["val_score_max"]

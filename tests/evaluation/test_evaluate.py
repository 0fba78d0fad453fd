"""Scoring a test set: metrics with and without pixel masks."""

import json
import logging

from PIL import Image

from intra.training.fit import fit

from conftest import tiny_config


def test_evaluation_without_masks_reports_image_metrics_only_and_names_stretched_images(tmp_path, mvtec_root, caplog):
    import shutil

    from intra.evaluation.scoring import evaluate

    data = tmp_path / "labels-only"
    shutil.copytree(mvtec_root, data, ignore=shutil.ignore_patterns("ground_truth"))
    good = sorted((data / "test" / "good").iterdir())[0]
    Image.open(good).resize((96, 64)).save(good)  # wider than the training images, which share one size
    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.data.resize = "scale"  # objects of one size: every image is resized to it
    cfg.train.max_epochs = 1
    detector = fit(cfg, data, tmp_path / "run").detector
    with caplog.at_level(logging.WARNING, logger="intra"):
        metrics = evaluate(detector, data).metrics
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None and 0 <= metrics["image_auroc"] <= 1
    assert "localisation" not in metrics  # no masks: nothing to point at
    assert set(metrics["per_kind"]) == {"scratch", "spot", "smudge"}
    assert (
        f"1 of 10 test images are resized unlike the training images, so less reliable (the first: {good}, stretched 1.50x"
        in caplog.text
    )


def test_evaluation_returns_values_and_writing_is_a_separate_call(tmp_path, mvtec_root):
    from intra.evaluation.outputs import write_evaluation
    from intra.evaluation.scoring import evaluate

    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.train.max_epochs = 1
    detector = fit(cfg, mvtec_root, tmp_path / "run").detector
    evaluation = evaluate(detector, mvtec_root, eval_size=32)
    assert not (tmp_path / "eval").exists()
    assert len(evaluation.maps) == len(evaluation.samples) == 10 and evaluation.maps[0].shape == (32, 32)
    good = [s.kind == "good" for s in evaluation.samples]
    assert evaluation.metrics["inpainting"]["images"] == sum(good)
    assert evaluation.metrics["inpainting"]["ratio"] > 0
    # The scoring in use is recorded: the paper's squared deviation, the score the map's maximum.
    assert evaluation.metrics["anomaly_map_normalisation"] == "squared deviation from the mean map"
    assert evaluation.metrics["anomaly_map_difference"] == "1 - GMS"
    assert evaluation.metrics["image_score"] == "max of the anomaly map"
    # Scored by the anomaly map itself, the image score's peak is the map's maximum: the same hits.
    where = evaluation.metrics["localisation"]
    assert where["defective_images"] == len(good) - sum(good)
    assert where["score_peak_on_defect"] == where["map_max_on_defect"] and 0 <= where["map_max_on_defect"] <= 1
    assert 0 <= where["flagged_without_region"] <= where["flagged"] <= len(good)
    write_evaluation(evaluation, tmp_path / "eval", heatmaps=False)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["image_auroc"] == evaluation.metrics["image_auroc"] and (tmp_path / "eval" / "report.html").is_file()
    assert written["machine"]["cpu_capability"] and written["machine"]["threads"] == written["threads"]


def test_each_kind_reports_its_share_of_the_defect_pixels():
    """The pooled pixel AUROC weighs kinds by their pixels: the table says how much each weighs."""
    from pathlib import Path

    import numpy as np

    from intra.data.datasets import Sample
    from intra.evaluation.scoring import per_kind_rows

    samples = [
        Sample(Path(f"{kind}{i}.png"), kind, int(kind != "good")) for kind in ("good", "hole", "band") for i in range(2)
    ]
    masks = [np.zeros((10, 10), bool) for _ in samples]
    masks[2][0, :2] = masks[3][1, :2] = True  # holes: 4 pixels
    masks[4][:6] = masks[5][:6] = True  # bands: 120 pixels
    maps = [np.random.default_rng(i).random((10, 10)) for i in range(len(samples))]
    rows = {row["kind"]: row for row in per_kind_rows(samples, np.arange(6.0), maps, masks, threshold=None)}
    assert rows["good"]["defect_pixels"] == 0
    assert rows["hole"]["defect_pixels"] == 4 / 124 and rows["band"]["defect_pixels"] == 120 / 124
    labels_only = per_kind_rows(samples, np.arange(6.0), maps, None, threshold=None)
    assert all(row["defect_pixels"] is None and row["pixel_auroc"] is None for row in labels_only)

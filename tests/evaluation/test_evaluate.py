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
    write_evaluation(evaluation, tmp_path / "eval", heatmaps=False)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["image_auroc"] == evaluation.metrics["image_auroc"] and (tmp_path / "eval" / "report.html").is_file()

"""Scoring a test set: metrics with and without pixel masks."""

from intra.training.fit import fit

from conftest import tiny_config


def test_evaluation_without_masks_reports_image_metrics_only(tmp_path, mvtec_root):
    import shutil

    from intra.evaluation.evaluate import evaluate

    data = tmp_path / "labels-only"
    shutil.copytree(mvtec_root, data, ignore=shutil.ignore_patterns("ground_truth"))
    cfg = tiny_config()
    cfg.model.image_size = 64
    cfg.train.max_epochs = 1
    detector = fit(cfg, data, tmp_path / "run").detector
    metrics = evaluate(detector, data, tmp_path / "eval", heatmaps=False)
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None and 0 <= metrics["image_auroc"] <= 1
    assert set(metrics["per_kind"]) == {"scratch", "spot", "smudge"}

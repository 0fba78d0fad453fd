"""ONNX export: the onnxruntime backend gives the torch path's anomaly maps (max abs difference <= 1e-4)."""

import json
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')")

from intra.checkpoint import config_sha256  # noqa: E402
from intra.errors import IntraError  # noqa: E402
from intra.export import export_onnx  # noqa: E402
from intra.inference.detector import Detector  # noqa: E402

from conftest import intra, user_error  # noqa: E402


def test_onnx_backend_matches_torch(cli_run, mvtec_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    result = intra("export", "--run", run, "--format", "onnx")
    assert (run / "model.onnx").is_file() and "dynamic batch" in result.stdout

    torch_detector = Detector.load(run, device="cpu")
    onnx_detector = Detector.load(run, backend="onnx", threads=1)
    assert onnx_detector.backend.describe()["backend"] == "onnxruntime"
    onnx_detector.cfg.score.chunk_windows = 100  # uneven chunks: the batch dimension really is dynamic
    for detector in (torch_detector, onnx_detector):
        detector.cfg.score.cover_spacing = 0  # first one patch per pass
    images = torch.rand(3, 3, 64, 64)
    maps_t, scores_t = torch_detector.predict(images)
    maps_o, scores_o = onnx_detector.predict(images)
    assert (maps_t - maps_o).abs().max() <= 1e-4 and (scores_t - scores_o).abs().max() <= 1e-4
    # The same graph inpaints 4 patches per pass (the plan is the engine's, not the graph's).
    for detector in (torch_detector, onnx_detector):
        detector.cfg.score.cover_spacing = 2
        detector._plans.clear()
    maps_t2, _ = torch_detector.predict(images)
    maps_o2, _ = onnx_detector.predict(images)
    assert (maps_t2 - maps_o2).abs().max() <= 1e-4 and (maps_t2 - maps_t).abs().max() > 1e-5  # another path

    spot = mvtec_root / "test" / "spot"
    by_torch = [json.loads(line) for line in intra("predict", "--run", run, spot, "--threads", "1").stdout.splitlines()]
    by_onnx = [
        json.loads(line)
        for line in intra("predict", "--run", run, spot, "--backend", "onnx", "--threads", "1").stdout.splitlines()
    ]
    assert len(by_onnx) == 2
    for a, b in zip(by_torch, by_onnx):
        assert a["path"] == b["path"] and abs(a["pred_score"] - b["pred_score"]) <= 1e-4


def test_onnx_backend_refuses_a_missing_or_stale_export(cli_run, mvtec_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    user_error(
        intra("predict", "--run", run, mvtec_root / "test" / "spot", "--backend", "onnx", check=False), "intra export"
    )
    export_onnx(run)
    meta = json.loads((run / "model.json").read_text())
    meta["weights_sha256"] = "0" * 64  # as if the weights had been retrained since the export
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(IntraError, match="other weights|does not match"):
        Detector.load(run, backend="onnx")


def test_onnx_export_of_a_mean_head_inpaints_one_patch_per_window(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["config"]["model"]["head"] = "mean"  # same weight shapes: the head pools instead of picking a token
    meta["config"]["train"]["cover_spacing"] = meta["config"]["score"]["cover_spacing"] = 0
    meta["config_sha256"] = config_sha256(meta["config"])  # a deliberate edit: re-sealed, or it is refused
    (run / "model.json").write_text(json.dumps(meta))
    export_onnx(run)
    torch_detector, onnx_detector = Detector.load(run, device="cpu"), Detector.load(run, backend="onnx", threads=1)
    images = torch.rand(2, 3, 64, 64)
    assert (torch_detector.predict(images)[0] - onnx_detector.predict(images)[0]).abs().max() <= 1e-4


@pytest.mark.parametrize("head", ["covered", "mean"])
def test_onnx_export_of_a_smooth_base_fill_adds_it_in_the_graph(cli_run, tmp_path, head):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["config"]["model"]["base_fill"] = "smooth"  # same weights: the head's pixels become a correction
    meta["config"]["model"]["head"] = head
    if head == "mean":
        meta["config"]["train"]["cover_spacing"] = meta["config"]["score"]["cover_spacing"] = 0
    meta["config_sha256"] = config_sha256(meta["config"])
    (run / "model.json").write_text(json.dumps(meta))
    export_onnx(run)
    torch_detector, onnx_detector = Detector.load(run, device="cpu"), Detector.load(run, backend="onnx", threads=1)
    images = torch.rand(2, 3, 64, 64)
    torch_maps, onnx_maps = torch_detector.predict(images)[0], onnx_detector.predict(images)[0]
    assert (torch_maps - onnx_maps).abs().max() <= 1e-4

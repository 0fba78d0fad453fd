"""ONNX export: the onnxruntime backend gives the torch path's anomaly maps (max abs difference <= 1e-4)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')")

from intra.checkpoint import config_sha256, save_checkpoint  # noqa: E402
from intra.errors import IntraError  # noqa: E402
from intra.export import export_onnx  # noqa: E402
from intra.export_full import export_full_onnx  # noqa: E402
from intra.inference.calibration import rescore  # noqa: E402
from intra.inference.detector import Detector  # noqa: E402

from conftest import TINY, intra, user_error  # noqa: E402


@pytest.fixture(scope="module")
def network_graph(cli_run, tmp_path_factory):
    """The tiny CLI run's network exported once through the command line to a folder of its own
    (`intra export --out`: the run folder is left as it was), shared by the tests below."""
    path = tmp_path_factory.mktemp("graphs") / "network.onnx"
    printed = intra("export", "--run", cli_run, "--format", "onnx", "--out", path).stdout
    assert "dynamic batch" in printed and path.is_file() and not (cli_run / "model.onnx").exists()
    return path


def test_onnx_backend_matches_torch(cli_run, mvtec_root, tmp_path, network_graph):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    shutil.copy(network_graph, run / "model.onnx")  # where the backend looks (intra export without --out)

    torch_detector = Detector.load(run, device="cpu", dtype="fp32")
    onnx_detector = Detector.load(run, backend="onnx", threads=1)
    assert onnx_detector.backend.describe() == {"backend": "onnxruntime", "dtype": "fp32", "device": "cpu"}
    with pytest.raises(IntraError, match="runs fp32"):  # "auto", the default, is fp32 there; bf16 is refused
        Detector.load(run, backend="onnx", dtype="bf16")
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
    # fp32 on both sides: "auto" computes bf16 on a CPU with AVX-512 BF16 or AMX, and the backends are compared here.
    by_torch = [
        json.loads(line)
        for line in intra("predict", "--run", run, spot, "--threads", "1", "--dtype", "fp32").stdout.splitlines()
    ]
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
    # An export of an older intra took one covered index per window: a lattice plan is refused, not
    # fed its first covered patch alone (the others would be read back as visible copies of the input).
    older = Detector.load(run, backend="onnx", threads=1)
    older.cfg.score.cover_spacing = 2  # 4 patches per pass in the tiny run's 3 x 3 windows
    older.backend.takes_mask = False
    with pytest.raises(IntraError, match="one covered patch per window.*export again"):
        older.predict(torch.rand(1, 3, 64, 64))
    meta = json.loads((run / "model.json").read_text())
    meta["weights_sha256"] = "0" * 64  # as if the weights had been retrained since the export
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(IntraError, match="other weights|does not match"):
        Detector.load(run, backend="onnx")


def test_a_graph_exported_elsewhere_runs_with_onnx_file(cli_run, mvtec_root, tmp_path, network_graph):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    spot = mvtec_root / "test" / "spot"
    network, full = network_graph, tmp_path / "graphs" / "full.onnx"
    intra("export", "--run", run, "--format", "onnx", "--full", "--out", full)
    assert not (run / "model.onnx").exists() and not (run / "model_full.onnx").exists()
    user_error(intra("predict", "--run", run, spot, "--backend", "onnx", check=False), "model.onnx not found")
    user_error(intra("predict", "--run", run, spot, "--onnx-file", network, check=False), "--onnx-file", "--backend")
    scores = {}
    for backend, graph in (("onnx", network), ("onnx-full", full)):
        result = intra("predict", "--run", run, spot, "--backend", backend, "--onnx-file", graph, "--threads", "1")
        scores[backend] = [json.loads(line)["pred_score"] for line in result.stdout.splitlines()]
    assert len(scores["onnx"]) == 2 and scores["onnx"] == pytest.approx(scores["onnx-full"], abs=1e-4)
    # The file is checked against the run like the default one: another run's graph is refused.
    other = tmp_path / "other"
    trained = Detector.load(run, device="cpu")
    with torch.no_grad():
        for weight in trained.model.parameters():
            weight.add_(0.01)  # as if trained again
    save_checkpoint(other, trained.model, trained.cfg, trained.tensors(), trained.stats)
    with pytest.raises(IntraError, match="other weights"):
        Detector.load(other, backend="onnx", onnx_file=network)


def test_a_run_saved_without_hashes_exports_and_runs_its_graph(cli_run, tmp_path):
    # model.json's hashes are optional (runs load without them); the export then stamps the hash of the
    # weights file itself, and loading compares with the same, instead of "" against None for ever.
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    meta = json.loads((run / "model.json").read_text())
    del meta["weights_sha256"], meta["config_sha256"]
    (run / "model.json").write_text(json.dumps(meta))
    export_onnx(run)
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(
        Detector.load(run, backend="onnx", threads=1).predict(images)[1],
        Detector.load(run, device="cpu", dtype="fp32").predict(images)[1],
        atol=1e-4,
        rtol=1e-4,
    )


def test_onnx_export_of_a_mean_head_inpaints_one_patch_per_window(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["config"]["model"]["head"] = "mean"  # same weight shapes: the head pools instead of picking a token
    meta["config"]["train"]["cover_spacing"] = meta["config"]["score"]["cover_spacing"] = 0
    meta["config_sha256"] = config_sha256(meta["config"])  # a deliberate edit: re-sealed, or it is refused
    (run / "model.json").write_text(json.dumps(meta))
    export_onnx(run)
    torch_detector, onnx_detector = (
        Detector.load(run, device="cpu", dtype="fp32"),
        Detector.load(run, backend="onnx", threads=1),
    )
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
    torch_detector, onnx_detector = (
        Detector.load(run, device="cpu", dtype="fp32"),
        Detector.load(run, backend="onnx", threads=1),
    )
    images = torch.rand(2, 3, 64, 64)
    torch_maps, onnx_maps = torch_detector.predict(images)[0], onnx_detector.predict(images)[0]
    assert (torch_maps - onnx_maps).abs().max() <= 1e-4


# The end-to-end export: one graph from images to anomaly maps and scores (intra export --full).


def edited_run(source, target, **sections):
    """A copy of a run with config keys changed ({"model": {"head": "mean"}}), re-sealed as a deliberate edit."""
    shutil.copytree(source, target)
    meta = json.loads((target / "model.json").read_text())
    for section, values in sections.items():
        meta["config"][section].update(values)
    meta["config_sha256"] = config_sha256(meta["config"])
    (target / "model.json").write_text(json.dumps(meta))
    return target


def full_graph_difference(run, backend: str = "onnx-full") -> float:
    """The largest difference between Detector.predict and the full graph, maps and scores, at batch 1 and 3."""
    torch_detector = Detector.load(run, device="cpu", dtype="fp32")
    graph_detector = Detector.load(run, backend=backend, threads=1)
    assert graph_detector.backend.describe()["backend"].endswith("(full graph)")
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (1, 3):
        images = torch.rand(batch, 3, 64, 64, generator=generator)
        maps, scores = torch_detector.predict(images)
        graph_maps, graph_scores, graph_peaks = graph_detector.detect(images)
        assert graph_maps.shape == (batch, 64, 64) and graph_scores.shape == (batch,)
        assert maps.abs().max() > 1e-3  # real maps, not zeros on both sides
        # The graph says where each score was found: torch's peaks, unless two pixels tie within the tolerance.
        peaks = torch_detector.detect(images)[2]
        assert graph_peaks.shape == (batch, 2) and (graph_peaks == peaks).all(dim=1).sum() >= batch - 1
        worst = max(worst, float((maps - graph_maps).abs().max()), float((scores - graph_scores).abs().max()))
    return worst


@pytest.fixture(scope="module")
def cpu_full(cli_run, tmp_path_factory):
    """The cpu-preset tiny run (covered head, a lattice of covered patches per pass) with its full graph."""
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(cli_run, run)
    result = intra("export", "--run", run, "--format", "onnx", "--full")
    assert "model_full.onnx" in result.stdout and not (run / "model.onnx").exists()  # the network-only file apart
    return run


@pytest.fixture(scope="module")
def paper_full(mvtec_root, tmp_path_factory):
    """A tiny run of the paper preset (mean head, one patch per pass, square images) with its full graph."""
    run = tmp_path_factory.mktemp("paper") / "run"
    intra("train", "--preset", "paper", "--data", mvtec_root, "--out", run, *TINY, "--set", "train.val_fraction=0.4")
    export_full_onnx(run)
    return run


def test_full_export_of_the_cpu_preset_matches_detector_predict(cpu_full, mvtec_root):
    cfg = Detector.load(cpu_full, device="cpu").cfg
    assert cfg.model.head == "covered" and cfg.score.cover_spacing >= 2 and cfg.data.resize == "scale"
    assert full_graph_difference(cpu_full) <= 1e-4

    # intra predict on the full graph: the same records (scores, labels, regions) as torch's.
    spot = mvtec_root / "test" / "spot"
    by = {
        backend: [
            json.loads(line)
            for line in intra("predict", "--run", cpu_full, spot, *flags, "--threads", "1").stdout.splitlines()
        ]
        # onnxruntime runs fp32, and "auto" would run torch in bf16 on a CPU that has it
        for backend, flags in (("torch", ["--dtype", "fp32"]), ("onnx-full", ["--backend", "onnx-full"]))
    }
    assert len(by["onnx-full"]) == 2
    for a, b in zip(by["torch"], by["onnx-full"]):
        assert a["path"] == b["path"] and abs(a["pred_score"] - b["pred_score"]) <= 1e-4
        assert a["pred_label"] == b["pred_label"] and len(a["regions"]) == len(b["regions"])


def test_the_standalone_example_in_the_docs_runs_as_written(cpu_full, mvtec_root, tmp_path, monkeypatch, capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "import torch" not in code and "import intra" not in code
    shutil.copytree(cpu_full, tmp_path / "runs" / "my_product")
    (tmp_path / "new_images").mkdir()
    shutil.copy(sorted((mvtec_root / "test" / "spot").iterdir())[0], tmp_path / "new_images" / "0001.png")
    monkeypatch.chdir(tmp_path)  # the example's relative paths, as a user would run it
    exec(compile(code, "docs/export.md", "exec"), {"__name__": "example"})
    score, found, pixels = capsys.readouterr().out.splitlines()
    assert score.startswith("score ") and "anomalous: " in score and pixels.startswith("defect pixels: ")
    x, y = (float(v) for v in re.fullmatch(r"found at x (\S+), y (\S+) px", found).groups())
    assert 0 < x < 64 and 0 < y < 64


def test_full_export_of_the_paper_preset_matches_detector_predict(paper_full):
    cfg = Detector.load(paper_full, device="cpu").cfg
    assert cfg.model.head == "mean" and cfg.score.cover_spacing == 0 and cfg.data.resize == "square"
    assert full_graph_difference(paper_full) <= 1e-4


def test_full_export_of_a_smooth_base_fill(cli_run, tmp_path):
    run = edited_run(cli_run, tmp_path / "run", model={"base_fill": "smooth"})  # same weights: a correction
    export_full_onnx(run)
    assert full_graph_difference(run) <= 1e-4


def test_full_export_with_zscores_and_standardised_images(paper_full, tmp_path):
    # Scoring branches the presets' runs did not take: the std map as a constant, per-image standardisation.
    run = edited_run(paper_full, tmp_path / "run", score={"zscore": True}, data={"standardize": True})
    export_full_onnx(run)
    assert full_graph_difference(run) <= 1e-4


def test_full_export_with_the_signed_difference(paper_full, tmp_path):
    # The map on 1 - GMS plus the weighted magnitude of the smoothed signed difference (score.difference).
    run = edited_run(paper_full, tmp_path / "run", score={"difference": "both", "signed_weight": 6.0})
    export_full_onnx(run)
    assert full_graph_difference(run) <= 1e-4


def test_full_export_with_an_image_scoring_of_its_own(paper_full, mvtec_root, tmp_path):
    # The image score from another scoring's map, with that scoring's statistics as constants.
    run = tmp_path / "run"
    shutil.copytree(paper_full, run)
    detector = rescore(Detector.load(run, device="cpu", dtype="fp32"), {"score.image_scoring": "fine-z"}, mvtec_root)
    save_checkpoint(run, detector.model, detector.cfg, detector.tensors(), detector.stats)
    export_full_onnx(run)
    assert full_graph_difference(run) <= 1e-4


def test_full_export_refuses_runs_without_one_size_and_stale_graphs(cli_run, paper_full, tmp_path):
    free = edited_run(cli_run, tmp_path / "free", data={"height": 0, "width": 0})
    user_error(intra("export", "--run", free, "--format", "onnx", "--full", check=False), "without --full")
    user_error(intra("predict", "--run", free, free, "--backend", "onnx-full", check=False), "--full")
    # A graph exported before the scoring changed (model.json re-sealed with another config) is refused.
    stale = edited_run(paper_full, tmp_path / "stale", score={"zscore": True})
    with pytest.raises(IntraError, match="export again"):
        Detector.load(stale, backend="onnx-full")
    with pytest.raises(IntraError, match="maps and scores only"):
        Detector.load(paper_full, backend="onnx-full").reconstruct(torch.rand(1, 3, 64, 64))


def test_openvino_runs_the_full_graph_like_detector_predict(cpu_full, paper_full):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")
    assert full_graph_difference(cpu_full, "openvino") <= 1e-4
    assert full_graph_difference(paper_full, "openvino") <= 1e-4


def test_a_full_graph_exported_before_peaks_gives_the_maps_maximum():
    from intra.inference.full_graph import GraphRuntime

    maps = np.zeros((2, 4, 6), np.float32)
    maps[0, 1, 4], maps[1, 3, 0] = 1.0, 2.0
    two_outputs = GraphRuntime(lambda images: [maps, maps.max(axis=(1, 2))], "onnxruntime", Path("old.onnx"), (4, 6))
    _, scores, peaks = two_outputs(torch.zeros(2, 3, 4, 6))
    assert scores.tolist() == [1.0, 2.0]
    torch.testing.assert_close(peaks, torch.tensor([[4.5 / 6, 1.5 / 4], [0.5 / 6, 3.5 / 4]]))

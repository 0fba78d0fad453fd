"""`intra predict`: records, files, thresholds, streaming and resuming, through the real CLI."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from intra.config import ScoreConfig
from intra.data.images import load_image
from intra.errors import IntraError
from intra.evaluation.metrics import f1_at
from intra.inference.calibration import thresholds
from intra.inference.detector import Detector
from intra.pictures import MARK_COLOUR
from intra.predict import RECORDS, Predictions, output_names, predict_paths, read_anomaly_map
from intra.predict_folder import PredictFolder
from intra.runtime import native_bf16

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
    "regions",
    "peak",
}


def test_predict_writes_records_maps_overlays_masks_and_resumes(cli_run, mvtec_root, tmp_path):
    out = tmp_path / "pred"
    result = intra(
        "predict", "--run", cli_run, mvtec_root / "test", "--out", out, "--threads", "1", "--batch-size", "3"
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 10 and all(set(r) == KEYS for r in records)
    summary = result.stderr.strip().splitlines()[-1]
    expected = "bf16" if native_bf16("cpu") else "fp32"  # --dtype auto, resolved and said
    assert "predicted 10 images" in summary and " on torch" in summary and f"({expected}" in summary
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
        assert 0 < r["peak"][0] < 64 and 0 < r["peak"][1] < 64
    assert (out / "anomaly_maps" / "spot" / "000_png.png").is_file() and (
        out / "anomaly_maps" / "good" / "000_png.png"
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


def test_a_flagged_image_without_a_region_is_counted_and_its_peak_ringed(cli_run, mvtec_root, tmp_path):
    spot = mvtec_root / "test" / "spot"
    thresholds = ("--image-threshold=-1e9", "--pixel-threshold=1e9")  # every image flagged, no pixel
    flagged = intra("predict", "--run", cli_run, spot, "--out", tmp_path / "a", *thresholds, "--threads", "1")
    records = [json.loads(line) for line in flagged.stdout.splitlines()]
    assert all(r["pred_label"] and r["regions"] == [] for r in records)
    assert "2 anomalous" in flagged.stderr and "2 of them with no region above the pixel threshold" in flagged.stderr
    normal = intra("predict", "--run", cli_run, spot, "--out", tmp_path / "b", "--image-threshold", "1e9")
    assert "0 anomalous" in normal.stderr and "no region" not in normal.stderr
    for record in records:  # the heatmap panel rings the peak in cyan on a flagged image, and only there
        ringed = np.asarray(Image.open(tmp_path / "a" / record["overlay"]).convert("RGB"))[:, 64:128]
        calm = np.asarray(Image.open(tmp_path / "b" / record["overlay"]).convert("RGB"))[:, 64:128]
        cyan = np.argwhere((ringed == MARK_COLOUR).all(axis=2))
        assert len(cyan) and not (calm == MARK_COLOUR).all(axis=2).any()
        assert np.abs(cyan.mean(axis=0)[::-1] - np.array(record["peak"])).max() < 3  # centred on the peak (x, y)


def test_predict_streams_one_batch_at_a_time(cli_run, mvtec_root, tmp_path):
    """Records come out before later images are even read; a bad 5th image gets a record saying why."""
    paths = sorted((mvtec_root / "test" / "good").glob("*.png"))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    stream = predict_paths(Detector.load(cli_run, device="cpu"), [*paths, bad], tmp_path / "out", batch_size=2)
    got = [next(stream) for _ in range(4)]
    assert [r["path"] for r in got] == [str(p) for p in paths]
    last = next(stream)
    assert last["path"] == str(bad) and "bad.png" in last["error"]


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
    assert re.search(r"0\.99 \(image, auto: (log-)?gumbel\)", stats["threshold_source"])  # the fit auto took
    # From 5 images the Gumbel fit's 0.99 quantile lies beyond the highest of them.
    assert 0 < stats["pixel_threshold"] and 0 < stats["val_score_max"] <= stats["image_threshold"]


def _images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name, quality=95)
    return folder


def test_output_names_never_collide_and_the_manifest_names_each_input(cli_run, tmp_path):
    """Issue 13, case 1: x.png and x.jpg in one folder shared one map, overlay and mask; a rerun with
    other inputs could reuse a name. Now the suffix is in every name, an index settles the rest."""
    detector = Detector.load(cli_run, device="cpu")
    first = _images(tmp_path / "in1", ["x.png", "x.jpg", "X_png.png"])
    out = tmp_path / "out"
    with Predictions(detector, [first], out, run_dir=cli_run, image_threshold=-1.0) as job:
        records = list(job)
    names = [r["anomaly_map"] for r in records]
    assert names == ["anomaly_maps/X_png_png.png", "anomaly_maps/x_jpg.png", "anomaly_maps/x_png.png"]
    assert all(r["pred_label"] for r in records)  # any finite threshold, also a negative one (z-scored maps)
    before = {n: (out / n).read_bytes() for n in names}

    second = _images(tmp_path / "in2", ["x.png"], seed=1)  # another folder, the same name: resumed into `out`
    with Predictions(detector, [second / "x.png"], out, run_dir=cli_run, image_threshold=-1.0) as job:
        (record,) = list(job)
    assert record["anomaly_map"] == "anomaly_maps/x_png-2.png" and record["overlay"] == "overlays/x_png-2.png"
    assert {n: (out / n).read_bytes() for n in names} == before
    outputs = json.loads((out / "predict.json").read_text())["outputs"]
    assert outputs == {
        "X_png_png.png": str(first / "X_png.png"),
        "x_jpg.png": str(first / "x.jpg"),
        "x_png.png": str(first / "x.png"),
        "x_png-2.png": str(second / "x.png"),
    }
    assert output_names([Path("/a/x.PNG"), Path("/a/x.png")]) == ["x_PNG.png", "x_png-2.png"]  # case-blind disks


def test_predict_reads_camera_images_upright(cli_run, tmp_path):
    """Issue 13, case 7: a JPEG stored sideways with an EXIF orientation is scored and masked upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "cam.jpg", exif=exif)
    with Predictions(Detector.load(cli_run, device="cpu"), [tmp_path / "cam.jpg"], tmp_path / "out") as job:
        (record,) = list(job)
    assert record["image_size"] == [40, 64]
    assert Image.open(tmp_path / "out" / record["pred_mask"]).size == (40, 64)


def test_an_image_stretched_to_the_runs_size_is_scored_with_a_warning(cli_run, tmp_path):
    """The tiny run's training images share one square size: a wide image is stretched to it, and says so."""
    Image.fromarray(np.full((32, 64, 3), 128, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "square.png")
    with Predictions(Detector.load(cli_run, device="cpu"), [tmp_path / "wide.png", tmp_path / "square.png"]) as job:
        wide, square = list(job)
    assert "stretched 2.00x" in wide["warning"] and "pred_score" in wide
    assert "warning" not in square
    assert job.warned == 1 and "1 resized unlike the training images" in job.summary()


def test_out_inside_the_inputs_is_refused(cli_run, tmp_path):
    """Issue 13, case 2: --out equal to the input folder overwrote a user's masks/000.png and every rerun
    read the previous outputs as inputs. Refused now, and the other way round too; nothing is written."""
    folder = _images(tmp_path / "in", ["000.png", "001.png"])
    _images(folder / "masks", ["000.png"], seed=3)
    mask = (folder / "masks" / "000.png").read_bytes()
    result = intra("predict", "--run", cli_run, folder, "--out", folder, check=False)
    user_error(result, "lies inside the input folder", str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "001.png", "masks"]
    assert (folder / "masks" / "000.png").read_bytes() == mask
    detector = Detector.load(cli_run, device="cpu")
    with pytest.raises(IntraError, match="lies inside the input folder"):
        Predictions(detector, [folder], folder / "predictions")
    with pytest.raises(IntraError, match="lies inside --out"):
        Predictions(detector, [folder / "masks"], folder)
    assert not (folder / "predictions").exists() and not (folder / "predict.json").exists()


def test_a_second_process_on_one_out_is_refused_and_orphans_are_cleaned(cli_run, mvtec_root, tmp_path):
    """Issue 13, cases 6 and 11: two processes on one --out wrote every record twice; a kill -9 left
    hidden .tmp files for ever."""
    out = tmp_path / "out"
    spot = mvtec_root / "test" / "spot"
    with PredictFolder.open(out, {"held": True}, []):
        result = intra("predict", "--run", cli_run, spot, "--out", out, check=False)
        user_error(result, str(out), "in use by another intra predict", f"pid {os.getpid()}")
        with pytest.raises(IntraError, match=f"pid {os.getpid()}"):
            PredictFolder.open(out, {"held": True}, [])
    (out / "predict.json").unlink()
    (out / "overlays").mkdir()
    orphans = [out / ".predictions.jsonl.k1ll.tmp", out / "overlays" / ".000_png.png.x9z.tmp"]
    # Another program's write in flight below --out (a training run saved there) is not intra predict's.
    foreign = out / "a_run" / ".model.safetensors.w0rk.tmp"
    foreign.parent.mkdir()
    for orphan in [*orphans, foreign]:
        orphan.write_bytes(b"half a file")
    with Predictions(Detector.load(cli_run, device="cpu"), [spot], out) as job:
        assert len(list(job)) == 2
    assert not any(o.exists() for o in orphans) and list(out.rglob("*.tmp")) == [foreign]


def test_an_unreadable_image_is_skipped_with_a_record_and_the_batch_goes_on(cli_run, tmp_path):
    """Issue 13, case 12: one bad file aborted the job and its batch went unrecorded, a rerun stopped at the
    same file, and a file name that is not UTF-8 crashed predict with --out."""
    folder = _images(tmp_path / "in", ["a.png", "c.png", "d.png"])
    (folder / "b.png").write_bytes(b"not an image")
    odd = os.path.join(os.fsencode(folder), b"e-\xff.png")  # not valid UTF-8
    with open(odd, "wb") as file:
        file.write((folder / "a.png").read_bytes())
    out = tmp_path / "out"
    result = intra("predict", "--run", cli_run, folder, "--out", out, "--batch-size", "8", check=False)
    user_error(result, "1 of 5 images could not be read", "b.png")
    records = [json.loads(line) for line in (out / RECORDS).read_text(encoding="utf-8").splitlines()]
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.png", "c.png", "d.png", os.fsdecode(b"e-\xff.png")]
    assert "error" in records[1] and "b.png" in records[1]["error"] and "pred_score" not in records[1]
    assert all("pred_score" in r for i, r in enumerate(records) if i != 1)
    assert records[4]["anomaly_map"] == "anomaly_maps/e-__png.png" and (out / records[4]["anomaly_map"]).is_file()
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [r["path"] for r in records]

    with Predictions(Detector.load(cli_run, device="cpu"), [folder], out, run_dir=cli_run) as job:
        again = list(job)  # the rerun retries the bad file only, and does not stop there
    assert [Path(r["path"]).name for r in again] == ["b.png"] and job.skipped == 4 and job.failed == 1
    final = [json.loads(line) for line in (out / RECORDS).read_text(encoding="utf-8").splitlines()]
    assert len(final) == 5 and sum("error" in r for r in final) == 1

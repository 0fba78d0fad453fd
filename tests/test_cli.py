"""The real `intra` command in a subprocess: train -> evaluate -> predict, and user mistakes."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from intra.evaluation.outputs import share_text
from intra.pictures import MARK_COLOUR

from conftest import TINY, intra, user_error


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mvtec_root):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = intra("train", "--data", mvtec_root, "--out", run, *TINY, "--set", "score.mean_filter=5")
    assert "trained 2 epochs" in result.stdout
    return run


def test_train_evaluate_predict(trained_run, mvtec_root, tmp_path):
    out = tmp_path / "eval"
    result = intra("evaluate", "--run", trained_run, "--data", mvtec_root, "--out", out, "--threads", "1")
    assert "image AUROC" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"image_auroc", "pixel_auroc", "aupro", "per_kind"} <= set(metrics)
    assert set(metrics["per_kind"]) == {"scratch", "spot", "smudge"}
    assert all(0 <= metrics[k] <= 1 for k in ("image_auroc", "pixel_auroc", "aupro"))
    stored = metrics["thresholds"]["image"]
    flags = f"flags {share_text(stored['tpr_at_stored'])} of the defective images"  # what `intra predict` will flag
    assert f"at the stored image threshold {stored['stored_threshold']:.4g}: {flags}" in result.stdout
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,kind,label,pred_score" and len(rows) == 1 + 10
    assert len(list((out / "heatmaps").rglob("*.png"))) == 10
    # A flagged image's heatmap rings where its score was found (cyan), and only a flagged image's.
    threshold = metrics["thresholds"]["image"]["stored_threshold"]
    ringed = []
    for row in rows[1:]:
        path, kind, _, score = row.split(",")
        picture = np.asarray(Image.open(out / "heatmaps" / kind / f"{Path(path).stem}.png").convert("RGB"))
        side = picture.shape[0]
        ringed.append((picture[:, side : 2 * side] == MARK_COLOUR).all(axis=2).any())
        assert ringed[-1] == (float(score) >= threshold), path
    assert any(ringed)

    predicted = intra(
        "predict", "--run", trained_run, mvtec_root / "test" / "spot", "--out", tmp_path / "pred", "--threads", "1"
    )
    records = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(records) == 2 and all(r["pred_score"] >= 0 for r in records)
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 2


def test_every_command_documents_every_option():
    import argparse

    from intra.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subparsers.choices.items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help and action.help.strip(), (
                f"intra {name} {action.option_strings or action.dest} has no help"
            )
    assert "--max-minutes" in intra("train", "--help").stdout


def test_user_mistakes_give_one_line_errors(tmp_path, mvtec_root, trained_run):
    user_error(intra("train", "--data", tmp_path / "nope", "--out", tmp_path / "r", *TINY, check=False), "nope")
    (tmp_path / "empty").mkdir()
    user_error(intra("train", "--data", tmp_path / "empty", "--out", tmp_path / "r", *TINY, check=False), "no images")
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad / "a.jpg")
    (bad / "b.jpg").write_bytes((bad / "a.jpg").read_bytes()[:200])
    (bad / "c.jpg").write_bytes((bad / "a.jpg").read_bytes())  # three images: the minimum for training
    user_error(intra("train", "--data", bad, "--out", tmp_path / "r", *TINY, check=False), "b.jpg")
    small = [*TINY, "--image-size", "8"]
    user_error(intra("train", "--data", mvtec_root, "--out", tmp_path / "r", *small, check=False), "model.image_size")
    user_error(
        intra("train", "--data", mvtec_root, "--out", tmp_path / "r", *TINY, "--lr", "-1", check=False), "train.lr"
    )
    user_error(
        intra("train", "--data", mvtec_root, "--out", tmp_path / "r", *TINY, "--set", "train.bogus=1", check=False),
        "train.bogus",
    )
    user_error(intra("evaluate", "--run", tmp_path / "norun", "--data", mvtec_root, check=False), "norun")
    user_error(intra("predict", "--run", trained_run, tmp_path / "missing.png", check=False), "missing.png")


def test_checkpoint_of_another_version_or_config_is_refused(tmp_path, trained_run, mvtec_root):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    meta = json.loads((other / "model.json").read_text())
    meta["format_version"] = 99
    (other / "model.json").write_text(json.dumps(meta))
    user_error(intra("predict", "--run", other, mvtec_root / "test" / "spot", check=False), "format version 99")
    meta["format_version"] = 1
    meta["config"]["model"]["dim"] = 48
    (other / "model.json").write_text(json.dumps(meta))
    user_error(intra("predict", "--run", other, mvtec_root / "test" / "spot", check=False), "does not fit")


def test_version_comes_from_the_package_metadata():
    """Issue 13, case 14: `intra --version` exists and says the installed version, as intra.__version__ does."""
    from importlib.metadata import version

    from intra import __version__

    assert __version__ == version("intra")
    assert intra("--version").stdout.strip() == f"intra {version('intra')}"


def test_help_version_and_argument_mistakes_answer_before_torch_is_imported():
    """`intra --help`, `--version` and mistakes in the arguments do not wait for torch (seconds on a small
    machine); a command that runs the network imports it, and the package's public names still resolve."""
    import subprocess
    import sys

    probe = (
        "import sys, intra.cli as cli\n"
        "for argv in (['--version'], ['train', '--help'], ['train', '--data', 'd', '--out', 'o', '--epochs', '0'],\n"
        "             ['predict', '--run', 'r', 'x', '--batch-size', '0'], ['evaluate', '--run', 'r', '--data', 'd', '--threads', '-1']):\n"
        "    try:\n"
        "        code = cli.main(argv)\n"
        "    except SystemExit as stop:\n"
        "        code = stop.code\n"
        "    print(argv[0], code, 'torch' in sys.modules, file=sys.stderr)\n"
        "import intra\n"
        "print(intra.Detector.__module__, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.split(" ")[0] in ("--version", "train", "predict", "evaluate")
    ]
    assert lines == ["--version 0 False", "train 0 False", "train 2 False", "predict 2 False", "evaluate 2 False"]
    assert result.stdout.splitlines()[-1] == "intra.inference.detector True"

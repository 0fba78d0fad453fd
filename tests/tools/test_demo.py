"""`intra demo`, the README's one command for a new user: the whole pipeline on generated data, through the real CLI."""

import json

import pytest

from conftest import intra


def test_demo_runs_the_pipeline_and_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    result = intra("demo", "--out", out, "--minutes", "0.05", "--threads", "1")
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert {"image_auroc", "pixel_auroc", "aupro"} <= set(metrics)
    assert f"metrics in {out / 'evaluation' / 'metrics.json'}" in result.stdout
    assert (out / "run" / "model.safetensors").is_file() and (out / "evaluation" / "scores.csv").is_file()
    assert any((out / "evaluation" / "heatmaps").iterdir())
    stats = json.loads((out / "run" / "model.json").read_text())["stats"]
    assert stats["val_images"] == 10 and stats["train_images"] == 70  # enough held out for the thresholds
    assert "validation image(s)" not in result.stderr  # no warning a newcomer would read as a fault


def test_demo_refuses_a_budget_that_is_not_positive(tmp_path):
    result = intra("demo", "--out", tmp_path / "demo", "--minutes", "0", check=False)
    assert result.returncode != 0 and "--minutes must be positive" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_folder_that_holds_other_files_and_leaves_them_alone(tmp_path):
    out = tmp_path / "product"
    (out / "run").mkdir(parents=True)
    (out / "run" / "model.safetensors").write_bytes(b"someone's weights")
    result = intra("demo", "--out", out, "--minutes", "0.05", check=False)
    assert result.returncode == 2 and f"--out {out} already holds files" in result.stderr
    assert (out / "run" / "model.safetensors").read_bytes() == b"someone's weights"
    assert sorted(p.name for p in out.iterdir()) == ["run"]


def test_a_demo_folder_may_be_claimed_again_but_not_a_file(tmp_path):
    from intra.errors import IntraError
    from intra.tools.demo import DEMO_MARK, claim_demo_folder

    out = claim_demo_folder(tmp_path / "demo")
    (out / "run").mkdir()
    assert claim_demo_folder(out) == out and (out / DEMO_MARK).is_file()  # a rerun of the demo
    (tmp_path / "file").write_text("x")
    with pytest.raises(IntraError, match="is a file"):
        claim_demo_folder(tmp_path / "file")

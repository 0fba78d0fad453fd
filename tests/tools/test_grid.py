"""`intra benchmark` in a subprocess on a tiny generated grid (tables, shared runs, resume); the committed grids still read."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from intra.config import read_config_file
from intra.errors import IntraError
from intra.tools.grid import read_grid

from conftest import intra, user_error

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

TINY = {
    "model.image_size": 64,
    "model.patch_size": 4,
    "model.window": 3,
    "model.dim": 32,
    "model.depth": 3,
    "model.heads": 2,
    "train.max_epochs": 2,
    "train.windows_per_image": 20,
    "train.batch_size": 64,
    "train.device": "cpu",
    "score.mean_filter": 5,
    "score.gaussian_sigma": 1.0,
}


def write_grid(path, data):
    grid = {
        "seeds": [5],  # overridden by the dataset's seeds, which "multi" overrides in turn
        "threads": 1,
        "preset": "paper",
        "set": TINY,
        "datasets": {"syn": {"path": str(data), "seeds": [0]}},
        "configs": {
            "base": {},
            "three-scales": {"score": {"score.scales": [1.0, 0.5, 0.25]}},
            "multi": {
                "set": {"model.head": "covered", "train.cover_spacing": 2, "score.cover_spacing": 2},
                "seeds": [0, 1],
            },
        },
    }
    path.write_text(json.dumps(grid))
    return path


def test_benchmark_writes_tables_shares_runs_and_resumes(tmp_path, mvtec_root):
    grid, out = write_grid(tmp_path / "grid.json", mvtec_root), tmp_path / "out"
    sliced = intra("benchmark", "--grid", grid, "--out", out, "--limit", "1")
    assert sliced.stdout.count(": done: ") == 1 and len(json.loads((out / "results.json").read_text())["rows"]) == 1
    first = intra("benchmark", "--grid", grid, "--out", out, "--jobs", "2")
    assert "results written" in first.stdout
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["config"], r["seed"]) for r in rows] == [("base", 0), ("three-scales", 0), ("multi", 0), ("multi", 1)]
    assert all(0 <= r["image_auroc"] <= 1 and r["ms_per_image"] > 0 and r["train_seconds"] >= 0 for r in rows)
    assert rows[0]["run"] == rows[1]["run"]  # a scoring-only variant reuses the trained run
    assert len([p for p in (out / "runs" / "syn").iterdir() if p.is_dir()]) == 3
    table = list(csv.DictReader((out / "results.csv").open()))
    assert len(table) == 4 and {"auroc_scratch", "auroc_spot", "auroc_smudge", "ms_per_image"} <= set(table[0])
    markdown = (out / "results.md").read_text()
    assert "| syn | multi | 2 |" in markdown and "intra benchmark --grid" in markdown

    weights = next((out / "runs" / "syn").glob("*/model.safetensors"))
    stamp = weights.stat().st_mtime_ns
    (out / "cells" / "syn__three-scales__s0.json").unlink()
    again = intra("benchmark", "--grid", grid, "--out", out)
    statuses = [line.split(": ")[1] for line in again.stdout.splitlines() if line.startswith("[")]
    assert statuses == ["cached", "done", "cached", "cached"]
    assert weights.stat().st_mtime_ns == stamp  # nothing retrained


def test_benchmark_grid_mistakes_are_one_line_errors(tmp_path, mvtec_root):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"datasets": {"syn": str(mvtec_root)}, "configs": {"x": {"set": {"model.bogus": 1}}}}))
    user_error(intra("benchmark", "--grid", grid, "--out", tmp_path / "o", check=False), "model.bogus", "'x'")
    grid.write_text(json.dumps({"datasets": {"syn": {"path": str(mvtec_root), "seed": [1]}}, "configs": {"x": {}}}))
    user_error(intra("benchmark", "--grid", grid, "--out", tmp_path / "o", check=False), "'syn'", "seed")
    grid.write_text(json.dumps({"datasets": {"syn": str(tmp_path / "nope")}, "configs": {"x": {}}}))
    user_error(intra("benchmark", "--grid", grid, "--out", tmp_path / "o", check=False), "nope")
    # A score row is applied after training: its mistakes are refused before any cell trains.
    for score, named in (({"train.lr": 0.1}, "train.lr"), ({"score.bogus": 1}, "score.bogus")):
        grid.write_text(json.dumps({"datasets": {"syn": str(mvtec_root)}, "configs": {"x": {"score": score}}}))
        failed = intra("benchmark", "--grid", grid, "--out", tmp_path / "o", check=False)
        user_error(failed, named, "'x'")
        assert not (tmp_path / "o" / "runs").exists()
    # A dot in a TOML table name nests a table: refused instead of silently scoring the base config.
    toml = tmp_path / "grid.toml"
    toml.write_text(
        f'[datasets]\nsyn = "{mvtec_root}"\n[configs.scales-1-.5]\nscore = {{ "score.scales" = [1.0, 0.5] }}\n'
    )
    user_error(intra("benchmark", "--grid", toml, "--out", tmp_path / "o", check=False), "'scales-1-'", "quote")
    # Values of the wrong type are refused as the file is read, naming the key, not after a cell trains.
    for extra, named in [
        ({"seeds": ["x"]}, "the grid: seeds must be a list of seeds"),
        ({"seeds": 0}, "seeds must be a list"),
        ({"eval_size": "256"}, "eval_size must be a whole number of pixels"),
        ({"threads": -1}, "threads must be"),
        ({"configs": {"x": {"preset": "fast"}}}, "configuration 'x': preset must be one of cpu, paper"),
        ({"datasets": {"syn": {"path": 3}}}, "dataset 'syn': path must be a folder path"),
    ]:
        grid.write_text(json.dumps({"datasets": {"syn": str(mvtec_root)}, "configs": {"x": {}}, **extra}))
        with pytest.raises(IntraError, match=named):
            read_grid(grid)


@pytest.mark.parametrize("grid", sorted(BENCHMARKS.glob("*.toml")), ids=lambda p: p.name)
def test_committed_grids_name_options_that_exist(tmp_path, grid):
    """Every grid in benchmarks/ still reads: its `set` and `score` keys are options of the current config."""
    local = tmp_path / grid.name
    shutil.copy(grid, local)
    spec = read_config_file(local)["datasets"]
    for entry in spec.values():  # read_grid wants the data folders; the cells are not computed
        (tmp_path / (entry["path"] if isinstance(entry, dict) else entry)).mkdir(parents=True, exist_ok=True)
    assert read_grid(local)  # which checks the set and score rows against the config

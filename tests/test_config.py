"""Configuration: presets, overrides and validation of impossible values."""

import sys

import pytest

from intra.cli import main
from intra.config import apply_overrides, preset, read_config_file, reading_mismatch, validate
from intra.errors import IntraError

from conftest import tiny_config


def test_training_options_are_checked():
    with pytest.raises(IntraError, match="train.schedule"):
        apply_overrides(tiny_config(), {"train.schedule": "step"})
    with pytest.raises(IntraError, match="train.ema"):
        apply_overrides(tiny_config(), {"train.ema": 1.5})
    with pytest.raises(IntraError, match="train.cover_spacing"):
        apply_overrides(tiny_config(), {"train.cover_spacing": 2})  # needs the covered-token head
    with pytest.raises(IntraError, match="score.cover_spacing"):
        apply_overrides(tiny_config(head="covered"), {"score.cover_spacing": 1})
    # A lattice wider than the window leaves windows with nothing covered (nothing to learn or read).
    with pytest.raises(IntraError, match=r"train.cover_spacing must be 0 or 2 to model.window \(3\)"):
        apply_overrides(tiny_config(head="covered"), {"train.cover_spacing": 4})
    apply_overrides(tiny_config(head="covered"), {"train.cover_spacing": 3})
    with pytest.raises(IntraError, match="train.window_placement"):
        apply_overrides(tiny_config(), {"train.window_placement": "centre"})
    # A window turned by any angle moves its drawn patch off the grid: patch placement cannot keep it covered.
    with pytest.raises(IntraError, match="window_placement = patch cannot follow train.rotation = any"):
        apply_overrides(tiny_config(), {"train.window_placement": "patch", "train.rotation": "any"})
    # The cpu preset places by patch: asking it for any rotation says which key to change.
    with pytest.raises(IntraError, match="--set train.window_placement=corner"):
        apply_overrides(preset("cpu"), {"train.rotation": "any"})
    assert apply_overrides(preset("cpu"), {"train.rotation": "any", "train.window_placement": "corner"})


def test_reading_with_another_lattice_than_was_learned_is_named():
    cfg = apply_overrides(tiny_config(head="covered"), {"train.cover_spacing": 2, "score.cover_spacing": 2})
    assert reading_mismatch(cfg) == ""
    cfg.score.cover_spacing = 3
    assert "score.cover_spacing 3" in reading_mismatch(cfg) and "train.cover_spacing 2" in reading_mismatch(cfg)
    cfg.score.cover_spacing = 0  # one patch per pass, from a network that learned a lattice
    assert "score.cover_spacing 0" in reading_mismatch(cfg)
    cfg.train.cover_spacing = 0  # trained on one covered patch per window: any reading is its own choice
    assert reading_mismatch(cfg) == ""


def test_every_number_is_finite_and_in_range_at_parse_time():
    """Issue 13, case 5: NaN and infinity (and filters wider than any image) are refused before training."""
    for key, value in [
        ("score.gaussian_sigma", "nan"),
        ("train.lr", "nan"),
        ("train.lr", "inf"),
        ("train.max_minutes", "nan"),
        ("score.memory_mb", "inf"),
        ("model.mlp_ratio", "-inf"),
        ("score.scales", "0.5,nan"),
    ]:
        with pytest.raises(IntraError, match=key.replace(".", r"\.")):
            apply_overrides(tiny_config(), {key: value})
    with pytest.raises(IntraError, match="score.mean_filter 100000 is too large"):
        apply_overrides(tiny_config(), {"score.mean_filter": 100000})
    with pytest.raises(IntraError, match="score.gaussian_sigma 1000.0 is too large"):
        apply_overrides(tiny_config(), {"score.gaussian_sigma": 1000})
    with pytest.raises(IntraError, match="train.seed"):
        apply_overrides(tiny_config(), {"train.seed": -1})
    cfg = tiny_config()
    cfg.train.lr = float("nan")  # a library user's Config is checked the same way
    with pytest.raises(IntraError, match="train.lr must be a finite number"):
        validate(cfg)
    cfg.train.lr, cfg.model.dim = 1e-3, "32"
    with pytest.raises(IntraError, match="model.dim must be of type int"):
        validate(cfg)


def test_integer_keys_refuse_fractions_and_lists_may_be_written_as_text():
    """Issue 13, case 13: `dim: 16.7` is not silently 16; score.scales=[0.5,0.25] is read as a list."""
    for value in (16.7, "16.7", True):
        with pytest.raises(IntraError, match="model.dim.*as an integer"):
            apply_overrides(tiny_config(), {"model.dim": value})
    assert apply_overrides(tiny_config(), {"model.dim": 32.0}).model.dim == 32  # a whole float is an integer
    for text in ("[0.5, 0.25]", "(0.5,0.25)", "0.5,0.25", [0.5, 0.25]):
        assert apply_overrides(tiny_config(), {"score.scales": text}).score.scales == (0.5, 0.25)
    with pytest.raises(IntraError, match="write it as 0.5,0.25"):
        apply_overrides(tiny_config(), {"score.scales": "half,quarter"})
    with pytest.raises(IntraError, match="score.normalize"):
        apply_overrides(tiny_config(), {"score.normalize": 2})


def _main(capsys, *argv):
    """The CLI's main() in this process (these refusals never reach training): exit code and error lines."""
    code = main([str(a) for a in argv])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, errors


def test_config_files_are_merged_with_the_flags_and_every_error_is_one_line(tmp_path, capsys):
    """Issue 13, case 13: a file valid only with the flags is accepted; list, tag and type errors: one line."""
    from intra.cli import build_parser, resolve_train_config

    config = tmp_path / "big patches.yaml"
    config.write_text("model:\n  patch_size: 32\n")  # 128 px / 32 = 4 patches < window 7: valid only with 256 px
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--config", str(config)])
    with pytest.raises(IntraError, match="model.image_size 128 holds 4 patches"):
        resolve_train_config(args)
    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--config", str(config), "--image-size", "256"]
    )
    assert resolve_train_config(args).model.patch_size == 32
    # The cpu preset gives textures 192 px; an --image-size asked for holds for textures too.
    assert resolve_train_config(args).data.texture_image_size == 0
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert resolve_train_config(args).data.texture_image_size == 192
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--set", "model.image_size=160"])
    assert resolve_train_config(args).data.texture_image_size == 0  # however the size is set
    args.set.append("data.texture_image_size=256")
    assert resolve_train_config(args).data.texture_image_size == 256  # unless textures get their own

    out = tmp_path / "run"
    for name, text, needle in [
        ("float.yaml", "model:\n  dim: 16.7\n", "model.dim"),
        ("list.yaml", "- model\n- train\n", "not hold a list"),
        ("tag.yaml", '!!python/object/apply:os.system ["echo hi"]\n', "not a valid yaml file"),
        ("scalar.json", "3", "not hold a number"),
        ("latin1.toml", "[model]\n# caf\xe9\n", "cannot read config file"),
    ]:
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        code, errors = _main(capsys, "train", "--data", tmp_path, "--out", out, "--config", path)
        assert code == 2 and len(errors) == 1 and errors[0].startswith("intra: error: "), errors
        assert name in errors[0] and needle in errors[0], errors[0]
    assert not out.exists()


def test_toml_configs_fall_back_to_tomli_without_tomllib(tmp_path, monkeypatch):
    """Issue 10: Python 3.10 has no tomllib; the `tomli` dependency (python_version < '3.11') reads the file."""
    import types

    tomllib = pytest.importorskip("tomllib")
    calls = []
    fake = types.ModuleType("tomli")
    fake.loads = lambda text: calls.append(text) or tomllib.loads(text)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib now fails, as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", fake)
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.5\n")
    assert read_config_file(path) == {"train": {"lr": 0.5}} and calls

"""Run folders from elsewhere: pickles are refused unopened, damaged or mismatched files are named."""

import json
import os
import pickle
import shutil

from conftest import intra, user_error


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_a_run_folder_is_refused_and_never_executed(cli_run, mvtec_root, tmp_path):
    images = mvtec_root / "test" / "spot"
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    marker = tmp_path / "pwned"
    (run / "model.safetensors").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    user_error(intra("predict", "--run", run, images, check=False), "model.safetensors", "pickle")
    assert not marker.exists()

    (run / "model.safetensors").unlink()
    (run / "model.pt").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    user_error(intra("predict", "--run", run, images, check=False), "model.pt", "never unpickles")
    assert not marker.exists()


def test_damaged_or_mismatched_checkpoints_are_refused(cli_run, mvtec_root, tmp_path):
    images = mvtec_root / "test" / "spot"
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    weights = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    user_error(intra("predict", "--run", run, images, check=False), "model.safetensors", "corrupted")

    flipped = bytearray(weights)
    flipped[-100] ^= 0xFF  # a damaged weight: still valid safetensors, but not what model.json recorded
    (run / "model.safetensors").write_bytes(bytes(flipped))
    user_error(intra("predict", "--run", run, images, check=False), "does not match model.json")

    (run / "model.safetensors").write_bytes(weights)
    (run / "model.json").write_text((run / "model.json").read_text()[:50])
    user_error(intra("predict", "--run", run, images, check=False), "model.json", "corrupted")
    meta = json.loads((cli_run / "model.json").read_text())
    meta["format_version"] = 2
    (run / "model.json").write_text(json.dumps(meta))
    user_error(intra("evaluate", "--run", run, "--data", mvtec_root, check=False), "format version 2")


def test_a_full_disk_leaves_the_previous_file_intact(tmp_path):
    import errno

    import pytest

    from intra.errors import IntraError
    from intra.files import atomic_write

    target = tmp_path / "model.json"
    target.write_text("the previous, complete file")

    def fill_the_disk(tmp):
        tmp.write_text("half of a new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(IntraError, match="cannot write .*model.json: No space left on device"):
        atomic_write(target, fill_the_disk)
    assert target.read_text() == "the previous, complete file" and os.listdir(tmp_path) == ["model.json"]


def test_a_written_file_is_flushed_to_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    from intra.files import atomic_write

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b))
    atomic_write(tmp_path / "model.json", lambda tmp: tmp.write_text("{}"))
    assert [kind for kind, _ in events] == ["fsync", "replace"] and events[0][1] == events[1][1]
    assert (tmp_path / "model.json").read_text() == "{}"


def test_train_never_overwrites_a_run_implicitly(cli_run, mvtec_root, tmp_path):
    """Issue 13, case 3: --out on an existing run is refused naming --resume and --overwrite; with
    --overwrite the old run stays whole until the new model is complete (a killed or failed
    replacement leaves it as it was), then it is replaced."""
    import signal
    import subprocess
    import sys
    import time

    import pytest

    from intra.errors import IntraError
    from intra.training.fit import fit

    from conftest import TINY, tiny_config

    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    user_error(intra("train", "--data", mvtec_root, "--out", run, *TINY, check=False), str(run), "--overwrite")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(IntraError, match="holds no run"):  # never deleted, even with overwrite
        fit(tiny_config(), mvtec_root, tmp_path / "mine", overwrite=True)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "intra.cli", "train", "--data", str(mvtec_root), "--out", str(run), *TINY]
    process = subprocess.Popen(
        [*cmd, "--overwrite", "--epochs", "1000", "--patience", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 120
    while not any(tmp_path.glob(".run.new-*/train_log.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # killed midway: the new run was being written beside the old one
    process.wait()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    cfg = tiny_config()
    cfg.model.image_size, cfg.train.lr = 64, 1e30
    with pytest.raises(IntraError, match="diverged"):
        fit(cfg, mvtec_root, run, overwrite=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # a failed one too

    cfg.train.lr, cfg.train.seed, cfg.train.max_epochs = 1e-3, 7, 1
    fit(cfg, mvtec_root, run, overwrite=True)
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["seed"] == 7 and json.loads((run / "model.json").read_text())["config"] == saved
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run"]  # the killed one's folder is cleaned too


def test_an_edited_config_in_model_json_is_refused(cli_run, mvtec_root, tmp_path):
    """Issue 13, case 10: model.json's config is covered by config_sha256: an edited image_size (a
    traceback before) or heads (silently other scores before) gives one line; evaluate writes nothing."""
    import pytest

    from intra.errors import IntraError
    from intra.inference.detector import Detector

    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    meta = json.loads((cli_run / "model.json").read_text())
    for key, value in (("heads", 4), ("image_size", 128)):
        edited = json.loads(json.dumps(meta))
        edited["config"]["model"][key] = value
        (run / "model.json").write_text(json.dumps(edited))
        with pytest.raises(IntraError, match="config was edited"):
            Detector.load(run, device="cpu")
    user_error(intra("predict", "--run", run, mvtec_root / "test" / "spot", check=False), "model.json", "edited")
    out = tmp_path / "evaluation"
    user_error(intra("evaluate", "--run", run, "--data", mvtec_root, "--out", out, check=False), "edited")
    assert not out.exists()


def test_a_failed_calibration_keeps_the_resumable_training_state(mvtec_root, tmp_path, monkeypatch):
    """Issue 13, case 5: training_state.safetensors is deleted only once the model files are written,
    so a run whose calibration fails after the last epoch is resumed, not retrained."""
    import pytest

    import intra.training.fit as fit_module
    from intra.errors import IntraError

    from conftest import tiny_config

    cfg = tiny_config()
    cfg.model.image_size, cfg.train.max_epochs = 64, 1

    def broken(*args, **kwargs):
        raise IntraError("calibration failed")

    monkeypatch.setattr(fit_module, "calibrate", broken)
    with pytest.raises(IntraError, match="calibration failed"):
        fit_module.fit(cfg, mvtec_root, tmp_path / "run")
    assert (tmp_path / "run" / "training_state.safetensors").is_file() and not (
        tmp_path / "run" / "model.json"
    ).exists()
    monkeypatch.undo()
    fit_module.fit(cfg, mvtec_root, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "model.json").is_file() and not (
        tmp_path / "run" / "training_state.safetensors"
    ).exists()


def _private_mount_prefix():
    """A command prefix giving a shell its own mount namespace (to mount a small tmpfs), or None."""
    import subprocess

    if not shutil.which("unshare") or not shutil.which("mount"):
        return None
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def test_a_full_disk_during_predict_is_reported_once_and_tears_nothing(cli_run, mvtec_root, tmp_path):
    """Issue 13, case 11: on a real full file system (a small tmpfs), predict ends with one line naming
    the file and the cause, leaves no .tmp file and no torn last record, and resumes once there is room.
    First the images' files fill it; then (their folders elsewhere) the records file itself."""
    import subprocess
    import sys

    import pytest

    prefix = _private_mount_prefix()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs unshare and root or user namespaces)")
    inputs = tmp_path / "in"
    inputs.mkdir()
    sources = sorted((mvtec_root / "test").rglob("*.png"))
    for i in range(30):
        shutil.copy(sources[i % len(sources)], inputs / f"{i:03d}.png")
    disk, rooms = tmp_path / "disk", tmp_path / "rooms"
    disk.mkdir()
    predict = (
        f"{sys.executable} -m intra.cli predict --run '{cli_run}' '{inputs}' --out '{disk}' --threads 1 > /dev/null"
    )
    script = f"""
        set -u
        cd '{tmp_path}'
        mount -t tmpfs -o size=64k tmpfs '{disk}' || exit 90
        {predict} 2> err1; echo $? > rc1; cp -a '{disk}/.' copy1/
        umount '{disk}' && mount -t tmpfs -o size=32k tmpfs '{disk}' || exit 91
        for d in anomaly_maps overlays masks; do mkdir -p '{rooms}'/$d; ln -s '{rooms}'/$d '{disk}'/$d; done
        head -c 20480 /dev/zero > '{disk}/fill'  # one 4 kB page left for the records after the manifest and lock
        {predict} 2> err2; echo $? > rc2; cp -a '{disk}/.' copy2/
        rm '{disk}/fill'; {predict} 2> err3; echo $? > rc3; cp -a '{disk}/.' copy3/
    """
    (tmp_path / "copy1").mkdir(), (tmp_path / "copy2").mkdir(), (tmp_path / "copy3").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr

    def check(n, needle):
        result = subprocess.CompletedProcess(
            [], int((tmp_path / f"rc{n}").read_text()), "", (tmp_path / f"err{n}").read_text()
        )
        user_error(result, "cannot write", needle, "No space left on device")
        text = (
            (tmp_path / f"copy{n}" / "predictions.jsonl").read_text()
            if (tmp_path / f"copy{n}" / "predictions.jsonl").exists()
            else ""
        )
        assert text == "" or text.endswith("\n")
        assert all(json.loads(line)["pred_score"] >= 0 for line in text.splitlines())  # no torn line
        assert not list((tmp_path / f"copy{n}").rglob("*.tmp"))
        return len(text.splitlines())

    check(1, str(disk))
    assert 0 < check(2, "predictions.jsonl") < 30
    assert int((tmp_path / "rc3").read_text()) == 0, (tmp_path / "err3").read_text()
    assert len((tmp_path / "copy3" / "predictions.jsonl").read_text().splitlines()) == 30

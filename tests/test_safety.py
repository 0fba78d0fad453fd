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

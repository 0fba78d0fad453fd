"""`intra train --resume`: a training killed mid-way ends with the same weights as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TINY, intra, user_error

# Long enough epochs (about a second each) for the test to kill the run between two of them.
RESUMABLE = [*TINY, "--epochs", "4", "--windows-per-image", "150", "--patience", "50", "--seed", "3"]


def saved_epoch(run) -> int:
    try:
        with safe_open(str(run / "training_state.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["state"])["epoch"]
    except Exception:  # not written yet
        return 0


def test_killed_training_resumes_to_bit_identical_weights(tmp_path, mvtec_root):
    reference = tmp_path / "reference"
    intra("train", "--data", mvtec_root, "--out", reference, *RESUMABLE)

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "intra.cli", "train", "--data", str(mvtec_root), "--out", str(killed), *RESUMABLE]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while saved_epoch(killed) < 1 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epoch = saved_epoch(killed)
    assert 1 <= epoch < 4 and not (killed / "model.safetensors").exists(), "the run was not killed mid-way"

    result = intra("train", "--resume", killed, "--threads", "1")
    assert "trained 4 epochs" in result.stdout
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "resumed weights differ"
    log = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    reference_log = [json.loads(line) for line in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert [r["val_loss"] for r in log] == [r["val_loss"] for r in reference_log]
    assert not (killed / "training_state.safetensors").exists()  # training finished: nothing left to resume

    # A finished run has nothing to resume, and a resumed run keeps its own config.
    user_error(intra("train", "--resume", killed, check=False), "training_state.safetensors")
    user_error(intra("train", "--resume", killed, "--lr", "0.1", check=False), "--lr")
    user_error(intra("train", "--resume", killed, "--preset", "paper", check=False), "drop --preset")


def test_a_resume_that_cannot_continue_as_it_was_is_refused(tmp_path, mvtec_root):
    import pytest
    import torch

    from intra.errors import IntraError
    from intra.training import state
    from intra.training.fit import fit, image_fingerprint

    from conftest import tiny_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_config()
    # Other images in the folder now: the validation split would change under the resumed training.
    state.save(run, {"x": torch.zeros(1)}, {"images": "3 images, sha256 0123456789abcdef", "processes": 1})
    with pytest.raises(IntraError, match=r"other images \(3 images.*than .* holds now \(\d+ images"):
        fit(cfg, mvtec_root, run, resume=True)
    # A state saved by rank 0 of a torchrun run holds only its own sampling streams.
    state.save(run, {"x": torch.zeros(1)}, {"processes": 2})
    with pytest.raises(IntraError, match="trained by 2 processes"):
        fit(cfg, mvtec_root, run, resume=True)
    assert image_fingerprint(mvtec_root, [mvtec_root / "a.png"], [(4, 3)]).startswith("1 images, sha256 ")


def test_an_interrupted_overwrite_is_resumed_and_then_replaces_the_old_run(tmp_path, mvtec_root):
    # --overwrite trains the new run beside the old one, swapped in once complete. Ctrl-C deleted that
    # folder with every epoch in it, and --resume RUN could not see it.
    reference = tmp_path / "reference"
    intra("train", "--data", mvtec_root, "--out", reference, *RESUMABLE)
    run = tmp_path / "run"
    intra("train", "--data", mvtec_root, "--out", run, *TINY)  # the run to be replaced
    old_weights = (run / "model.safetensors").read_bytes()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "intra.cli", "train", "--data", str(mvtec_root), "--out", str(run), "--overwrite"]
    # Ctrl-C as in a terminal, even where the suite itself runs in the background (`cmd &` starts it
    # with SIGINT ignored, and the child would inherit that and train on).
    process = subprocess.Popen(
        [*cmd, *RESUMABLE],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    staged = lambda: [f for f in tmp_path.glob(".run.new-*") if saved_epoch(f) >= 1]  # noqa: E731
    while not staged() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the training ended before the test could interrupt it: lengthen its epochs"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "intra train --resume" in stderr, stderr
    assert len(staged()) == 1 and (run / "model.safetensors").read_bytes() == old_weights  # the old run stands

    result = intra("train", "--resume", run, "--threads", "1")
    assert "trained 4 epochs" in result.stdout
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "resumed weights differ"
    assert not list(tmp_path.glob(".run.*")) and not (run / "training_state.safetensors").exists()


def test_gpu_generator_states_are_restored_in_device_order_and_only_for_gpus_present():
    import torch

    from intra.training.state import cuda_rng_states

    tensors = {f"rng.cuda.{i}": torch.tensor([i]) for i in range(12)} | {"rng.torch": torch.tensor([99])}
    assert [int(t) for t in cuda_rng_states(tensors, 12)] == list(range(12))  # 10 and 11 after 9, not after 1
    assert [int(t) for t in cuda_rng_states(tensors, 2)] == [0, 1]  # resumed on 2 GPUs
    assert cuda_rng_states(tensors, 0) == []  # resumed on a CPU

"""Two gloo processes under torchrun train the weights one process trains on the same windows."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing
from safetensors.torch import load_file

from intra.training.distributed import World

from conftest import TINY, intra


def test_sampling_shards_split_a_global_batch_between_processes():
    base = torch.Generator().manual_seed(0)
    assert World().shard_generators(base, 0, 64, seed=0) == [base]  # one process draws as it always has
    alone = World().shard_generators(base, 4, 64, seed=0)
    second = World(rank=1, size=2).shard_generators(base, 4, 64, seed=0)
    assert len(alone) == 4 and len(second) == 2
    # Process 1 of 2 draws shards 2 and 3: the same streams as one process drawing all four.
    assert [g.initial_seed() for g in second] == [g.initial_seed() for g in alone[2:]]


def agree_on_the_clock(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = World(rank=rank, size=2).max(1.5 + rank, torch.device("cpu"))
    finally:
        torch.distributed.destroy_process_group()


def test_processes_agree_on_the_slowest_clock():
    # The lr schedule and the time budget read World.max of the elapsed seconds: one value everywhere.
    assert World().max(3.0, torch.device("cpu")) == 3.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(agree_on_the_clock, args=(port, results), nprocs=2)
    assert dict(results) == {0: 2.5, 1: 2.5}


def test_two_processes_match_one_process_fed_the_same_windows(tmp_path, mvtec_root):
    # A learning rate at which epoch 2 clearly beats epoch 1: both runs keep the same epoch. No time
    # budget: with one, the lr of a step depends on the wall time it starts at, which no two runs share.
    args = [
        "train",
        "--data",
        mvtec_root,
        *TINY,
        "--lr",
        "2e-3",
        "--set",
        "score.mean_filter=5",
        "--set",
        "train.sample_shards=2",
        "--set",
        "train.max_minutes=0",
        # The scoring choice is discrete: weights equal up to the order of sums may still tip it.
        "--set",
        "score.choose=off",
        # A lattice 2 apart covers 1 to 4 patches of a 3 x 3 window: processes hold different numbers.
        "--set",
        "train.cover_spacing=2",
        "--set",
        "score.cover_spacing=2",
    ]
    intra(*args, "--out", tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "intra.cli"]
    two = subprocess.run(
        [*launch, *map(str, args), "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("trained 2 epochs") == 1  # only rank 0 reports ...
    log = (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]  # ... and writes the log once

    kept = [json.loads((tmp_path / run / "model.json").read_text())["stats"]["best_epoch"] for run in ("one", "two")]
    assert kept[0] == kept[1]
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    weights = [k for k in one if k.startswith("model.")]
    assert weights and set(one) == set(two)
    # Same windows, same initial weights: only the order of floating-point sums differs (the
    # gradient average over processes against one mean over the whole batch).
    diff = max(float((one[k] - two[k]).abs().max()) for k in weights)
    saved = json.loads((tmp_path / "one" / "model.json").read_text())["config"]["model"]
    moved = max(float((one[k] - init).abs().max()) for k, init in initial_weights(weights, saved).items())
    assert diff <= 1e-5 < moved


def initial_weights(names, model_config: dict):
    """The weights a run of this model config (as saved, positions resolved) starts from."""
    from intra.config import ModelConfig
    from intra.core.model import InpaintingTransformer

    from conftest import tiny_config

    cfg = tiny_config()
    torch.manual_seed(cfg.train.seed)
    state = InpaintingTransformer(ModelConfig(**model_config)).state_dict()
    return {name: state[name[len("model.") :]] for name in names if "pixel" not in name}

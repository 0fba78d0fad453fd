"""FLOP counts from the config match PyTorch's own counter; `intra bench` runs end to end."""

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from intra.config import ModelConfig, preset
from intra.core.model import InpaintingTransformer
from intra.core.windows import random_lattice_masks
from intra.runtime import native_bf16
from intra.tools.speed import covered_per_window, train_window_flops, window_flops

from conftest import intra


@pytest.mark.parametrize(
    "overrides, per_window",
    [
        ({}, 1),
        ({}, 3),  # several covered patches: the last block computes those three tokens' outputs
        ({"attention": "msa", "heads": 2}, 2),
        ({"channels": 1, "mlp_ratio": 2.0, "depth": 4}, 1),
        ({"head": "mean"}, 1),  # the mean head reads every token of the last block
    ],
)
def test_flop_formula_matches_the_flop_counter(overrides, per_window):
    cfg = ModelConfig(
        **{**dict(image_size=48, channels=3, patch_size=8, window=3, dim=64, depth=3, heads=4), **overrides}
    )
    model = InpaintingTransformer(cfg)
    model.set_attention_kernel("matmul")  # explicit matmuls: the counter does not see every fused kernel
    patches = torch.rand(5, 9, cfg.patch_dim)
    covered = torch.rand(5, 9).argsort(dim=1) < per_window  # `per_window` covered patches in each window
    with FlopCounterMode(display=False) as forward:
        out = model(patches, covered)
    assert forward.get_total_flops() == 5 * window_flops(cfg, per_window)
    with FlopCounterMode(display=False) as both:
        model(patches, covered).square().mean().backward()
    assert both.get_total_flops() == 5 * train_window_flops(cfg, per_window)
    assert out.shape == (5 if cfg.head == "mean" else 5 * per_window, cfg.patch_dim)


def test_pruning_the_last_block_saves_most_of_it_for_the_cpu_preset():
    cfg = preset("cpu").model
    whole, pruned = window_flops(cfg, cfg.window**2), window_flops(cfg, 9)
    block = (whole - window_flops(dataclasses.replace(cfg, depth=cfg.depth - 1), cfg.window**2)) / whole
    assert 0.5 * block < (whole - pruned) / whole < block  # most of one block's share, never more


def test_covered_per_window_is_the_lattice_average():
    cfg = preset("cpu")
    cfg.train.cover_spacing = 3
    assert covered_per_window(cfg) == pytest.approx(49 / 9)
    masks = random_lattice_masks(9000, cfg.model.window, 3, torch.Generator().manual_seed(0))
    assert float(masks.sum(dim=1).float().mean()) == pytest.approx(49 / 9, rel=0.02)
    cfg.train.cover_spacing = 0
    assert covered_per_window(cfg) == 1


def test_paper_preset_costs_about_1_4_tflop_per_256_px_image():
    cfg = ModelConfig()  # the paper: K 16, L 7, D 512, 13 blocks, RGB
    assert 1.35e12 < 256 * window_flops(cfg) < 1.45e12


def test_bench_command_prints_a_table_then_json(tmp_path):
    result = intra(
        "bench",
        "--preset",
        "cpu",
        "--image-size",
        "64",
        "--threads",
        "1",
        "--repeat",
        "1",
        "--train-batch",
        "8",
        "--naive-windows",
        "4",
    )
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("inference") for line in lines[:-1])
    record = json.loads(lines[-1])
    keys = (
        "windows_per_s",
        "naive_windows_per_s",
        "speedup",
        "ms_per_image",
        "achieved_gflops",
        "matmul_gflops",
        "train_windows_per_s",
        "peak_mem_mb",
    )
    assert all(record[k] > 0 for k in keys)
    # --dtype auto (the default) runs what `intra predict` runs here, and says so; shares of the fp32 ceiling too.
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert record["dtype"] == expected and record["ran_dtype"].startswith(expected)
    assert record["fraction_of_fp32_matmul"] == pytest.approx(record["achieved_gflops"] / record["matmul_fp32_gflops"])
    assert ("of the fp32 ceiling" in result.stdout) == (expected != "fp32")
    assert record["page_faults_per_call"] is None or record["page_faults_per_call"] >= 0
    # The cpu preset reads a lattice 2 apart, up to 16 patches per pass: 2 x 2 windows x 4 phases for an 8 x 8 grid.
    assert record["windows_per_image"] == 16 and record["patches_per_window"] == 16 and record["train_batch"] == 8
    assert record["ms_per_image"] == pytest.approx(1000 * 16 / record["windows_per_s"])
    assert record["speedup"] == pytest.approx(64 / record["naive_windows_per_s"] * 1000 / record["ms_per_image"])
    one = intra(
        "bench",
        "--preset",
        "cpu",
        "--image-size",
        "64",
        "--threads",
        "1",
        "--repeat",
        "1",
        "--train-batch",
        "8",
        "--naive-windows",
        "1000",
        "--set",
        "score.cover_spacing=0",
        "--set",
        "model.activation=gelu",
    )
    one = json.loads(one.stdout.strip().splitlines()[-1])
    assert record["activation"] == "relu" and one["activation"] == "gelu"  # the preset's, then the override
    assert one["windows_per_image"] == 64 and one["patches_per_window"] == 1
    assert one["naive_windows"] == 64  # asked for more than an image holds: the rate counts what ran
    assert one["speedup"] == pytest.approx(one["windows_per_s"] / one["naive_windows_per_s"])
    bad = intra("bench", "--preset", "cpu", "--image-size", "60", "--threads", "1", check=False)
    assert bad.returncode == 2 and "model.image_size" in bad.stderr

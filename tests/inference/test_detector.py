"""The engine: batched equals the pass-by-pass loop for every plan, packed equals plain, bf16 stays close to fp32, chunks fit the budget."""

import os
import subprocess
import sys

import pytest
import torch

from intra.errors import IntraError
from intra.inference.calibration import difference_statistics
from intra.inference.detector import Detector, window_bytes
from intra.inference.engine import padded_size
from intra.inference.packed import available, pack_for_cpu
from intra.runtime import native_bf16
from intra.tools.speed import naive_reconstruct

from conftest import lively_model, tiny_config

# Every plan the engine runs: the paper's one patch per pass, and a lattice of patches per pass.
# MFSA unless named; MSA's q, k and v are plain linear layers, packed as such.
PLANS = [
    {},
    {"head": "covered", "spacing": 2},
    {"head": "covered", "spacing": 2, "base_fill": "smooth"},
    {"head": "covered", "spacing": 2, "attention": "msa"},
]


def detector_for(overrides: dict, **kwargs) -> Detector:
    overrides = dict(overrides)
    spacing = overrides.pop("spacing", 0)
    cfg = tiny_config(**overrides)
    cfg.score.cover_spacing = spacing
    cfg.score.chunk_windows = 50  # chunks straddle the images' boundaries
    kwargs.setdefault("dtype", "fp32")  # exact comparisons; bf16 has its own test
    return Detector(lively_model(cfg), cfg, **kwargs)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"position": "global", "head": "covered"},
        {"attention": "msa"},
        {"head": "covered", "spacing": 2},
        {"base_fill": "smooth"},
        {"head": "covered", "spacing": 2, "base_fill": "smooth"},
    ],
)
def test_batched_and_naive_reconstructions_agree(overrides):
    detector = detector_for(overrides)
    images = torch.rand(3, 3, 32, 32)
    batched = detector.reconstruct(images)
    naive = naive_reconstruct(detector.model, images, detector.plan((8, 8)))
    assert batched.shape == images.shape
    assert float(naive.std()) > 0.02  # the windows really differ: the comparison is not vacuous
    assert float((batched - naive).abs().max()) <= 1e-5


@pytest.mark.skipif(not available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("overrides", PLANS)
def test_packed_and_plain_networks_reconstruct_the_same(overrides):
    packed = detector_for(overrides)
    plain = detector_for(overrides, backend=None)
    plain.backend.network = lambda: plain.model  # the plain module: no packing
    assert packed.backend.describe()["backend"] == "torch-onednn" and plain.backend.describe()["backend"] == "torch"
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(packed.reconstruct(images), plain.reconstruct(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", PLANS)
def test_bf16_anomaly_map_is_within_one_percent_of_fp32(overrides):
    fp32 = detector_for(overrides)
    bf16 = detector_for(overrides, dtype="bf16")
    [(fp32.mean_map, _)] = difference_statistics(fp32, [torch.rand(4, 3, 32, 32)])
    bf16.mean_map = fp32.mean_map
    images = torch.rand(3, 3, 32, 32)
    maps32, _ = fp32.predict(images)
    maps16, _ = bf16.predict(images)
    assert bf16.backend.describe()["dtype"].startswith("bf16")
    assert not torch.equal(maps16, maps32)  # bf16 really ran
    assert float((maps16 - maps32).norm() / maps32.norm()) <= 1e-2


def test_dtype_auto_by_default_is_bf16_where_the_cpu_computes_it():
    cfg = tiny_config()
    detector = Detector(lively_model(cfg), cfg)  # as `intra predict` runs without --dtype
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert detector.backend.describe()["dtype"].startswith(expected)
    assert Detector(detector.model, cfg, dtype="fp32").backend.describe()["dtype"] == "fp32"
    with pytest.raises(IntraError, match="dtype must be one of auto, fp32, bf16, not 'fp16'"):
        Detector(detector.model, cfg, dtype="fp16")


@pytest.mark.parametrize("overrides", [{}, {"head": "covered", "spacing": 2}])
def test_compiled_fixed_size_chunks_reconstruct_the_same(overrides, monkeypatch):
    # Compiled code sees one shape, so the engine pads the last chunk with rows nothing reads; the
    # mean head's padding rows once came back as pixels. torch.compile itself is not what is tested:
    # it is replaced by the function it compiles, which leaves the padded path and skips minutes of compiling.
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    plain = detector_for(overrides)
    compiled = detector_for(overrides, compile=True)
    assert compiled.backend.compiled and compiled.backend.describe()["backend"] == "torch-compiled"
    images = torch.rand(3, 3, 32, 32)  # 3 x 64 passes (or 3 x 16) in chunks of 50: the last one is padded
    torch.testing.assert_close(compiled.reconstruct(images), plain.reconstruct(images), atol=1e-5, rtol=1e-5)


def test_compiled_chunks_are_padded_to_a_few_sizes_not_to_a_whole_chunk(monkeypatch):
    # One image is one short chunk: padded to score.chunk_windows it cost hundreds of passes for a few
    # dozen (`intra bench --compile`, one 128 px image per call: 182 ms against 13.7 eager).
    seen = []

    def recording_compile(fn, **_):
        def run(windows, *rest):
            seen.append(len(windows))
            return fn(windows, *rest)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    detector = detector_for({"head": "covered", "spacing": 2}, compile=True)
    detector.cfg.score.chunk_windows = 500
    for images in (1, 2, 3):  # 36 passes an image
        detector.reconstruct(torch.rand(images, 3, 32, 32))
    assert seen == [64, 128, 128]  # not 500
    assert [padded_size(n, 533) for n in (1, 16, 17, 36, 300, 512, 513, 533)] == [16, 16, 32, 64, 512, 512, 533, 533]


def test_images_the_network_cannot_read_are_refused_by_size():
    local, global_ = detector_for({}), detector_for({"position": "global", "head": "covered"})
    assert local.reconstruct(torch.rand(1, 3, 28, 40)).shape == (1, 3, 28, 40)  # any grid with local positions
    for detector, shape, needle in [
        (local, (3, 30, 32), "multiples of 4"),  # 4 px patches
        (local, (3, 8, 32), "at least 12 px"),  # a 3 x 3 window of them
        (local, (1, 32, 32), r"reads \(3, H, W\)"),
        (global_, (3, 28, 40), "training size"),  # global positions: the 32 x 32 of training only
    ]:
        with pytest.raises(IntraError, match=needle):
            detector.reconstruct([torch.rand(shape)])
    with pytest.raises(IntraError, match="training size"):
        global_.predict(torch.rand(2, 3, 32, 40))


def test_chunks_follow_the_memory_budget_without_changing_the_result():
    cfg = tiny_config()
    detector = Detector(lively_model(cfg), cfg, dtype="fp32")
    images = torch.rand(2, 3, 32, 32)
    whole = detector.reconstruct(images)
    cfg.score.memory_mb = 3 * window_bytes(cfg.model) / 2**20
    assert detector.chunk_windows() == 3
    assert float((detector.reconstruct(images) - whole).abs().max()) <= 1e-6
    cfg.score.memory_mb = 1e-9
    assert detector.chunk_windows() == 1  # never zero


@pytest.mark.skipif(not available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_packed_cpu_network_computes_the_same_function(activation):
    cfg = tiny_config()
    cfg.model.activation = activation
    model = lively_model(cfg).eval()
    packed = pack_for_cpu(model)
    assert packed is not model and not any(type(m) is torch.nn.Linear for m in packed.modules())
    # the activation is fused into the linear layer before it, not computed apart
    assert not any(isinstance(m, (torch.nn.GELU, torch.nn.ReLU)) for m in packed.modules())
    patches = torch.rand(5, 9, cfg.model.patch_dim)
    covered = torch.randint(0, 9, (5,))
    covered = torch.arange(9) == covered[:, None]
    with torch.inference_mode():
        torch.testing.assert_close(packed(patches, covered), model(patches, covered), atol=1e-5, rtol=1e-5)


def test_detector_follows_weight_changes():
    cfg = tiny_config()
    model = lively_model(cfg)
    detector = Detector(model, cfg, dtype="fp32")
    images = torch.rand(1, 3, 32, 32)
    before = detector.reconstruct(images)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    after = detector.reconstruct(images)
    assert float((after - before).abs().min()) > 0.1
    assert float((after - naive_reconstruct(model, images, detector.plan((8, 8)))).abs().max()) <= 1e-5
    # Every other way fit and checkpoints change weights: load_state_dict, a buffer, storage replaced.
    other = lively_model(cfg, seed=1).state_dict()
    for change in (
        lambda: model.load_state_dict(other),
        lambda: model.set_pixel_stats(torch.full((3,), 0.3), torch.full((3,), 0.2)),
        lambda: setattr(model.head.weight, "data", model.head.weight.data * 2),
    ):
        with torch.no_grad():
            change()
        expected = naive_reconstruct(model, images, detector.plan((8, 8)))
        assert float((detector.reconstruct(images) - expected).abs().max()) <= 1e-5


PEAK_PROBE = """
import sys, torch
from pathlib import Path
from intra.config import Config, ModelConfig
from intra.inference.detector import Detector
from intra.core.model import InpaintingTransformer
torch.set_num_threads(1)
cfg = Config()
cfg.model = ModelConfig(image_size=128, patch_size=16, window=7, dim=256, depth=5, heads=4)
cfg.score.chunk_windows, cfg.score.memory_mb = int(sys.argv[1]), 1e6
detector = Detector(InpaintingTransformer(cfg.model), cfg, dtype="fp32")
images = torch.rand(1, 3, 128, 128)
detector.backend.network()  # the oneDNN copy of the weights is made before the measurement
def peak():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024
Path("/proc/self/clear_refs").write_text("5")
base = peak()
detector.reconstruct(images)
print(peak() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_window_bytes_bounds_the_measured_peak_memory_per_window():
    from intra.config import ModelConfig

    def growth(chunk):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-c", PEAK_PROBE, str(chunk)], capture_output=True, text=True, env=env, check=True
        )
        return int(result.stdout.split()[-1])

    per_window = (growth(64) - growth(4)) / 60
    estimate = window_bytes(ModelConfig(image_size=128, patch_size=16, window=7, dim=256, depth=5, heads=4))
    assert 0.3 * estimate < per_window <= estimate

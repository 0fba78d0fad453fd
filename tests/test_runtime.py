"""runtime.py: the C allocator keeps freed activation-sized blocks, so repeated forward passes stop faulting pages in."""

import json
import subprocess
import sys

import pytest

# Reconstructs 4 random images with the cpu preset's network 8 times (after a first call) and counts
# the page faults; with the argument "reuse", after runtime.reuse_freed_memory(). A fresh process each.
FAULTS = r"""
import json, resource, sys, torch
from intra.config import preset
from intra.core.model import InpaintingTransformer
from intra.inference.detector import Detector
from intra.runtime import reuse_freed_memory
enabled = reuse_freed_memory() if sys.argv[1] == "reuse" else None
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = preset("cpu")
detector = Detector(InpaintingTransformer(cfg.model).eval(), cfg)
images = torch.rand(4, 3, 128, 128)
detector.reconstruct(images)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    detector.reconstruct(images)
print(json.dumps({"enabled": enabled, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_reuse_freed_memory_stops_page_faults_between_forward_passes():
    reuse = faults("reuse")
    assert reuse["enabled"] is True
    # Without it a call faults in its activations again: usually thousands of pages per call, though
    # glibc's adaptive thresholds sometimes keep them (so the default is not compared here, it is not
    # steady). With it, a call faults in less than its largest activation, 4 images x 36 windows x
    # 49 tokens x 256 features in fp32: 7.2 MB, 1764 pages.
    largest_activation_pages = 4 * 36 * 49 * 256 * 4 // 4096
    assert reuse["faults"] / 8 < largest_activation_pages, reuse


def test_reuse_freed_memory_is_idempotent():
    from intra.runtime import reuse_freed_memory

    assert reuse_freed_memory() == reuse_freed_memory()


def test_machine_names_the_cpu_its_instruction_set_and_the_threads():
    import torch

    from intra.runtime import cpu_model, machine, native_bf16

    described = machine(torch.device("cpu"))
    assert described["cpu"] == cpu_model() and described["cpu"]
    assert described["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert described["native_bf16"] == native_bf16("cpu")
    assert described["threads"] == torch.get_num_threads() and described["torch"] == torch.__version__
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return
    named = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    if named:
        assert described["cpu"] == named[0]

"""Several covered patches per pass: the lattice masks, the inference plan and its reconstruction."""

import pytest
import torch

from intra.core.model import InpaintingTransformer
from intra.core.windows import patchify, unpatchify
from intra.inference.detector import Detector
from intra.inference.multicover import inference_plan, lattice_masks

from conftest import tiny_config


@pytest.mark.parametrize("grid, window, spacing", [(16, 7, 2), (16, 7, 3), (8, 3, 2), (7, 7, 3), (20, 5, 4)])
def test_multicover_plan_reads_every_patch_once(grid, window, spacing):
    tokens, covered, read = inference_plan(grid, window, spacing)
    assert tokens.shape == covered.shape == read.shape == (len(tokens), window * window)
    assert (read <= covered).all()
    assert torch.equal(torch.bincount(tokens[read], minlength=grid * grid), torch.ones(grid * grid, dtype=torch.long))
    assert len(tokens) < grid * grid or grid == window  # fewer passes than one per patch


def test_lattice_mask_covers_every_spacing_th_patch():
    mask = lattice_masks(torch.tensor([1]), torch.tensor([0]), 5, 2).view(5, 5)
    assert mask.nonzero().tolist() == [[1, 0], [1, 2], [1, 4], [3, 0], [3, 2], [3, 4]]


def test_multicover_reconstruction_matches_a_pass_by_pass_loop():
    cfg = tiny_config(head="covered")
    cfg.score.cover_spacing = 2
    model = InpaintingTransformer(cfg.model).eval()
    images = torch.rand(2, 3, 32, 32)
    tokens, covered, read = inference_plan(cfg.model.grid, cfg.model.window, 2)
    patches = patchify(images, 4)  # (2, 64, 48)
    expected = torch.zeros_like(patches)
    with torch.no_grad():
        for b in range(2):
            for w in range(len(tokens)):
                out = model.forward_multi(patches[b, tokens[w]][None], covered[w][None], tokens[w][None])[0]
                expected[b, tokens[w][read[w]]] = out[read[w]]
    cfg.score.chunk_windows = 7  # chunks that straddle images
    got = Detector(model, cfg).reconstruct(images)
    torch.testing.assert_close(got, unpatchify(expected, 3, (8, 8)))

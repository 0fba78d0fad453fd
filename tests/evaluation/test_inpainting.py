"""Inpainting quality: the trivial fills against references, and the report's ratio."""

import numpy as np
import pytest
import torch

from intra.evaluation.inpainting import fill_errors, flat_fill, inpainting_report, ring_fill, smooth_fill


def test_flat_and_ring_fills_of_a_hand_made_image():
    image = torch.zeros(1, 1, 8, 8)
    image[..., :4, :4] = 1.0  # one bright patch of four (K = 4)
    torch.testing.assert_close(flat_fill(image, 4), image)  # constant patches are their own mean
    ring = ring_fill(image, 4)
    # The bright patch's ring lies inside the image on two sides only: 4 + 4 + 1 dark pixels, all 0.
    assert float(ring[0, 0, 0, 0]) == 0.0
    # The patch right of it borders the bright one along its left edge: 4 of its 4 + 4 + 1 ring pixels are 1.
    assert float(ring[0, 0, 0, 4]) == pytest.approx(4 / 9)


def test_smooth_fill_equals_scikit_image_biharmonic_on_interior_patches():
    restoration = pytest.importorskip("skimage.restoration")
    torch.manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 40, 40), 3, 1, 1)
    ours = smooth_fill(image, 8)[0].permute(1, 2, 0).numpy()
    array = image[0].permute(1, 2, 0).double().numpy()
    for top, left in ((8, 8), (16, 24), (24, 16)):
        mask = np.zeros((40, 40), bool)
        mask[top : top + 8, left : left + 8] = True
        reference = restoration.inpaint_biharmonic(array, mask, channel_axis=-1)
        assert np.abs(reference[mask] - ours[mask]).max() < 1e-5


def test_smooth_fill_continues_a_ramp_that_the_ring_mean_flattens():
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = (0.2 + 0.6 * (0.7 * x + 0.3 * y) / 31)[None, None]  # a plane: biharmonic, so filled exactly
    errors = fill_errors(ramp, 8)
    inner = (slice(None), slice(None), slice(8, 24), slice(8, 24))
    torch.testing.assert_close(smooth_fill(ramp, 8)[inner], ramp[inner], atol=1e-6, rtol=0)
    assert errors["smooth"] < 0.1 * errors["ring"] and errors["flat"] < errors["ring"]


def test_report_ratio_against_the_better_fill():
    images = torch.rand(2, 1, 16, 16)
    fills = fill_errors(images, 4)
    perfect = inpainting_report(images, images, fills)
    assert perfect["network"] == 0 and perfect["ratio"] == 0
    ring = inpainting_report(images, ring_fill(images, 4), fills)
    assert ring["ratio"] == pytest.approx(fills["ring"] / min(fills["ring"], fills["smooth"]))

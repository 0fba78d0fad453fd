"""Similarity maps and the inpainting loss: GMS, SSIM, filters and the combined loss.

The filters are checked against scipy.ndimage and the SSIM map against scikit-image.
"""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from intra.core.losses import inpainting_loss, msgms_loss, ssim_loss
from intra.core.similarity import gaussian_filter, gms_map, mean_filter, ssim, ssim_map


def test_gms_of_identical_images_is_one():
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(gms_map(x, x), torch.ones_like(x))


def test_gms_drops_where_structure_differs():
    a = torch.zeros(1, 1, 16, 16)
    b = a.clone()
    b[..., 8:, :] = 1.0  # an edge that a lacks
    assert gms_map(a, b).min() < 0.1


def test_ssim_of_identical_patches_is_one():
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(4))
    assert float(ssim_loss(x, x)) < 1e-6


def test_ssim_is_lower_for_a_flat_prediction():
    target = torch.rand(4, 1, 16, 16)
    flat = target.mean(dim=(2, 3), keepdim=True).expand_as(target)
    assert float(ssim(flat, target).mean()) < 0.2


def test_loss_of_a_perfect_prediction_is_zero_and_terms_are_reported():
    x = torch.rand(8, 3, 16, 16)
    loss, parts = inpainting_loss(x, x.clone(), alpha=0.01, beta=0.01)
    assert float(loss) < 1e-6
    assert set(parts) == {"l2", "gms", "ssim"}
    assert float(msgms_loss(x, x)) < 1e-6


def test_loss_weights_combine_the_terms():
    pred, target = torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)
    loss, parts = inpainting_loss(pred, target, alpha=0.5, beta=2.0)
    torch.testing.assert_close(loss, parts["l2"] + 0.5 * parts["gms"] + 2.0 * parts["ssim"])
    l2_only, parts = inpainting_loss(pred, target, alpha=0, beta=0)
    assert set(parts) == {"l2"}


def test_filters_keep_constants_and_shapes():
    x = torch.full((1, 1, 20, 20), 0.3)
    torch.testing.assert_close(mean_filter(x, 5), x)
    torch.testing.assert_close(gaussian_filter(x, 2.0), x)
    spike = torch.zeros(1, 1, 21, 21)
    spike[..., 10, 10] = 1
    assert abs(float(gaussian_filter(spike, 1.5).sum()) - 1) < 1e-5


@pytest.mark.parametrize("size", [1, 3, 5, 7, 21])
def test_mean_filter_equals_scipy_uniform_filter(size):
    x = torch.rand(2, 3, 17, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    expected = ndimage.uniform_filter(x.numpy(), size=(1, 1, size, size), mode="nearest")  # nearest = replicate
    np.testing.assert_allclose(mean_filter(x, size).numpy(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5, 2.0, 4.0])
def test_gaussian_filter_equals_scipy_with_the_same_radius(sigma):
    x = torch.rand(2, 3, 17, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(int(sigma * 10)))
    radius = math.ceil(3 * sigma)  # scipy's radius is int(truncate * sigma + 0.5)
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=radius / sigma)
    np.testing.assert_allclose(gaussian_filter(x, sigma).numpy(), expected, atol=1e-5, rtol=0)
    float32 = gaussian_filter(x.float(), sigma).numpy()
    np.testing.assert_allclose(float32, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_ssim_map_equals_scikit_image_away_from_the_border(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((3, 32, 40))
    noise = rng.normal(0, 1, a.shape) * np.linspace(0, 0.8, a.shape[-1])  # from none on the left to much
    b = np.clip(a + noise + 0.05 * seed, 0, 1)
    _, expected = structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        full=True,
        channel_axis=0,
    )
    ours = ssim_map(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0].numpy()
    inner = (slice(None), slice(5, -5), slice(5, -5))  # the 11 x 11 window reaches 5 px: no padding inside
    np.testing.assert_allclose(ours[inner], expected[inner], atol=1e-5, rtol=0)
    assert expected[inner].min() < 0.3 and expected[inner].max() > 0.9  # SSIM spans its range


def test_ssim_is_the_mean_of_its_map():
    a, b = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(ssim(a, b), ssim_map(a, b).mean(dim=(1, 2, 3)))

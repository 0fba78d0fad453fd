"""Similarity maps and the inpainting loss: GMS, SSIM, filters and the combined loss."""

import torch

from intra.core.losses import inpainting_loss, msgms_loss, ssim_loss
from intra.core.similarity import gaussian_filter, gms_map, mean_filter, ssim


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

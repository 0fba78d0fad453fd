"""The anomaly map: difference maps, filter sizes, normalisation and the image score."""

import torch
import torch.nn.functional as F

from intra.config import ScoreConfig
from intra.core.anomaly_map import difference_map, filter_sizes, image_score, normalize, odd_size
from intra.core.similarity import downscale, resize_as_matrices
from intra.evaluation.metrics import pixel_auroc


def test_difference_map_of_a_perfect_reconstruction_is_zero():
    x = torch.rand(2, 3, 64, 64)
    diff = difference_map(x, x.clone(), ScoreConfig())
    assert diff.shape == (2, 64, 64)
    assert float(diff.abs().max()) < 1e-6


def test_difference_map_lights_up_where_the_reconstruction_differs():
    x = torch.rand(1, 1, 64, 64) * 0.1 + 0.45
    recon = x.clone()
    recon[..., 40:48, 8:16] = torch.rand(8, 8)  # a wrong patch
    diff = difference_map(x, recon, ScoreConfig())[0]
    assert diff[44, 12] > 5 * diff[10, 50]


def test_filter_sizes_stated_in_the_docs():
    sizes = filter_sizes(ScoreConfig())
    assert sizes == [
        {"scale": 0.5, "mean_filter": 11, "gaussian_sigma": 2.0},
        {"scale": 0.25, "mean_filter": 5, "gaussian_sigma": 1.0},
    ]
    assert odd_size(10.5) == 11 and odd_size(5.25) == 5 and odd_size(0.3) == 1


def test_normalisation_and_score():
    diff = torch.tensor([[[0.1, 0.5], [0.2, 0.2]]])
    mean_map = torch.tensor([[0.1, 0.1], [0.4, 0.2]])
    amap = normalize(diff, mean_map)
    torch.testing.assert_close(amap, torch.tensor([[[0.0, 0.16], [0.04, 0.0]]]))
    torch.testing.assert_close(image_score(amap), torch.tensor([0.16]))
    assert normalize(diff, None) is diff


def test_downscale_as_matrices_is_torchs_antialiased_resize():
    # The export's form of the difference map's downscaling (matrix products) against F.interpolate.
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    for size in [(32, 24), (16, 12), (21, 17), (64, 48)]:
        plain = downscale(images, size)
        with resize_as_matrices():
            matrices = downscale(images, size)
        assert plain.shape == matrices.shape == (2, 3, *size)
        assert (plain - matrices).abs().max() <= 1e-6
    assert downscale(images, (32, 24)).equal(
        F.interpolate(images, size=(32, 24), mode="bilinear", antialias=True, align_corners=False)
    )  # outside the block: torch's resize itself


def test_the_signed_difference_sees_a_uniform_brightness_offset_that_gms_does_not():
    x = torch.rand(1, 3, 64, 64)
    darker = x - 0.05  # the image 0.05 darker than its reconstruction everywhere
    gms = difference_map(darker, x, ScoreConfig())
    signed = difference_map(darker, x, ScoreConfig(difference="signed", signed_weight=2.0))
    both = difference_map(darker, x, ScoreConfig(difference="both", signed_weight=2.0))
    assert float(gms.abs().max()) < 0.01
    torch.testing.assert_close(signed, torch.full((1, 64, 64), 0.1))  # the magnitude, times the weight
    torch.testing.assert_close(both, gms + signed)
    torch.testing.assert_close(difference_map(x + 0.05, x, ScoreConfig(difference="signed", signed_weight=2.0)), signed)


def test_the_signed_difference_finds_a_faint_stain_under_texture_error_that_gms_misses():
    """A stain 4 % darker, under a reconstruction error several times larger per pixel (texture not repainted)."""
    generator = torch.Generator().manual_seed(0)
    clean = 0.5 + 0.1 * torch.rand(4, 3, 64, 64, generator=generator)
    reconstruction = clean + 0.2 * (torch.rand(4, 3, 64, 64, generator=generator) - 0.5)
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    stain = ((y - 32) ** 2 + (x - 32) ** 2 < 10**2).float()
    image = clean * (1 - 0.04 * stain)
    masks = stain.bool().expand(4, 64, 64).numpy()
    found = {
        kind: pixel_auroc(difference_map(image, reconstruction, ScoreConfig(difference=kind)).numpy(), masks)
        for kind in ("gms", "signed", "both")
    }
    assert found["gms"] < 0.7 and found["signed"] > 0.95 and found["both"] > 0.9, found

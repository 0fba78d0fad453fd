import torch

from intra.core.smooth_fill import biharmonic_operator, fill_patches


def test_every_border_case_reproduces_a_constant():
    for value in range(16):
        sides = tuple(bool(value >> bit & 1) for bit in range(4))
        if not any(sides):
            continue  # a patch alone in its image has nothing to be filled from
        rows = biharmonic_operator(4, sides).sum(1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
    image = torch.full((2, 3, 12, 20), 0.3, dtype=torch.float64)
    torch.testing.assert_close(fill_patches(image, 4), image)


def test_a_patch_fill_never_reads_its_own_pixels_even_at_the_border():
    image = torch.rand(1, 2, 16, 24, dtype=torch.float64)
    filled = fill_patches(image, 8)
    for top, left in [(0, 0), (8, 16), (0, 8), (8, 0)]:
        changed = image.clone()
        changed[..., top : top + 8, left : left + 8] = 5.0
        own = (..., slice(top, top + 8), slice(left, left + 8))
        torch.testing.assert_close(fill_patches(changed, 8)[own], filled[own])


def test_the_fill_reads_the_ring_of_its_neighbours():
    image = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    changed = image.clone()
    changed[..., 7, 10] += 1.0  # one pixel of the ring above the centre patch
    assert (fill_patches(changed, 8) - fill_patches(image, 8))[..., 8:16, 8:16].abs().max() > 1e-3


def test_selected_patches_fill_as_the_whole_grid_does():
    from intra.core.smooth_fill import fill_grid, fill_selected
    from intra.core.windows import patchify

    windows = patchify(torch.rand(3, 2, 20, 20, dtype=torch.float64), 4)  # 5 x 5 patches of 4 px
    select = torch.rand(3, 25, generator=torch.Generator().manual_seed(0)) < 0.3
    every = fill_grid(windows, (5, 5), 2, 4)
    torch.testing.assert_close(fill_selected(windows, select, (5, 5), 2, 4), every[select])

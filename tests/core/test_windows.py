"""Window placement: corners at the borders, inference windows, patchify, random windows and crops."""

import pytest
import torch

from intra.core.windows import (
    crop_windows,
    inference_plan,
    inference_windows,
    lattice_masks,
    lattice_plan,
    one_patch_plan,
    patchify,
    random_windows,
    unpatchify,
    window_corner,
    window_tokens,
)


def test_window_corner_centres_the_patch_away_from_borders():
    # M = 16, L = 7: centre patch 8 sits at window position 3 (the centre) -> corner 5.
    assert int(window_corner(8, 16, 7)) == 5
    assert int(window_corner(3, 16, 7)) == 0  # t - 3 = 0: exactly centred, window at the border
    assert int(window_corner(12, 16, 7)) == 9  # last centred position: 12 + 3 = 15 = M - 1


def test_window_corner_clamps_at_every_border():
    corners = window_corner(torch.arange(16), 16, 7)
    assert corners[:4].tolist() == [0, 0, 0, 0]  # top/left border: window stays inside
    assert corners[12:].tolist() == [9, 9, 9, 9]  # bottom/right border: corner M - L
    assert corners.min() >= 0 and (corners + 7).max() <= 16


def test_inference_windows_cover_every_patch_and_contain_it():
    tokens, covered = inference_windows((6, 9), 3)
    assert tokens.shape == (54, 9) and covered.shape == (54,)
    # The covered token of window p is patch p itself.
    assert torch.equal(tokens[torch.arange(54), covered], torch.arange(54))
    # Interior patch (2, 4): centred, covered index = 4 (middle of 3 x 3).
    assert int(covered[2 * 9 + 4]) == 4
    # Corner patches sit in the windows' corners.
    assert int(covered[0]) == 0 and int(covered[53]) == 8


def test_window_tokens_are_global_grid_positions():
    tokens = window_tokens(torch.tensor([1]), torch.tensor([2]), columns=10, window=3)
    expected = [[(1 + i) * 10 + (2 + j) for i in range(3) for j in range(3)]]
    assert tokens.tolist() == expected


def test_patchify_round_trip_and_layout():
    images = torch.rand(2, 3, 12, 20)
    patches = patchify(images, 4)
    assert patches.shape == (2, 15, 48)
    assert torch.equal(unpatchify(patches, 3, (3, 5)), images)
    # Patch (1, 2) is the image region rows 4..7, columns 8..11, laid out C x K x K.
    assert torch.equal(patches[0, 1 * 5 + 2].view(3, 4, 4), images[0, :, 4:8, 8:12])


def test_random_windows_reach_both_end_positions_with_equal_chance():
    generator = torch.Generator().manual_seed(0)
    grids = torch.tensor([[10, 10], [9, 12]]).repeat(30_000, 1)  # images of two sizes
    r, s, covered = random_windows(grids, 7, generator)
    for axis, corner in ((0, r), (1, s)):
        for size in grids[:2, axis].tolist():
            picked = corner[grids[:, axis] == size]
            counts = torch.bincount(picked, minlength=size - 6).float()
            assert picked.min() == 0 and picked.max() == size - 7  # every window inside its own image
            assert (counts / counts.mean() - 1).abs().max() < 0.06  # uniform, ends included
    assert covered.max() == 48


def test_patch_placement_covers_every_patch_equally_often():
    generator = torch.Generator().manual_seed(0)
    grids = torch.tensor([[16, 12]]).repeat(200_000, 1)
    shares = {}
    for placement in ("corner", "patch"):
        r, s, covered = random_windows(grids, 7, generator, placement)
        assert r.min() == 0 and r.max() == 9 and s.min() == 0 and s.max() == 5  # inside the image
        assert covered.min() == 0 and covered.max() == 48
        rows, cols = r + covered // 7, s + covered % 7  # the covered patch on the grid
        counts = torch.bincount(rows * 12 + cols, minlength=16 * 12).float()
        shares[placement] = counts / counts.mean()
    assert (shares["patch"] - 1).abs().max() < 0.15  # about 1040 draws a patch: uniform within the noise
    # The paper's placement: the image's corner patch is covered 1/7 (rows) x 1/6 (columns) as often as patch (8, 6).
    assert shares["corner"][0] < 0.1 * shares["corner"][8 * 12 + 6]
    with pytest.raises(ValueError, match="placement"):
        random_windows(grids, 7, generator, "centre")


def test_crop_windows_matches_slicing():
    images = torch.rand(3, 2, 16, 16)
    crops = crop_windows(
        images, torch.tensor([2, 0]), torch.tensor([1, 0]), torch.tensor([0, 2]), window=2, patch_size=4
    )
    assert torch.equal(crops[0], images[2, :, 4:12, 0:8])
    assert torch.equal(crops[1], images[0, :, 0:8, 8:16])


@pytest.mark.parametrize(
    "grid, window, spacing",
    [((16, 16), 7, 2), ((16, 16), 7, 3), ((8, 8), 3, 2), ((7, 7), 7, 3), ((20, 13), 5, 4), ((9, 30), 7, 3)],
)
def test_lattice_plan_reads_every_patch_once(grid, window, spacing):
    plan = inference_plan(grid, window, spacing)
    assert plan.tokens.shape == plan.covered.shape == plan.read.shape == (plan.passes, window * window)
    assert (plan.read <= plan.covered).all()
    cells = grid[0] * grid[1]
    assert torch.equal(torch.bincount(plan.tokens[plan.read], minlength=cells), torch.ones(cells, dtype=torch.long))
    assert plan.passes < cells or grid == (window, window)  # fewer passes than one per patch


@pytest.mark.parametrize("grid, window", [((16, 16), 7), ((9, 30), 7), ((8, 8), 7)])
def test_a_finer_tiling_still_reads_every_patch_once(grid, window):
    plain, finer = lattice_plan(grid, window, 3), lattice_plan(grid, window, 3, extra_windows=1)
    cells = grid[0] * grid[1]
    assert torch.equal(torch.bincount(finer.tokens[finer.read], minlength=cells), torch.ones(cells, dtype=torch.long))
    windows_per_axis = [min(-(-side // window) + 1, side - window + 1) for side in grid]  # capped: one per position
    assert finer.passes == windows_per_axis[0] * windows_per_axis[1] * 9
    assert finer.passes > plain.passes or grid == (8, 8)  # 8 patches hold only 2 windows of 7


@pytest.mark.parametrize("grid", [(6, 9), (3, 3), (11, 4)])
def test_one_patch_plan_reads_each_patch_at_its_window_centre(grid):
    plan = one_patch_plan(grid, 3)
    assert plan.passes == grid[0] * grid[1] and torch.equal(plan.read, plan.covered)
    assert torch.equal(plan.tokens[plan.read], torch.arange(plan.passes))  # pass i reads patch i
    assert (plan.covered.sum(1) == 1).all()


def test_lattice_mask_covers_every_spacing_th_patch():
    mask = lattice_masks(torch.tensor([1]), torch.tensor([0]), 5, 2).view(5, 5)
    assert mask.nonzero().tolist() == [[1, 0], [1, 2], [1, 4], [3, 0], [3, 2], [3, 4]]

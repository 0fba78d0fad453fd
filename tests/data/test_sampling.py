"""Training windows: targets, augmentation ranges and several covered patches per window."""

import torch

from intra.data.sampling import WindowSampler

from conftest import tiny_config


def test_multicover_sampler_targets_are_the_covered_patches():
    cfg = tiny_config(head="covered")
    cfg.train.cover_spacing = 2
    batch = WindowSampler(torch.rand(2, 3, 32, 32), cfg, augment=False).sample(8, torch.Generator().manual_seed(3))
    assert batch.covered.dtype == torch.bool and batch.covered.shape == (8, 9)
    assert batch.target.shape == (int(batch.covered.sum()), 3, 4, 4)
    torch.testing.assert_close(batch.patches[batch.covered].view_as(batch.target), batch.target)


def test_sampler_batches_have_consistent_targets():
    cfg = tiny_config()
    images = torch.rand(2, 3, 32, 32)
    batch = WindowSampler(images, cfg, augment=False).sample(16, torch.Generator().manual_seed(1))
    assert batch.patches.shape == (16, 9, 48) and batch.target.shape == (16, 3, 4, 4)
    assert batch.covered.shape == (16, 9) and (batch.covered.sum(1) == 1).all()  # one covered patch per window
    torch.testing.assert_close(batch.patches[batch.covered].view(16, 3, 4, 4), batch.target)
    # positions are the windows' global grid indices: a 3 x 3 block of an 8 x 8 grid.
    rows, cols = batch.positions // 8, batch.positions % 8
    assert ((rows.max(1).values - rows.min(1).values) == 2).all() and (
        (cols.max(1).values - cols.min(1).values) == 2
    ).all()


def test_augmented_windows_stay_in_range():
    for rotation in ("rot90", "any"):
        cfg = tiny_config()
        cfg.train.rotation = rotation
        batch = WindowSampler(torch.rand(2, 3, 32, 32), cfg).sample(16, torch.Generator().manual_seed(2))
        assert batch.patches.shape == (16, 9, 48)
        assert float(batch.patches.min()) >= 0 and float(batch.patches.max()) <= 1


def test_global_positions_follow_flipped_and_turned_windows():
    """Issue 10: with global positions, a flipped or rotated window's tokens keep the grid positions of their patches."""
    cfg = tiny_config(position="global")
    cfg.data.resize = "square"
    cfg.train.flips, cfg.train.rotation = True, "rot90"
    k, grid = cfg.model.patch_size, cfg.model.grid
    index = torch.arange(grid * grid, dtype=torch.float32).view(grid, grid)
    image = index.repeat_interleave(k, 0).repeat_interleave(k, 1).expand(3, -1, -1) / 1000  # a patch = its index
    batch = WindowSampler([image], cfg).sample(256, torch.Generator().manual_seed(0))
    assert torch.equal((batch.patches[..., 0] * 1000).round().long(), batch.positions)
    assert (batch.positions.diff(dim=1) < 0).any()  # windows really were turned (untouched ones increase)


def test_patch_placement_covers_border_patches_as_often_as_inner_ones_through_flips_and_turns():
    """train.window_placement = patch: the drawn patch stays the covered one when its window flips or turns."""
    for spacing in (0, 3):
        cfg = tiny_config(position="global", head="covered" if spacing else "mean")
        cfg.data.resize = "square"
        cfg.train.flips, cfg.train.rotation = True, "rot90"
        cfg.train.window_placement, cfg.train.cover_spacing = "patch", spacing
        grid = cfg.model.grid  # 8 x 8 patches, windows of 3
        batch = WindowSampler([torch.rand(3, 32, 32)], cfg).sample(20_000, torch.Generator().manual_seed(0))
        assert torch.equal(batch.patches[batch.covered].view_as(batch.target), batch.target)
        counts = torch.bincount(batch.positions[batch.covered], minlength=grid * grid).float()
        share = counts / counts.mean()
        if spacing == 0:  # one covered patch a window: every patch alike
            assert (share - 1).abs().max() < 0.15
        else:  # the lattice adds its other patches: the corner patch still near the interior's rate
            assert share[0] > 0.5 * share[3 * grid + 3]

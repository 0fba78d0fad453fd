"""Image geometry: square (the paper) or the image's own aspect at one scale, rounded to whole patches."""

import pytest
import torch

from intra.config import Config, apply_overrides, preset
from intra.core.anomaly_map import border_bins, expand_statistic
from intra.data.geometry import (
    Geometry,
    resolve_cover_spacing,
    resolve_image_size,
    resolve_kind,
    resolve_position,
    resolve_scale,
)
from intra.errors import IntraError


def test_square_and_scaled_targets():
    cfg = Config()
    cfg.model.image_size, cfg.model.patch_size, cfg.model.window = 128, 8, 7
    assert Geometry.of(cfg).target(640, 480) == (128, 128)
    cfg.data.resize, cfg.data.scale = "scale", 0.5
    geometry = Geometry.of(cfg)
    assert geometry.target(640, 480) == (240, 320)  # height, width: aspect kept, multiples of 8
    assert geometry.target(301, 205) == (104, 152)  # 102.5 -> 104, 150.5 -> 152
    assert geometry.target(60, 400) == (200, 56)  # never narrower than a window (7 x 8 px)


def test_distortion_names_stretched_objects_and_enlarged_small_images():
    cfg = Config()
    cfg.model.image_size, cfg.model.patch_size, cfg.model.window = 128, 8, 7
    assert Geometry.of(cfg).distortion(640, 200) is None  # square (the paper): every image is squashed alike
    cfg.data.resize = "scale"
    assert Geometry.of(cfg).distortion(40, 400) is None  # scale not resolved yet (0): nothing to compare with
    cfg.data.scale = 0.5
    textures = Geometry.of(cfg)
    assert textures.distortion(640, 480) is None and textures.distortion(301, 205) is None
    assert textures.distortion(120, 120) is None  # 60 -> 56 px: rounded to a window, not enlarged
    message = textures.distortion(40, 400)  # 20 px wide at the scale, enlarged to a window of 56
    assert message is not None and "enlarged 2.80x" in message
    cfg.data.height, cfg.data.width = 96, 136  # objects: one size for every image
    objects = Geometry.of(cfg)
    assert objects.distortion(140, 96) is None and objects.distortion(280, 192) is None  # the same aspect
    assert objects.distortion(150, 96) is None  # within the tolerance
    message = objects.distortion(100, 100)
    assert message is not None and "stretched 1.42x" in message and "136x96" in message


def test_automatic_scale_and_kind():
    cfg = Config()
    cfg.model.image_size = 128
    cfg.data.resize = "scale"
    sizes = [(512, 256), (300, 300), (256, 400)]
    cfg.data.scale = resolve_scale(cfg, sizes)
    assert cfg.data.scale == pytest.approx(128 / 256)  # the median short side becomes 128 px
    assert resolve_kind(cfg, sizes) == "texture"
    assert resolve_kind(cfg, [(300, 200)] * 3) == "object"
    cfg.data.kind = "object"
    assert resolve_kind(cfg, sizes) == "object"  # chosen by hand: kept


def test_textures_take_their_own_image_size_when_the_scale_is_chosen():
    cfg = Config()
    apply_overrides(cfg, {"data.resize": "scale", "model.image_size": 128, "data.texture_image_size": 192})
    cfg.model.patch_size = 8
    textures, objects = [(512, 256), (300, 300), (256, 400)], [(300, 200)] * 3
    cfg.data.kind = resolve_kind(cfg, textures)  # decided before the scale
    assert cfg.data.kind == "texture" and resolve_image_size(cfg) == 192
    cfg.model.image_size = resolve_image_size(cfg)
    assert resolve_scale(cfg, textures) == pytest.approx(192 / 256)  # the median short side becomes 192 px
    cfg.model.image_size, cfg.data.scale = 128, 0.5  # a scale given by hand is kept, and with it the image size
    assert resolve_image_size(cfg) == 128
    for kind, sizes in (("object", objects), ("texture", textures)):
        other = Config()
        apply_overrides(other, {"data.resize": "scale", "model.image_size": 128, "data.texture_image_size": 192})
        other.data.kind = resolve_kind(other, sizes)
        assert other.data.kind == kind
        assert resolve_image_size(other) == (128 if kind == "object" else 192)
    other.data.texture_image_size = 0  # 0: textures too take model.image_size
    assert resolve_image_size(other) == 128
    with pytest.raises(IntraError, match="data.texture_image_size"):
        apply_overrides(Config(), {"data.texture_image_size": 100})  # not a multiple of the 16 px patch


def test_global_positions_need_one_geometry():
    with pytest.raises(IntraError, match="data.resize = square"):
        apply_overrides(Config(), {"model.position": "global", "data.resize": "scale", "data.kind": "texture"})
    cfg = Config()
    apply_overrides(cfg, {"model.position": "global", "data.resize": "scale", "model.image_size": 128})
    cfg.model.patch_size = 8
    sizes = [(512, 256), (300, 300)]
    cfg.data.kind = resolve_kind(cfg, sizes)
    with pytest.raises(IntraError, match="one size"):
        resolve_position(cfg)  # images of several sizes have no one grid of positions


def test_automatic_positions_are_global_for_objects_and_local_for_textures():
    cfg = Config()
    apply_overrides(cfg, {"model.position": "auto", "data.resize": "scale", "model.image_size": 128})
    cfg.model.patch_size = 8
    cfg.data.kind, (cfg.data.height, cfg.data.width) = "object", (96, 160)
    assert resolve_position(cfg) == ("global", 12 * 20)  # one table row per patch of the one size
    cfg.data.kind, (cfg.data.height, cfg.data.width) = "texture", (0, 0)
    assert resolve_position(cfg) == ("local", 0)
    cfg.data.resize, cfg.data.kind = "square", "object"
    assert resolve_position(cfg) == ("global", 16 * 16)
    cfg.train.rotation = "any"  # windows turned by any angle: no grid positions to follow
    assert resolve_position(cfg) == ("local", 0)


def test_textures_take_their_own_lattice_in_training_and_scoring():
    cfg = apply_overrides(preset("cpu"), {"score.cover_spacing": 3})  # objects may be read otherwise by hand
    cfg.data.kind = "object"
    assert resolve_cover_spacing(cfg) == (2, 3)
    cfg.data.kind = "texture"
    assert resolve_cover_spacing(cfg) == (3, 3)  # both: a network is read with the lattice it learned
    cfg.train.texture_cover_spacing = 0  # no lattice of their own: as objects
    assert resolve_cover_spacing(cfg) == (2, 3)
    cfg.train.texture_cover_spacing, cfg.train.cover_spacing, cfg.score.cover_spacing = 3, 0, 0
    assert resolve_cover_spacing(cfg) == (0, 0)  # one covered patch per window (the paper): no lattice to replace
    with pytest.raises(IntraError, match="train.texture_cover_spacing must be 0 or 2 to model.window"):
        apply_overrides(preset("cpu"), {"train.texture_cover_spacing": 8})


def test_border_bins_make_statistics_position_free():
    bins = border_bins((7, 9), depth=2)
    assert bins.shape == (7, 9)
    assert bins[0, 0] == 0 and bins[3, 4] == 2 * 3 + 2  # a corner; the interior bin (2, 2)
    assert torch.equal(bins, bins.flip(0)) and torch.equal(bins, bins.flip(1))  # symmetric in every border
    table = torch.arange(9.0).view(3, 3)
    expanded = expand_statistic(table, (5, 6), "texture", 2)
    assert expanded.shape == (5, 6) and expanded[2, 2] == 8 and expanded[0, 1] == 1
    with pytest.raises(ValueError):
        expand_statistic(torch.zeros(4, 4), (5, 6), "object", 2)

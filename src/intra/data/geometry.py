"""Image geometry: the size every image is resized to before it is cut into patches.

`data.resize = "square"` (the paper): model.image_size x model.image_size whatever the image.
`data.resize = "scale"`: the image keeps its aspect ratio and is resized by `data.scale`, one factor
for every image (chosen at fit time, when 0, so that the median training image's short side becomes
model.image_size); each side is rounded to the nearest multiple of the patch size and is at least a
window wide (L * K pixels), so the grid is M x N patches with M, N >= L. Sizes are read from the
files' headers; nothing here decodes pixels or knows the network.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, replace

from ..config import Config
from ..errors import IntraError

log = logging.getLogger(__name__)

# How far an image's resizing may depart from the training images' before its prediction says so:
# beyond what rounding to whole patches does (up to about 1.16x for an image near one window wide).
DISTORTION_TOLERANCE = 1.25


@dataclass(frozen=True)
class Geometry:
    """What `target` maps an image's (width, height) to: the (height, width) it is resized to."""

    resize: str  # "square" or "scale"
    size: int  # model.image_size
    scale: float  # data.scale (resolved, > 0, with resize = "scale")
    patch: int
    window: int
    fixed: tuple[int, int] = (0, 0)  # data.height, data.width: one size for every image (objects)

    @classmethod
    def of(cls, cfg: Config) -> Geometry:
        d = cfg.data
        return cls(d.resize, cfg.model.image_size, d.scale, cfg.model.patch_size, cfg.model.window, (d.height, d.width))

    def target(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) in pixels, multiples of the patch size, at least a window per side."""
        if self.resize == "square":
            return self.size, self.size
        if all(self.fixed):
            return self.fixed
        smallest = self.window * self.patch
        sides = (max(smallest, self.patch * round(side * self.scale / self.patch)) for side in (height, width))
        return tuple(sides)

    def distortion(self, width: int, height: int) -> str | None:
        """Why an image of (width, height) is scored less like the training images than usual, or None.

        Objects (one size for every image) are resized to that size, so an image of another aspect
        ratio is stretched along one axis; with the scale kept (textures), an image under a window
        is enlarged beyond the scale. Either way the network sees structure at sizes it never
        trained on. Square resizing (the paper) squashes every image alike, so it says nothing.
        """
        if self.resize == "square" or not self.scale:  # no scale yet (a config not resolved by fit): nothing to compare
            return None
        target_height, target_width = self.target(width, height)
        fx, fy = target_width / width, target_height / height
        if all(self.fixed):
            stretch = max(fx, fy) / min(fx, fy)
            if stretch > DISTORTION_TOLERANCE:
                return (
                    f"stretched {stretch:.2f}x along one axis to the run's {target_width}x{target_height} px:"
                    " its aspect ratio is not the training images'"
                )
        elif max(fx, fy) > DISTORTION_TOLERANCE * self.scale:
            return (
                f"enlarged {max(fx, fy) / self.scale:.2f}x beyond the run's scale to {target_width}x{target_height} px,"
                " the smallest it scores: the image is smaller than one window"
            )
        return None


def warn_distorted(geometry: Geometry, paths: list, sizes: list[tuple[int, int]], which: str, consequence: str) -> int:
    """Log how many images (`which`: "training", "test") `geometry` resizes out of the ordinary, naming the
    first and what it does to them; returns the count."""
    distorted = [(path, note) for path, size in zip(paths, sizes) if (note := geometry.distortion(*size))]
    if distorted:
        log.warning(
            "%d of %d %s images are %s (the first: %s, %s)",
            len(distorted),
            len(paths),
            which,
            consequence,
            *distorted[0],
        )
    return len(distorted)


def automatic_scale(image_size: int, sizes: list[tuple[int, int]]) -> float:
    """The factor that brings the median short side of `sizes` (width, height) to image_size."""
    return image_size / statistics.median(min(size) for size in sizes)


def resolve_scale(cfg: Config, sizes: list[tuple[int, int]]) -> float:
    """data.scale, or for 0 the factor that brings the median short side of `sizes` (width, height) to model.image_size."""
    if cfg.data.resize != "scale" or cfg.data.scale:
        return cfg.data.scale
    scale = automatic_scale(cfg.model.image_size, sizes)
    log.info("data.scale = %.4g: the median training image's short side becomes %d px", scale, cfg.model.image_size)
    return scale


def resolve_kind(cfg: Config, sizes: list[tuple[int, int]]) -> str:
    """data.kind, or for "auto": object when every training image gets the same size, else texture.

    Decided before the scale (a texture may then take another image size, `resolve_image_size`): with
    the scale still to choose, the sizes are compared at the one model.image_size gives."""
    if cfg.data.kind != "auto":
        return cfg.data.kind
    geometry = Geometry.of(cfg)
    if cfg.data.resize == "scale" and not cfg.data.scale:
        geometry = replace(geometry, scale=automatic_scale(cfg.model.image_size, sizes))
    kind = "object" if len({geometry.target(*size) for size in sizes}) == 1 else "texture"
    log.info("data.kind = %s: the training images %s", kind, "share one size" if kind == "object" else "differ in size")
    return kind


def resolve_image_size(cfg: Config) -> int:
    """model.image_size once data.kind is known: data.texture_image_size for textures whose scale is
    chosen at fit (when set), else unchanged."""
    d = cfg.data
    if d.kind != "texture" or d.resize != "scale" or d.scale or not d.texture_image_size:
        return cfg.model.image_size
    log.info(
        "model.image_size = %d: the median short side for textures (data.texture_image_size)", d.texture_image_size
    )
    return d.texture_image_size


def resolve_fixed_size(cfg: Config, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(data.height, data.width): for objects resized by scale, the training images' one size, so that
    every image scored later is resized to it and meets the per-pixel statistics; else (0, 0)."""
    if cfg.data.kind != "object" or cfg.data.resize != "scale":
        return 0, 0
    targets = {Geometry.of(cfg).target(*size) for size in sizes}
    if len(targets) != 1:
        return 0, 0  # calibration refuses per-pixel statistics of several sizes, naming them
    return targets.pop()


def resolve_position(cfg: Config) -> tuple[str, int]:
    """(model.position, model.position_table) once data.kind and the fixed size are known.

    auto: global positions for objects (every image at one size: each patch of the grid has its
    own place on the object), local for textures. A global table holds one row per patch of the one size.
    """
    m, d = cfg.model, cfg.data
    if m.position == "auto":  # a window turned by any angle has no grid positions to follow
        position = "global" if d.kind == "object" and cfg.train.rotation != "any" else "local"
    else:
        position = m.position
    if position == "local":
        return position, 0
    if d.resize == "square":
        return position, m.grid * m.grid
    if not (d.height and d.width):
        raise IntraError(
            "model.position = global needs the training images at one size: they differ here "
            "(use model.position = local, or data.resize = square)"
        )
    return position, (d.height // m.patch_size) * (d.width // m.patch_size)


def resolve_cover_spacing(cfg: Config) -> tuple[int, int]:
    """(train.cover_spacing, score.cover_spacing) once data.kind is known: for textures trained on a lattice,
    both become train.texture_cover_spacing (when set), so that the network is read with the lattice it learned."""
    t, s = cfg.train, cfg.score
    if cfg.data.kind != "texture" or not (t.texture_cover_spacing and t.cover_spacing):
        return t.cover_spacing, s.cover_spacing
    log.info("train.cover_spacing = score.cover_spacing = %d: the lattice for textures", t.texture_cover_spacing)
    return t.texture_cover_spacing, t.texture_cover_spacing


def resolve_geometry(cfg: Config, sizes: list[tuple[int, int]]) -> None:
    """Every fit-time geometry choice of `cfg` (a copy the caller owns) from the training images' sizes,
    in order: the kind, the image size, the scale, the one size of objects, positions, the lattice."""
    cfg.data.kind = resolve_kind(cfg, sizes)
    cfg.model.image_size = resolve_image_size(cfg)
    cfg.data.scale = resolve_scale(cfg, sizes)
    cfg.data.height, cfg.data.width = resolve_fixed_size(cfg, sizes)
    cfg.model.position, cfg.model.position_table = resolve_position(cfg)
    cfg.train.cover_spacing, cfg.score.cover_spacing = resolve_cover_spacing(cfg)

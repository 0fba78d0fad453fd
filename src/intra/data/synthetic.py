"""Small synthetic defect datasets in MVTec AD layout, made by code (no downloads): demo and tests.

Two sets, each written by one function in the same layout (ROOT/train/good, ROOT/test/good,
ROOT/test/<kind>, ROOT/ground_truth/<kind>/<stem>_mask.png with 0/255 masks):

`make_dataset`, a texture. Normal images are a woven surface: two orthogonal sinusoidal gratings
(warp and weft, period 8 px) with per-image random phase and a tiny angle jitter, a gentle
illumination slope, a colour tint and sensor noise. Defects:
  scratch  a thin bright or dark line,
  spot     a dark blob with a soft edge,
  smudge   a patch where the ridges are washed out to a flat colour.

`make_object_dataset`, an aligned object. Normal images show one machined metal cap seen from
above, centred on a dark blue-grey mat: a bevelled outer rim lit from one side, a flat face with
an engraved groove ring, six bolt holes, a raised boss around a central through-hole (the holes
show the mat) and a red printed bar that fixes the orientation. Every image shows the same cap at
nearly the same place; the nuisances are a pose jitter (a shift of up to 3 px at 128 px, in
proportion at other sizes, and a rotation of up to 5 degrees), the light (gain, offset, a gentle
gradient, the direction of the rim's highlight), a colour tint and sensor noise. Defects, each
with the mask of the pixels it changed by more than one grey level (`object_sample` also returns
the same image without the defect):
  scratch    a thin (1-2 px) bright or dark line on the metal,
  spot       a small dark blob on the metal, 3-6 px across (and in proportion above 128 px),
  missing    a chunk broken off the rim, showing the mat,
  stain      a faint brownish discolouration of the metal (3-6 % of its intensity),
  misplaced  a structural defect: one bolt hole drilled off its place on the ring, or the printed
             bar turned away from its angle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

DEFECT_KINDS = ("scratch", "spot", "smudge")
OBJECT_DEFECT_KINDS = ("scratch", "spot", "missing", "stain", "misplaced")


def texture(rng: np.random.Generator, size: int, period: float = 8.0) -> np.ndarray:
    """One defect-free image: (size, size, 3) float in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    gray = np.full((size, size), 0.5)
    for direction, amplitude in ((0.0, 0.16), (np.pi / 2, 0.10)):  # warp and weft threads
        angle = direction + rng.normal(0, 0.01)
        phase = rng.uniform(0, 2 * np.pi)
        gray += amplitude * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    slope = rng.normal(0, 0.05, 2)
    gray += (slope[0] * x + slope[1] * y) / size  # gentle illumination gradient
    tint = np.array([0.85, 0.7, 0.5]) + rng.normal(0, 0.02, 3)
    rgb = gray[..., None] * tint * 1.3 + rng.normal(0, 0.015, (size, size, 3))
    return np.clip(rgb, 0, 1)


def _ellipse(size: int, centre: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    """Squared elliptic distance from centre, (size, size): 1 on the ellipse."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - centre[0], y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2


def _line(size: int, centre: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """Anti-aliased coverage (size, size) of a straight line segment."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    along = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
    across = -(x - centre[0]) * np.sin(angle) + (y - centre[1]) * np.cos(angle)
    return np.clip(width + 0.5 - np.abs(across), 0, 1) * (np.abs(along) < length / 2)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one texture defect of `kind` into a copy of image -> (image, mask (size, size) bool)."""
    size = image.shape[0]
    centre = rng.uniform(0.2 * size, 0.8 * size, 2)
    angle = rng.uniform(0, np.pi)
    out = image.copy()
    if kind == "scratch":
        length, width = rng.uniform(0.1, 0.3) * size, rng.uniform(0.6, 1.4)
        alpha = _line(size, centre, angle, length, width) * rng.uniform(0.4, 0.8)
        value = 0.95 if rng.random() < 0.5 else 0.05
        out = out * (1 - alpha[..., None]) + value * alpha[..., None]
    elif kind == "spot":
        d = _ellipse(size, centre, rng.uniform(0.02, 0.05, 2) * size, angle)
        alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.3, 0.6)
        out = out * (1 - alpha[..., None]) + 0.08 * alpha[..., None]
    elif kind == "smudge":
        d = _ellipse(size, centre, rng.uniform(0.04, 0.08, 2) * size, angle)
        alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.5, 0.9)
        flat = image.reshape(-1, 3).mean(0) * rng.uniform(0.9, 1.15)
        out = out * (1 - alpha[..., None]) + flat * alpha[..., None]
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return np.clip(out, 0, 1), alpha > 0.25


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)


def _write_layout(
    root: Path,
    normal: Callable[[], np.ndarray],
    defective: Callable[[str], tuple[np.ndarray, np.ndarray]],
    kinds: tuple[str, ...],
    train: int,
    test_good: int,
    per_defect: int,
) -> Path:
    """Write normal() and defective(kind) images (and masks) in MVTec layout, in this order; returns root."""
    for split, count in (("train", train), ("test", test_good)):
        for i in range(count):
            _save(normal(), root / split / "good" / f"{i:03d}.png")
    for kind in kinds:
        for i in range(per_defect):
            image, mask = defective(kind)
            _save(image, root / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(np.float64), root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


def make_dataset(
    root: str | Path, size: int = 128, train: int = 80, test_good: int = 20, per_defect: int = 12, seed: int = 0
) -> Path:
    """Write the texture dataset under root (MVTec layout); returns root."""
    rng = np.random.default_rng(seed)
    return _write_layout(
        Path(root),
        lambda: texture(rng, size),
        lambda kind: add_defect(texture(rng, size), kind, rng),
        DEFECT_KINDS,
        train,
        test_good,
        per_defect,
    )


# The aligned object: a machined cap. Lengths are fractions of the image side, angles in radians.
RIM_OUTER, RIM_INNER = 0.38, 0.33
GROOVE, GROOVE_HALF_WIDTH = 0.24, 0.008
BOLT_RING, BOLT_RADIUS, BOLTS = 0.285, 0.03, 6
BOSS, HOLE = 0.12, 0.06
MARK_FROM, MARK_TO, MARK_HALF_WIDTH = 0.14, 0.21, 0.018
MAT = np.array([0.16, 0.19, 0.24])
METAL = np.array([0.58, 0.58, 0.60])
GROOVE_COLOUR = np.array([0.30, 0.30, 0.32])
BOSS_COLOUR = np.array([0.80, 0.80, 0.82])
PRINT_COLOUR = np.array([0.75, 0.20, 0.12])
STAIN_TINT = np.array([0.5, 1.0, 1.5])  # brownish: takes most from blue; mean 1
NOISE = 0.012
GREY_LEVEL = 1 / 255  # a mask holds the pixels a defect changed by more than this


@dataclass(frozen=True)
class Layout:
    """Where the cap's features are, in its own frame: what a structural defect changes."""

    bolts: tuple[float, ...] = tuple(2 * np.pi * k / BOLTS for k in range(BOLTS))  # bolt-hole angles
    mark: float = -np.pi / 2  # the printed bar points up
    bite: tuple[float, float, float] | None = None  # a chunk broken off: (u, v, radius), fractions of the side


@dataclass(frozen=True)
class Pose:
    """The nuisances of one image: placement (px, radians) and light."""

    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    angle: float = 0.0
    gain: float = 1.0
    offset: float = 0.0
    slope: np.ndarray = field(default_factory=lambda: np.zeros(2))  # relative gain change across the image, x and y
    tint: np.ndarray = field(default_factory=lambda: np.ones(3))
    light: float = -0.75 * np.pi  # where the rim's highlight faces (image frame): the upper left


def draw_pose(rng: np.random.Generator, size: int) -> Pose:
    """A random pose: shift up to 3 px (at 128 px), rotation up to 5 degrees, light and tint jitter."""
    return Pose(
        shift=np.clip(rng.normal(0, 1.2, 2), -3, 3) * size / 128,
        angle=float(np.deg2rad(np.clip(rng.normal(0, 2.0), -5, 5))),
        gain=float(rng.normal(1, 0.06)),
        offset=float(rng.normal(0, 0.015)),
        slope=rng.normal(0, 0.08, 2),
        tint=1 + rng.normal(0, 0.025, 3),
        light=float(rng.normal(-0.75 * np.pi, 0.15)),
    )


def _cover(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the region where a signed distance (px) is negative."""
    return np.clip(0.5 - distance, 0, 1)


def _mix(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return image * (1 - alpha[..., None]) + colour * alpha[..., None]


def render_object(size: int, pose: Pose, layout: Layout = Layout()) -> tuple[np.ndarray, np.ndarray]:
    """The cap's colours before light and noise -> (albedo (size, size, 3), metal coverage (size, size))."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - (size - 1) / 2 - pose.shift[0], y - (size - 1) / 2 - pose.shift[1]
    u = dx * np.cos(pose.angle) + dy * np.sin(pose.angle)  # the cap's own frame (px)
    v = -dx * np.sin(pose.angle) + dy * np.cos(pose.angle)
    r, side = np.hypot(u, v), float(size)
    # The rim is a bevel: bright at its inner edge, darker outwards, with a highlight towards the light.
    bevel = np.clip((r / side - RIM_INNER) / (RIM_OUTER - RIM_INNER), 0, 1)
    shade = 1.3 - 0.5 * bevel + 0.2 * np.cos(np.arctan2(dy, dx) - pose.light)
    body = _cover(r - RIM_OUTER * side)
    image = _mix(np.broadcast_to(MAT, (size, size, 3)), METAL * shade[..., None], body)
    image = _mix(image, METAL, _cover(r - RIM_INNER * side))
    image = _mix(image, GROOVE_COLOUR, _cover(np.abs(r - GROOVE * side) - GROOVE_HALF_WIDTH * side))
    image = _mix(image, BOSS_COLOUR, _cover(r - BOSS * side))
    along = u * np.cos(layout.mark) + v * np.sin(layout.mark)
    across = -u * np.sin(layout.mark) + v * np.cos(layout.mark)
    middle, half = (MARK_FROM + MARK_TO) / 2 * side, (MARK_TO - MARK_FROM) / 2 * side
    bar = np.maximum(np.abs(along - middle) - half, np.abs(across) - MARK_HALF_WIDTH * side)
    image = _mix(image, PRINT_COLOUR, _cover(bar))
    through = _cover(r - HOLE * side)  # where the mat shows through the cap
    for angle in layout.bolts:
        centre = BOLT_RING * side * np.array([np.cos(angle), np.sin(angle)])
        through = np.maximum(through, _cover(np.hypot(u - centre[0], v - centre[1]) - BOLT_RADIUS * side))
    if layout.bite is not None:
        bu, bv, radius = (value * side for value in layout.bite)
        through = np.maximum(through, _cover(np.hypot(u - bu, v - bv) - radius))
    return _mix(image, MAT, through), body * (1 - through)


def _light(albedo: np.ndarray, pose: Pose) -> np.ndarray:
    """Gain with a gentle gradient, tint and offset: the image before noise."""
    size = albedo.shape[0]
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    gain = pose.gain * (1 + pose.slope[0] * x + pose.slope[1] * y)
    return albedo * gain[..., None] * pose.tint + pose.offset


def _on_metal(rng: np.random.Generator, metal: np.ndarray, low: float, high: float) -> np.ndarray:
    """A random point (x, y) on the cap's metal, low to high (fractions of the side) from the image centre."""
    size = metal.shape[0]
    while True:  # most draws land on metal: the cap fills the disk but for its holes
        radius, angle = rng.uniform(low, high) * size, rng.uniform(0, 2 * np.pi)
        point = (size - 1) / 2 + radius * np.array([np.cos(angle), np.sin(angle)])
        if metal[int(round(point[1])), int(round(point[0]))] > 0.99:
            return point


def _surface_defect(
    kind: str, albedo: np.ndarray, metal: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a scratch, spot or stain on the metal -> (albedo, where it covers at least half a pixel)."""
    size, scale = albedo.shape[0], albedo.shape[0] / 128
    angle = rng.uniform(0, np.pi)
    if kind == "scratch":  # thin: the coverage is half at width / 2 from the line's axis
        centre = _on_metal(rng, metal, 0.08, 0.30)
        length, width = rng.uniform(0.08, 0.2) * size, rng.uniform(1.0, 2.0)
        cover = _line(size, centre, angle, length, width / 2) * metal
        value = 0.95 if rng.random() < 0.5 else 0.12
        return _mix(albedo, np.full(3, value), cover * rng.uniform(0.6, 0.9)), cover > 0.5
    if kind == "spot":
        centre, diameter = _on_metal(rng, metal, 0.05, 0.36), rng.uniform(3, 6) * max(scale, 1.0)
        cover = np.clip(1.5 - _ellipse(size, centre, diameter / 2 * rng.uniform(0.8, 1.2, 2), angle), 0, 1) * metal
        return _mix(albedo, np.array([0.10, 0.08, 0.06]), cover * rng.uniform(0.7, 0.95)), cover > 0.5
    if kind == "stain":  # faint and soft-edged: a few percent of the intensity
        centre, radii = _on_metal(rng, metal, 0.10, 0.28), rng.uniform(0.05, 0.09, 2) * size
        cover = np.clip((1.6 - _ellipse(size, centre, radii, angle)) / 1.2, 0, 1) * metal
        strength = rng.uniform(0.03, 0.06)
        return albedo * (1 - strength * cover[..., None] * STAIN_TINT), cover > 0.5
    raise ValueError(f"unknown defect kind {kind!r}")


def _structural_defect(kind: str, layout: Layout, rng: np.random.Generator) -> Layout:
    """The layout with a chunk missing from the rim, or one feature out of its place."""
    if kind == "missing":
        at, angle = rng.uniform(0.34, 0.40), rng.uniform(0, 2 * np.pi)
        return replace(layout, bite=(at * np.cos(angle), at * np.sin(angle), rng.uniform(0.05, 0.09)))
    turn = rng.choice([-1.0, 1.0])
    if rng.random() < 0.5:  # a bolt hole drilled off its place, between its neighbours
        k, bolts = int(rng.integers(BOLTS)), list(layout.bolts)
        bolts[k] += turn * np.deg2rad(rng.uniform(12, 25))
        return replace(layout, bolts=tuple(bolts))
    return replace(layout, mark=layout.mark + turn * np.deg2rad(rng.uniform(15, 40)))


def object_sample(
    rng: np.random.Generator, size: int, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cap image -> (clean, image, mask): (size, size, 3) floats in [0, 1] twice, (size, size) bool.

    `image` has a defect of `kind` (None: none, the mask is empty); `clean` is the same image
    (pose, light, noise) without it, and the mask holds the pixels the defect changed by more
    than one grey level.
    """
    if kind is not None and kind not in OBJECT_DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}")
    pose, layout = draw_pose(rng, size), Layout()
    albedo, metal = render_object(size, pose, layout)
    clean = _light(albedo, pose)
    noise = rng.normal(0, NOISE, clean.shape)
    image, support = clean, np.zeros((size, size), dtype=bool)
    if kind in ("missing", "misplaced"):
        image = _light(render_object(size, pose, _structural_defect(kind, layout, rng))[0], pose)
        support = np.ones((size, size), dtype=bool)
    elif kind is not None:
        painted, support = _surface_defect(kind, albedo, metal, rng)
        image = _light(painted, pose)
    mask = support & (np.abs(image - clean).max(axis=-1) > GREY_LEVEL)
    return np.clip(clean + noise, 0, 1), np.clip(image + noise, 0, 1), mask


def make_object_dataset(
    root: str | Path, size: int = 128, train: int = 80, test_good: int = 20, per_defect: int = 12, seed: int = 0
) -> Path:
    """Write the aligned-object dataset under root (MVTec layout); returns root."""
    rng = np.random.default_rng(seed)
    return _write_layout(
        Path(root),
        lambda: object_sample(rng, size)[1],
        lambda kind: object_sample(rng, size, kind)[1:],
        OBJECT_DEFECT_KINDS,
        train,
        test_good,
        per_defect,
    )

"""Reading one image or mask file into a tensor with values in [0, 1].

Images may be png, jpg, jpeg, bmp, tif or tiff, grayscale or colour, 8 or 16 bit; they are turned
upright by their EXIF orientation, converted to the configured colour (gray or RGB) and resized
bilinearly to the model's size; masks are resized with nearest neighbour. Refused, by name:
files that cannot be decoded, images under MIN_SIDE px per side, images over MAX_PIXELS pixels
(from the header, before decoding), and multi-frame files (multi-page TIFF, animated PNG). Every
failure is an IntraError naming the file. This module knows nothing of the network.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import IntraError
from .geometry import Geometry

log = logging.getLogger(__name__)

# Smaller images hold no texture to inpaint: they are thumbnails or broken exports, refused by name.
MIN_SIDE = 16
# The pixel budget: a larger image is refused from its header, before it is decoded. Decoding and
# resizing cost about 30 bytes per pixel at once (docs/predict-memory.md measures the largest
# accepted image), so this budget bounds one image's peak memory near 1.5 GB.
MAX_PIXELS = 50_000_000
# Formats whose extra frames are other images (pages, animation frames): refused rather than
# silently reduced to the first frame. JPEG files from cameras (MPO) carry a preview as a second
# frame: their first frame is the photograph and is used.
_MULTI_FRAME_FORMATS = ("TIFF", "PNG", "GIF", "WEBP")
_ORIENTATION = 0x0112  # EXIF tag; values 5 to 8 swap width and height
_BITS = "intra.bits"  # image.info key: bits per sample of the file, for 16-bit images (see _to_array)


class ImageTooLarge(IntraError):
    """An image over the pixel budget (or Pillow's decompression-bomb limit), refused from its header.

    A subclass so that a service can answer it apart from unreadable files (`intra serve`: 413)."""


def _header(path: Path) -> Image.Image:
    """Open an image file without decoding it, refusing what must not be decoded: a missing file,
    more than MAX_PIXELS pixels (Pillow's own decompression-bomb check included), several frames."""
    if not path.is_file():
        raise IntraError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by name
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image {path} is too large: {exc} (intra reads at most {MAX_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise IntraError(f"cannot read image {path}: {exc}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageTooLarge(
            f"image {path} is {width}x{height} px = {width * height:,} pixels: more than the budget of "
            f"{MAX_PIXELS:,} pixels (downscale it first)"
        )
    try:
        frames = getattr(image, "n_frames", 1) if image.format in _MULTI_FRAME_FORMATS else 1
    except (OSError, SyntaxError, ValueError) as exc:
        image.close()
        raise IntraError(f"cannot read image {path}: {exc}") from None
    if frames > 1:
        image.close()
        raise IntraError(
            f"image {path} holds {frames} frames (a multi-page or animated {image.format}): "
            "intra reads single images; save each frame as its own file"
        )
    return image


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image, upright (its EXIF orientation applied), turning every failure
    into an IntraError naming the file."""
    image = _header(path)
    try:
        bits = _bits_per_sample(image, path)
        image.load()  # decode now: truncated files fail here, not later
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)  # camera JPEGs: the pixels as the camera was held
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise IntraError(f"cannot read image {path}: {exc}") from None
    image.info[_BITS] = bits
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as intra reads it (EXIF orientation applied), from its header only."""
    path = Path(path)
    with _header(path) as image:
        try:
            orientation = image.getexif().get(_ORIENTATION, 1)
        except (OSError, SyntaxError, ValueError):
            orientation = 1
        width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _bits_per_sample(image: Image.Image, path: Path) -> int:
    """Bits per sample that the file declares (PNG header, TIFF BitsPerSample), not guessed from the pixels."""
    if image.format == "PNG":
        with open(path, "rb") as file:
            header = file.read(25)  # signature (8), IHDR length and type (8), width, height (8), bit depth
        return header[24] if len(header) == 25 else 8
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, 8)  # BitsPerSample
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 16 if image.mode.startswith("I") else 8


def _to_array(image: Image.Image, color: str) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W, C) in [0, 1], C = 1 for "gray", 3 for "rgb".

    16-bit images are divided by 65535 and 8-bit ones by 255, as the file's bit depth says (an
    integer image of mode "I" from a 16-bit PNG or TIFF is 16-bit even when all its pixels are dark).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        deep = image.mode.startswith("I;16") or image.info.get(_BITS, 16) > 8
        array = np.clip(array / (65535.0 if deep else 255.0), 0, 1)[..., None]
        return array if color == "gray" else np.repeat(array, 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        name = getattr(image, "filename", "")
        if not np.isfinite(array).all():
            raise IntraError(f"image {name} holds NaN or infinite values")
        # Floating-point files have no declared range: read as [0, 1] (rounding slack clipped); any other
        # range (0..255, 0..65535, physical units) would be clipped to white, so it is refused.
        if array.min() < -1e-3 or array.max() > 1 + 1e-3:
            raise IntraError(
                f"image {name} holds floating-point values from {array.min():g} to {array.max():g}: "
                "intra reads float images as [0, 1]; rescale it or save it as 8- or 16-bit"
            )
        array = np.clip(array, 0, 1)[..., None]
        return array if color == "gray" else np.repeat(array, 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")  # drop alpha: colour where transparent is kept as is
    target = "L" if color == "gray" else "RGB"
    array = np.asarray(image.convert(target), dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def is_gray(path: Path) -> bool:
    """True if the file is a one-channel image, or colour with three equal channels."""
    image = _open(path)
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return True
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode != "RGB":
        return False
    rgb = np.asarray(image.reduce(max(1, min(image.size) // 64)), dtype=np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 2 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 2)


def resolve_color(color: str, paths: list[Path]) -> str:
    """'auto' -> 'gray' if every one of (up to 50 of) the training images is gray, else 'rgb'."""
    if color != "auto":
        return color
    step = max(1, len(paths) // 50)
    return "gray" if all(is_gray(p) for p in paths[::step]) else "rgb"


def load_image(path: str | Path, size: int | Geometry, color: str) -> torch.Tensor:
    """Read, convert and resize one image -> (C, h, w) float32 in [0, 1].

    `size` an int: size x size; a `geometry.Geometry`: the size it gives this image.
    """
    path = Path(path)
    image = _open(path)
    if min(image.size) < MIN_SIDE:
        raise IntraError(
            f"image {path} is {image.size[0]}x{image.size[1]} px: too small (at least {MIN_SIDE} px per side)"
        )
    return _resized(_to_array(image, color), size)


def _resized(array: np.ndarray, size: int | Geometry) -> torch.Tensor:
    """(H, W, C) float array -> (C, h, w) tensor at the size `size` gives it (bilinear, antialiased)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]  # (1, C, H, W)
    height, width = tensor.shape[-2:]
    target = (size, size) if isinstance(size, int) else size.target(width, height)
    if tensor.shape[-2:] != target:
        tensor = torch.nn.functional.interpolate(
            tensor, size=target, mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0, 1)
    return tensor[0]


def image_input(image, size: int | Geometry, color: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Any image a user holds -> ((C, h, w) tensor as the model scores it, its own (width, height)).

    `image`: a path, a PIL image, or a numpy array (H, W) or (H, W, C) with C = 1, 3 or 4 (alpha is
    dropped), of dtype bool, uint8 (0-255), uint16 (0-65535) or float (values in [0, 1]).
    """
    if isinstance(image, (str, Path)):
        tensor = load_image(image, size, color)
        with Image.open(image) as opened:
            return tensor, ImageOps.exif_transpose(opened).size
    if isinstance(image, Image.Image):
        return _resized(_to_array(image, color), size), image.size
    if isinstance(image, np.ndarray):
        array = _array_to_float(image)
        return _resized(_convert_color(array, color), size), (array.shape[1], array.shape[0])
    raise IntraError(f"cannot read an image from a {type(image).__name__}: give a path, a PIL image or a numpy array")


def _array_to_float(array: np.ndarray) -> np.ndarray:
    """A numpy image (H, W) or (H, W, C) -> float32 (H, W, C) in [0, 1], alpha dropped; IntraError if it is not one."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < MIN_SIDE:
        raise IntraError(
            f"an image array must be (H, W) or (H, W, 1, 3 or 4) with sides >= {MIN_SIDE}, not {array.shape}"
        )
    array = array[..., :3] if array.shape[2] == 4 else array
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise IntraError("a float image array must hold finite values in [0, 1]")
        return array.astype(np.float32)
    raise IntraError(f"an image array must be bool, uint8, uint16 or float, not {array.dtype}")


def _convert_color(array: np.ndarray, color: str) -> np.ndarray:
    """(H, W, 1 or 3) -> (H, W, 1) for "gray" (ITU-R 601 luma, as Pillow's "L") or (H, W, 3) for "rgb"."""
    if color == "gray":
        return array if array.shape[2] == 1 else (array @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def load_mask(path: str | Path, size: int | tuple[int, int]) -> torch.Tensor:
    """Read a binary ground-truth mask (0 normal, one other value defect), nearest resize -> (h, w) bool.

    `size` an int: size x size; a tuple: (height, width).

    A mask with more levels (a JPEG-compressed or smoothly resized mask) is refused: which grey
    counts as a defect would be a guess.
    """
    path = Path(path)
    image = _open(path)
    if image.mode not in ("1", "L", "I", "I;16"):
        image = image.convert("L")
    values = np.unique(np.asarray(image))
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise IntraError(f"mask {path} is not binary: it holds {len(values)} values ({shown}); expected 0 and 255")
    binary = Image.fromarray((np.asarray(image) > 0).astype(np.uint8) * 255)
    height, width = (size, size) if isinstance(size, int) else size
    return torch.from_numpy(np.asarray(binary.resize((width, height), Image.NEAREST)) > 0)


def load_images(paths: list[Path], size: int | Geometry, color: str, threads: int = 0) -> list[torch.Tensor]:
    """Load many images in parallel (decoding releases the GIL) -> a list of (C, h, w), in order.

    threads: decoding threads (train.threads or --threads); 0 = one per CPU, at most 8.
    The first unreadable file raises its IntraError.
    """
    results = try_load_images(paths, size, color, threads)
    for result in results:
        if isinstance(result, IntraError):
            raise result
    return results


def try_load_images(
    paths: list[Path], size: int | Geometry, color: str, threads: int = 0
) -> list[torch.Tensor | IntraError]:
    """Like load_images, but one result per path: its (C, h, w) tensor, or the IntraError saying why not."""

    def one(path: Path) -> torch.Tensor | IntraError:
        try:
            return load_image(path, size, color)
        except IntraError as exc:
            return exc

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        return list(pool.map(one, paths))


def standardize(images: torch.Tensor, mean: float = 0.5, std: float = 0.1) -> torch.Tensor:
    """Per-image standardisation (data.standardize): (B, C, H, W) -> (B, C, H, W), or one image (C, H, W).

    Each image is shifted and scaled to the given mean and standard deviation over all its pixels
    and channels (colour balance is kept). Values are not clipped to [0, 1].
    """
    if images.dim() == 3:
        return standardize(images[None], mean, std)[0]
    flat = images.flatten(1)
    centre, spread = flat.mean(1), flat.std(1).clamp_min(1e-4)
    return (images - centre[:, None, None, None]) / spread[:, None, None, None] * std + mean

"""Configuration: one set of dataclasses drives the model, training and scoring.

A `Config` is built from a preset, then a config file, then command-line overrides, and the
resolved result is written into every run folder and checkpoint, so that a checkpoint alone
rebuilds the model. Every **[choice]** of `shared/docs/intra-method.md` is a field here with the
specification's default; the `paper` preset is the paper, the `cpu` preset is our small model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IntraError


@dataclass
class ModelConfig:
    """The inpainting network and the image geometry it was built for."""

    # Pixels: with data.resize = "square" every image is resized (bilinear) to image_size x image_size;
    # with "scale", the default scale brings the median training image's short side to image_size.
    image_size: int = 256
    channels: int = 3  # C: 1 (grayscale) or 3 (RGB); resolved from DataConfig.color at fit time
    patch_size: int = 16  # K
    window: int = 7  # L: the window is L x L patches
    dim: int = 512  # D
    depth: int = 13  # n blocks
    heads: int = 8  # h
    mlp_ratio: float = 4.0  # feed-forward width = mlp_ratio * D
    attention: str = "mfsa"  # [choice] "mfsa" (MLP queries/keys) or "msa" (standard linear q, k, v)
    # The MLPs' activation: "gelu" (the paper, exact erf form) or, beyond the paper, "relu", which costs
    # an AVX2 CPU a sixth of GELU's time (docs/benchmarks.md, "ReLU in the cpu preset").
    activation: str = "gelu"
    # [choice] "local" (L*L table), "global" (M*N table) or "auto" (beyond the paper: global for
    # objects, local for textures, resolved at fit from data.kind).
    position: str = "local"
    position_table: int = 0  # global positions: rows of the table, M*N of the one training size (set at fit)
    long_skips: bool = True  # [choice] symmetric U-Net-like skips: block i feeds block n+1-i
    head: str = "mean"  # [choice] "mean" of all tokens or the "covered" token's own output
    normalize_input: bool = True  # standardise pixels with the training set's per-channel mean/std
    # [choice] beyond the paper: "none" (the head gives the pixels) or "smooth" (the head gives a
    # correction to the biharmonic fill of the covered patch from the window's pixels around it).
    base_fill: str = "none"

    @property
    def grid(self) -> int:
        """M = N: patches per image side."""
        return self.image_size // self.patch_size

    @property
    def patch_dim(self) -> int:
        """K*K*C: pixel values per patch."""
        return self.patch_size * self.patch_size * self.channels


@dataclass
class DataConfig:
    """How images are read."""

    color: str = "auto"  # "auto" (gray if 50 training images spread over the set are all gray), "gray" or "rgb"
    # [choice] image geometry. "square" (the paper): every image resized to model.image_size squared.
    # "scale" (beyond the paper): every image keeps its aspect ratio and is resized by one factor,
    # `scale`, the same for all images, so that a texture keeps one scale in pixels; each side is
    # rounded to a multiple of the patch size and at least a window wide. Grids are then M x N.
    resize: str = "square"
    scale: float = 0.0  # with resize = "scale": the factor; 0 = chosen at fit (median short side -> model.image_size)
    # Beyond the paper: with resize = "scale" and the scale chosen at fit, textures (kind, below) bring
    # their median short side to this many pixels instead of model.image_size (set at fit, logged);
    # 0 = model.image_size, and setting model.image_size without this key sets it to 0. Textures have
    # no grid of positions to learn, so a larger image costs only scoring time, and shrinking large
    # photographs less keeps small defects.
    texture_image_size: int = 0
    # [choice] what the anomaly-map statistics (mean, std of the training difference maps) depend on.
    # "object" (aligned objects of one size): every pixel position has its own; "texture": they depend
    # only on the distance to the image border (up to half a window and a patch), so images may differ
    # in size; "auto": object when every training image has the same size, else texture (logged).
    kind: str = "auto"
    # With kind = object and resize = scale: the one size (height, width) of the training images, set
    # at fit; every image is then resized to it, as "square" does (0 = not fixed).
    height: int = 0
    width: int = 0
    # Beyond the paper: give every image (training and test) the same mean and contrast, so that
    # brighter or more contrasted images do not score higher (see data.standardize).
    standardize: bool = False


@dataclass
class TrainConfig:
    """Training per paper section 4, plus the budget knobs a CPU needs."""

    windows_per_image: int = 600  # random windows drawn per training image per epoch
    batch_size: int = 256
    lr: float = 1e-4  # [choice] Adam learning rate
    max_epochs: int = 10_000
    patience: int = 50  # stop when the selection metric has not improved for this many epochs
    # [choice] what early stopping and the kept weights follow: "inpaint", the held-out images' pixel
    # error read as scoring reads them (evaluation/inpainting.py); "loss", the validation loss; or
    # "defects" (beyond the paper), how well the raw map of score.* outlines defects pasted into the
    # held-out images (data/defects.py; 1 - the mean of pixel AUROC and AUPRO, `val_defects_gap`).
    select: str = "inpaint"
    max_minutes: float = 0.0  # wall-clock budget for the training loop; 0 = none
    val_fraction: float = 0.1  # share of training images held out for validation ...
    val_max_images: int = 20  # ... at most this many
    val_windows_per_image: int = 64  # fixed validation windows per held-out image
    alpha: float = 0.01  # [choice] weight of the multi-scale GMS loss
    beta: float = 0.01  # [choice] weight of the SSIM loss
    flips: bool = True  # [choice] random horizontal and vertical flips of each window
    rotation: str = "rot90"  # [choice] "none", "rot90" (aligned objects) or "any" (textures)
    # Where training windows lie. "corner" (the paper): the window's corner uniform over the image,
    # so patches near the border are covered less often (the border row about a seventh as often as
    # the interior at L = 7) and learned from fewer examples. "patch" (beyond the paper): the covered
    # patch uniform over the image, then a window holding it (core/windows.py).
    window_placement: str = "corner"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    threads: int = 0  # torch CPU threads; 0 = one per physical core, as torch decides
    # Convergence knobs for short budgets (not in the paper; see optim.py). Defaults = the paper.
    optimizer: str = "adam"  # "adam" or "adamw" (decoupled weight decay)
    weight_decay: float = 0.0
    schedule: str = "constant"  # learning rate after warm-up: "constant", "cosine" or "linear" decay
    warmup: float = 0.0  # fraction of the training progress spent rising linearly to train.lr
    min_lr_ratio: float = 0.0  # final lr / train.lr for the cosine and linear schedules
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    # Beyond the paper: 0 = one covered patch per training window. s >= 2 covers every s-th patch
    # of the window in both axes (a lattice with a random phase) and trains on all of them at
    # once (core/windows.py). Needs model.head = "covered". score.cover_spacing reads the same lattice.
    cover_spacing: int = 0
    # Beyond the paper: for textures (data.kind = texture) this lattice replaces the lattice of
    # cover_spacing, in training and in scoring alike (set at fit, logged); 0 = the same as for objects.
    texture_cover_spacing: int = 0
    # "bf16": the network's forward and backward under bfloat16 autocast (loss in fp32); "auto": bf16
    # where the device computes it natively (AVX-512 BF16 or AMX CPUs, Ampere-on GPUs), else fp32,
    # resolved when training starts and written into the run's config.json.
    dtype: str = "fp32"
    compile: bool = False  # run the network through torch.compile (pays off on a GPU)
    sample_shards: int = 0  # random-window streams per global batch; 0 = one per process (see distributed.py)


@dataclass
class ScoreConfig:
    """Anomaly map and image score per paper section 5."""

    scales: tuple[float, ...] = (0.5, 0.25)  # GMS is computed at these fractions of the image size
    mean_filter: int = 21  # [choice] mean-filter side at full resolution, scaled with each scale
    gaussian_sigma: float = 4.0  # [choice] Gaussian sigma in full-resolution pixels, scaled likewise
    normalize: bool = True  # subtract the training mean difference map, then square
    # What is compared at each scale: "gms" (the paper: 1 - gradient magnitude similarity); beyond the
    # paper, "signed" (image minus reconstruction averaged over channels, smoothed while signed, then
    # its magnitude) or "both" (their sum). GMS misses brightness offsets without edges (faint
    # stains); see core/anomaly_map.py.
    difference: str = "gms"
    # The signed difference's weight against 1 - GMS: set by hand near the ratio of their means on the
    # development sets' training images, so that in "both" neither drowns the other.
    signed_weight: float = 6.0
    # [choice] "off": score as configured here; "auto" (beyond the paper): after training, keep the
    # named scorings (SCORINGS, below) that best find defects pasted into the validation images: one
    # for the anomaly map (from MAP_SCORINGS), one for the image score (from IMAGE_SCORINGS; inference/choice.py).
    choose: str = "off"
    zscore: bool = False  # beyond the paper: divide by the training per-pixel std instead of squaring
    # Beyond the paper: "" = the image score is the maximum of the anomaly map (the paper); a name of
    # SCORINGS = the maximum of that scoring's map, with its own training statistics, while the
    # anomaly map stays as configured above. Locating and detecting are best served differently.
    image_scoring: str = ""
    mean_map_images: int = 0  # training images averaged into the mean map: 0 = all, N = N evenly spaced
    # Beyond the paper: 0 = one pass per patch. s >= 2 inpaints a lattice of patches s apart per
    # pass (multicover.py): about (s * ceil(M / L))^2 passes instead of M * N. Needs head "covered".
    cover_spacing: int = 0
    chunk_windows: int = 2048  # windows per forward pass at inference, at most
    # Inference activation budget; chunks shrink to fit it (inference.window_bytes). 0 = automatic:
    # 160 MB on a CPU (the fastest chunks measured there: they stay near the caches), 4096 MB on a GPU.
    memory_mb: float = 0.0
    # Thresholds are calibrated after training on the held-out normal (validation) images only:
    # quantiles of their image scores and of their pixels, so no labelled anomaly is needed.
    image_threshold_quantile: float = 0.99
    pixel_threshold_quantile: float = 0.999
    # Beyond the paper: how the image threshold reads the validation scores' tail. "empirical": their
    # quantile as it stands, which a few images cannot resolve (from 8 images the 0.99 quantile is
    # about their maximum, exceeded by 1 normal image in 9); "gumbel": the larger of that and the
    # quantile of a Gumbel distribution (the law of maxima, and an image score is a map's maximum)
    # fitted to them by moments; "log-gumbel": the same fitted to their logarithms, for scores whose
    # tail is long (positive scores only); "auto": whichever of the two fits the scores more likely.
    # Calibrated on 8 normal images, the other good images of the synthetic objects (a long tail)
    # exceeded a 0.99 threshold 5.0 to 8.7 % of the time with "gumbel" and 1.9 to 5.5 % with "auto"
    # (five networks); on magnetic tile and ELPV "auto" stayed at or just under "gumbel"
    # (docs/benchmarks.md, "Image thresholds from few images" and "A Gumbel fit to the logarithms").
    image_threshold_tail: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        if not isinstance(data, dict):
            raise IntraError(f"a config is a mapping of sections, not a {type(data).__name__}")
        cfg = cls()
        apply_overrides(cfg, flatten(data))
        return cfg


def _cpu_preset() -> Config:
    # Sizes chosen by measurement on 2 CPU cores; see docs/benchmarks.md ("cpu preset").
    cfg = Config()
    cfg.model = ModelConfig(image_size=128, patch_size=8, window=7, dim=64, depth=5, heads=4, mlp_ratio=4.0)
    cfg.model.head = "covered"  # read the covered token itself: needed for several covered patches per window (below)
    # ReLU, not the paper's GELU: this torch build computes erf slowly on an AVX2 CPU (0.84 ns a value,
    # nine times a copy; benchmarks/activation_cost.py), and the MLPs hold 512 activations a token a block. Side by side in fp32 on 2 AVX2 cores, inference
    # 15.6 against 18.1 ms per image (medians, 8 images per call), and in the same 10 minutes the network
    # inpainted the synthetic objects better (0.39 and 0.79 against 0.52 and 1.10 of the better fill,
    # two seeds) and ranked and outlined them better; magnetic tile the same, ELPV within its seed spread
    # (docs/benchmarks.md, "ReLU in the cpu preset").
    cfg.model.activation = "relu"
    cfg.train.windows_per_image = 100
    # 64 windows a step (lr scaled by sqrt 2 from 32 at 1e-3), in bf16 where the CPU computes it
    # natively: on an AVX-512 BF16 CPU 1.91x f766024's windows per second against 1.41x in fp32, and
    # in the same 10 minutes the synthetic objects inpaint better (0.24 against 0.28 of the fill) and
    # magnetic tile about the same; in fp32, 64 at this lr trained like 32 (docs/benchmarks.md,
    # "bf16 training").
    cfg.train.batch_size = 64
    cfg.train.lr = 1.4e-3
    cfg.train.dtype = "auto"
    cfg.train.patience = 20
    cfg.train.max_minutes = 10.0
    # Short-budget training (beyond the paper; docs/benchmarks.md "Quality"): warm-up then cosine
    # decay over the time budget, clipped gradients, and a lattice of covered patches per window.
    cfg.train.schedule, cfg.train.warmup, cfg.train.grad_clip = "cosine", 0.05, 1.0
    # Every other patch of every other row (about 12 per window) for objects: twice the targets of
    # a lattice 3 apart at the same cost, and on the synthetic objects and ELPV the network then
    # inpaints about twice as well and ranks images better; on magnetic tile (a texture) the same
    # change ranked images worse (two seeds), so textures keep 3 apart (docs/benchmarks.md).
    cfg.train.cover_spacing, cfg.train.texture_cover_spacing = 2, 3
    cfg.train.rotation = "none"  # flips only: quarter turns made the small model's task harder in screening
    # Every patch a training target equally often (beyond the paper, whose windows cover the border
    # row about a seventh as often as the interior): in seven side-by-side pairs the network inpainted
    # better or as well on all three development sets, detected better on average on the synthetic
    # objects (three seeds) and magnetic tile (two), and within the seed spread on ELPV (-0.013 image
    # AUROC, two seeds) (docs/benchmarks.md, "Every patch a target").
    cfg.train.window_placement = "patch"
    cfg.data.resize = "scale"  # images keep their aspect ratio at one pixel scale (median short side 128 px)
    # Textures at 192 px: on magnetic tile (photographs up to 632 px, shrunk to scale 0.485 at 128 px)
    # image AUROC rose from 0.696-0.705 to 0.752-0.776 over three seeds, at 57 to 73 ms per image
    # (docs/benchmarks.md, "Magnetic tile at 192 px"). Objects stay at 128 px: their grid of
    # global positions would grow 2.25x in the same minutes.
    cfg.data.texture_image_size = 192
    # Global positions for objects (images of one size), local for textures: on the synthetic
    # objects the inpainting error after 6 epochs falls from 2.9x to 1.5x the smooth fill's.
    cfg.model.position = "auto"
    # Scoring that a small, briefly trained model needs: finer scales and filters keep thin
    # defects, and dividing by the training per-pixel std discounts regions it never learns well.
    cfg.score.scales = (1.0, 0.5)
    cfg.score.mean_filter, cfg.score.gaussian_sigma = 7, 2.0
    cfg.score.zscore = True
    cfg.score.choose = "auto"  # the scoring is chosen per dataset on synthetic defects (the line above is the fallback)
    # Read the lattice the network learned (beyond the paper): 36 passes per 128 px image at 2 apart,
    # 81 at 3 apart, instead of 256 (docs/benchmarks.md).
    cfg.score.cover_spacing = 2
    return cfg


PRESETS = {"paper": Config, "cpu": _cpu_preset}

# `intra bench` times training steps on a CPU with at most this many windows: the cpu preset's own
# batch; the paper's 256 windows of its large network would take minutes a timing there.
CPU_TRAIN_BATCH = 64

# Named scorings (score.* settings) that score.choose = auto picks from and score.image_scoring names:
# the paper's (scales 1/2 and 1/4, 21 px mean filter, sigma 4), a fine one that keeps thin defects
# (scales 1 and 1/2, 7 px, sigma 2) and one between; each as the paper normalises (minus the
# training mean map, squared), as z-scores against the training statistics, and raw (no statistics);
# and each again on 1 - GMS plus the signed difference ("-both", score.difference = "both").
_FILTERS = {
    "paper": {"scales": (0.5, 0.25), "mean_filter": 21, "gaussian_sigma": 4.0},
    "middle": {"scales": (1.0, 0.5, 0.25), "mean_filter": 11, "gaussian_sigma": 3.0},
    "fine": {"scales": (1.0, 0.5), "mean_filter": 7, "gaussian_sigma": 2.0},
}
_NORMALISATIONS = {
    "": {"normalize": True, "zscore": False},
    "-z": {"normalize": True, "zscore": True},
    "-raw": {"normalize": False, "zscore": False},
}
SCORINGS: dict[str, dict[str, Any]] = {
    f"{name}{difference}{suffix}": {**filters, **normalisation, "difference": kind}
    for difference, kind in (("", "gms"), ("-both", "both"))
    for name, filters in _FILTERS.items()
    for suffix, normalisation in _NORMALISATIONS.items()
}


# The scorings the anomaly map is chosen from (score.choose = auto): the raw ones on 1 - GMS plus the
# signed difference. On the pasted defects the normalised maps rank first, but on the real defects of
# both development sets (five runs, synthetic objects and magnetic tile) the raw maps outlined them
# better in every run, faint ones most (docs/benchmarks.md, "Raw anomaly maps"). A likely cause, not
# measured apart: squaring the deviation from the mean map also scores pixels inpainted better than
# usual, and z-scores magnify noise where normal images vary little; either buries a faint defect.
# Likewise the pasted defects favour 1 - GMS alone (their edges are sharp), while on the real ones
# adding the signed difference found the objects' faint stains and kept magnetic tile's pixel AUROC
# (docs/benchmarks.md, "The signed difference").
MAP_SCORINGS: tuple[str, ...] = tuple(
    name for name, settings in SCORINGS.items() if not settings["normalize"] and settings["difference"] == "both"
)
# The scorings the image score is chosen from: every normalisation of 1 - GMS plus the signed difference.
# For the same reason: chosen among all of SCORINGS, the pasted defects kept fine-z (1 - GMS alone) on
# magnetic tile and ELPV, which ranked their real defective images lower than fine-both-z (0.743
# against 0.771, 0.670 against 0.693; the pick among these, 0.771 and 0.701); on the synthetic objects
# the pick was fine-both-z either way (docs/benchmarks.md, "The image score with the signed difference").
IMAGE_SCORINGS: tuple[str, ...] = tuple(name for name, settings in SCORINGS.items() if settings["difference"] == "both")


def scoring(score: ScoreConfig, name: str) -> ScoreConfig:
    """A copy of `score` with the settings of SCORINGS[name] (and no image scoring of its own)."""
    return dataclasses.replace(score, **SCORINGS[name], image_scoring="")


def preset(name: str) -> Config:
    """A fresh Config for a named preset (`paper` or `cpu`)."""
    if name not in PRESETS:
        raise IntraError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"dim": 64}} -> {"model.dim": 64}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def apply_overrides(cfg: Config, overrides: dict[str, Any], check: bool = True) -> Config:
    """Set dotted keys ("train.lr") on cfg in place, checking names and types; then `validate` (unless check=False).

    check=False lets several sources (a config file, then flags) be merged before one validation:
    a file that is valid only together with the flags is accepted.
    """
    for key, value in overrides.items():
        section_name, _, name = str(key).partition(".")
        section = getattr(cfg, section_name, None)
        if not dataclasses.is_dataclass(section) or name not in {f.name for f in dataclasses.fields(section)}:
            raise IntraError(f"unknown config key {key!r}")
        setattr(section, name, _coerce(key, getattr(section, name), value))
    # An image size asked for is the size of every kind of data, unless the same overrides give
    # textures their own (a run's saved config holds both).
    if "model.image_size" in overrides and "data.texture_image_size" not in overrides:
        cfg.data.texture_image_size = 0
    if check:
        validate(cfg)
    return cfg


def with_score_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of cfg with score.* keys changed: the only settings that can change after training."""
    not_score = [key for key in overrides if not str(key).startswith("score.")]
    if not_score:
        raise IntraError(f"only score.* keys can change after training, not {', '.join(not_score)}")
    return apply_overrides(copy.deepcopy(cfg), overrides)


def reading_mismatch(cfg: Config) -> str:
    """Why reading the network with score.cover_spacing may go wrong ('' when it reads as it learned).

    A network trained on a lattice of covered patches (train.cover_spacing) learned that pattern of
    inpaint tokens; read with another, it meets windows it never saw. On the synthetic objects a
    network trained 2 apart and read 3 apart inpainted worse than the smooth fill (docs/benchmarks.md).
    """
    learned, read = cfg.train.cover_spacing, cfg.score.cover_spacing
    if not learned or read == learned:
        return ""
    return (
        f"score.cover_spacing {read} reads the network with another pattern of covered patches than the one "
        f"it learned (train.cover_spacing {learned}): expect worse reconstructions; the metrics' inpainting "
        "ratio tells"
    )


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert value to the type of the field's current value (str from the CLI, lists from JSON/YAML).

    Integer keys refuse fractions (YAML `dim: 16.7` is not silently 16), numeric keys refuse
    booleans, and a list of numbers may be written 0.5,0.25 or [0.5, 0.25].
    """
    if isinstance(current, tuple):
        return _coerce_numbers(key, value)
    try:
        if isinstance(current, bool):
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if isinstance(current, int):
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(value)  # an int, or text such as "16" (not "16.7")
        if isinstance(current, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(current, str):
            if isinstance(value, (dict, list, tuple)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError, OverflowError):
        kind = "an integer" if isinstance(current, int) and not isinstance(current, bool) else type(current).__name__
        raise IntraError(f"config key {key!r}: cannot read {value!r} as {kind}") from None
    return value


def _coerce_numbers(key: str, value: Any) -> tuple[float, ...]:
    """A tuple of floats from "0.5,0.25", "[0.5, 0.25]", a list or a single number."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] + text[-1:] in ("[]", "()"):
            text = text[1:-1]
        items: Any = [item.strip() for item in text.split(",")] if text.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        items = None
    try:
        if items is None or any(isinstance(v, (bool, list, tuple, dict)) for v in items):
            raise ValueError(value)
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise IntraError(
            f"config key {key!r}: cannot read {value!r} as a list of numbers; write it as 0.5,0.25"
        ) from None


_CHOICES = {
    ("model", "attention"): ("mfsa", "msa"),
    ("model", "activation"): ("gelu", "relu"),
    ("model", "position"): ("local", "global", "auto"),
    ("model", "head"): ("mean", "covered"),
    ("model", "base_fill"): ("none", "smooth"),
    ("data", "color"): ("auto", "gray", "rgb"),
    ("data", "resize"): ("square", "scale"),
    ("data", "kind"): ("auto", "object", "texture"),
    ("train", "rotation"): ("none", "rot90", "any"),
    ("train", "window_placement"): ("corner", "patch"),
    ("train", "select"): ("inpaint", "loss", "defects"),
    ("score", "choose"): ("off", "auto"),
    ("score", "image_threshold_tail"): ("empirical", "gumbel", "log-gumbel", "auto"),
    ("score", "difference"): ("gms", "signed", "both"),
    ("score", "image_scoring"): ("", *SCORINGS),
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "schedule"): ("constant", "cosine", "linear"),
    ("train", "dtype"): ("fp32", "bf16", "auto"),
}
# Ranges of numeric options (every numeric option must also be finite, see `validate`):
# "positive" > 0, "non-negative" >= 0, "fraction" in [0, 1), "share" in (0, 1), "quantile" in (0, 1].
_RANGES = {
    "positive": {
        "model": ("image_size", "patch_size", "window", "dim", "depth", "heads", "mlp_ratio"),
        "train": (
            "windows_per_image",
            "batch_size",
            "lr",
            "max_epochs",
            "patience",
            "val_max_images",
            "val_windows_per_image",
        ),
        "score": ("mean_filter", "gaussian_sigma", "chunk_windows", "signed_weight"),
    },
    "non-negative": {
        "train": ("max_minutes", "alpha", "beta", "threads", "sample_shards", "weight_decay", "grad_clip", "seed"),
        "score": ("mean_map_images", "cover_spacing", "memory_mb"),
        "data": ("texture_image_size",),
    },
    "fraction": {"train": ("warmup", "min_lr_ratio", "ema")},
    "share": {"train": ("val_fraction",)},
    "quantile": {"score": ("image_threshold_quantile", "pixel_threshold_quantile")},
}
_IN_RANGE = {
    "positive": (lambda v: v > 0, "positive"),
    "non-negative": (lambda v: v >= 0, "non-negative"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "share": (lambda v: 0 < v < 1, "between 0 and 1"),
    "quantile": (lambda v: 0 < v <= 1, "in (0, 1]"),
}
MAX_SEED = 2**32 - 1


def validate(cfg: Config) -> None:
    """Raise IntraError naming the first option with an impossible value.

    Every field must have its default's type, every number must be finite (no NaN or infinity),
    and within its range; the score filters must fit in the image at every scale. Score settings
    are checked here too, although they are used only after training: a bad one must not cost a
    whole training run.
    """
    _check_types(cfg)
    for (section, name), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            names = ", ".join(repr(a) if a == "" else a for a in allowed)
            raise IntraError(f"{section}.{name} must be one of {names}, not {value!r}")
    for kind, sections in _RANGES.items():
        ok, text = _IN_RANGE[kind]
        for section, names in sections.items():
            for name in names:
                value = getattr(getattr(cfg, section), name)
                if not ok(value):
                    raise IntraError(f"{section}.{name} must be {text}, not {value!r}")
    if cfg.train.seed > MAX_SEED:
        raise IntraError(f"train.seed must be at most {MAX_SEED}, not {cfg.train.seed}")
    m = cfg.model
    if m.channels not in (1, 3):
        raise IntraError(f"model.channels must be 1 or 3, not {m.channels}")
    if m.image_size % m.patch_size:
        raise IntraError(f"model.image_size ({m.image_size}) must be a multiple of model.patch_size ({m.patch_size})")
    if m.grid < m.window:
        raise IntraError(
            f"model.image_size {m.image_size} holds {m.grid} patches per side, fewer than model.window "
            f"({m.window}): images must be at least window*patch_size = {m.window * m.patch_size} px"
        )
    texture_size = cfg.data.texture_image_size
    if texture_size and (texture_size % m.patch_size or texture_size < m.window * m.patch_size):
        raise IntraError(
            f"data.texture_image_size ({texture_size}) must be 0 or a multiple of model.patch_size ({m.patch_size})"
            f" of at least window*patch_size = {m.window * m.patch_size} px"
        )
    if m.dim % m.heads or (m.attention == "mfsa" and (m.dim // 2) % m.heads):
        raise IntraError(f"model.dim ({m.dim}) must split evenly over model.heads ({m.heads}) (and D/2 for mfsa)")
    for key in ("train.cover_spacing", "train.texture_cover_spacing", "score.cover_spacing"):
        section, name = key.split(".")
        spacing = getattr(getattr(cfg, section), name)
        # The texture lattice only replaces a lattice (train.cover_spacing), which needs the covered head.
        head = m.head == "covered" or key == "train.texture_cover_spacing"
        if spacing and (spacing < 2 or spacing > m.window or not head):
            raise IntraError(
                f"{key} must be 0 or 2 to model.window ({m.window}) (with model.head = covered), not {spacing}"
            )
    _check_score_filters(cfg)
    if not cfg.data.scale >= 0 or cfg.data.scale > 16:
        raise IntraError(f"data.scale must be 0 (automatic) or a factor in (0, 16], not {cfg.data.scale}")
    for name in ("height", "width"):
        side = getattr(cfg.data, name)
        if side and (side < m.window * m.patch_size or side % m.patch_size):
            raise IntraError(
                f"data.{name} must be 0 or a multiple of model.patch_size of at least a window, not {side}"
            )
    one_size = cfg.data.resize == "square" or cfg.data.kind != "texture"  # auto: checked at fit, on the images
    if m.position == "global" and not one_size:
        raise IntraError(
            "model.position = global needs every image at one size and grid: set data.resize = square, "
            "or train on images of one size (data.kind = object)"
        )
    if cfg.train.window_placement == "patch" and cfg.train.rotation == "any":
        raise IntraError(
            "train.window_placement = patch cannot follow train.rotation = any (a window turned by any angle "
            "moves its covered patch off the grid): use rotation none or rot90, or the paper's placement with "
            "--set train.window_placement=corner (the cpu preset places by patch)"
        )
    if m.position == "global" and cfg.train.rotation == "any":
        raise IntraError(
            f"model.position = {m.position} cannot follow train.rotation = any (a window turned by any angle mixes "
            "patches): use rot90 or none"
        )


def _check_types(cfg: Config) -> None:
    """Every field holds its default's type (int fields an int, not a bool) and every number is finite."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        defaults = type(values)()
        for f in dataclasses.fields(values):
            key, value, default = f"{section.name}.{f.name}", getattr(values, f.name), getattr(defaults, f.name)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif isinstance(default, tuple):
                ok = isinstance(value, tuple) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
                )
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:
                continue
            if not ok:
                raise IntraError(f"{key} must be of type {type(default).__name__}, not {value!r}")
            numbers = value if isinstance(value, tuple) else (value,) if isinstance(value, float) else ()
            if not all(math.isfinite(v) for v in numbers):
                raise IntraError(f"{key} must be a finite number, not {value!r}")


def _check_score_filters(cfg: Config) -> None:
    """score.scales in (0, 1]; at every scale the mean filter and the Gaussian (radius 3 sigma) fit in the image."""
    s = cfg.score
    if not s.scales or any(not 0 < v <= 1 for v in s.scales):
        raise IntraError(f"score.scales must be fractions in (0, 1], not {','.join(map(str, s.scales)) or 'empty'}")
    for scale in s.scales:
        side = max(1, round(cfg.model.image_size * scale))  # the scaled image, as core.anomaly_map computes it
        mean_side = max(1, 2 * math.floor(s.mean_filter * scale / 2) + 1)  # core.anomaly_map.odd_size
        if mean_side > side:
            raise IntraError(
                f"score.mean_filter {s.mean_filter} is too large: at scale {scale} it is {mean_side} px wide, "
                f"more than the {side} px image (model.image_size {cfg.model.image_size})"
            )
        if math.ceil(3 * s.gaussian_sigma * scale) > side:
            raise IntraError(
                f"score.gaussian_sigma {s.gaussian_sigma} is too large: at scale {scale} its radius "
                f"{math.ceil(3 * s.gaussian_sigma * scale)} px exceeds the {side} px image (model.image_size {cfg.model.image_size})"
            )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Nested dict from a .json, .toml or .yaml file; every failure is a one-line IntraError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise IntraError(f"config file not found: {path}")
    if path.suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise IntraError(f"{path}: config files must be .json, .toml or .yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IntraError(f"cannot read config file {path}: {_one_line(exc)}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = _toml().loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
            data = {} if data is None else data
    except ImportError as exc:
        raise IntraError(f"{path}: reading {path.suffix} files needs the {exc.name} package") from None
    except Exception as exc:  # parse errors of any of the three formats, YAML tags refused by safe_load
        raise IntraError(f"{path}: not a valid {path.suffix[1:]} file ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise IntraError(
            f"{path}: a config file must map sections to keys (e.g. train: {{lr: 0.001}}), not hold {_kind(data)}"
        )
    return data


def _toml():
    """tomllib (Python 3.11+) or, on Python 3.10, the tomli package it came from."""
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
    return tomllib


def _kind(value: Any) -> str:
    kinds = {list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

"""intra: the Inpainting Transformer (InTra, Pirnay & Chai 2021) for visual anomaly detection.

Train on defect-free images with `fit`, score new ones with `Detector`:

    from . import preset, fit, Detector
    result = fit(preset("cpu"), "data/my_product", "runs/my_product")
    detector = Detector.load("runs/my_product")
    maps, scores = detector.predict(images)  # images: (B, C, H, W) in [0, 1]
"""

from .config import Config, DataConfig, ModelConfig, ScoreConfig, TrainConfig, preset
from .core.model import InpaintingTransformer
from .errors import IntraError
from .inference.detector import Detector
from .training.fit import fit

__all__ = [
    "Config",
    "DataConfig",
    "Detector",
    "InpaintingTransformer",
    "IntraError",
    "ModelConfig",
    "ScoreConfig",
    "TrainConfig",
    "fit",
    "preset",
]
__version__ = "0.1.0"

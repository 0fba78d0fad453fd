"""intra: the Inpainting Transformer (InTra, Pirnay & Chai 2021) for visual anomaly detection.

Train on defect-free images with `fit`, score new ones with `Detector`, evaluate on a test set:

    from intra import preset, fit, Detector, evaluate, write_evaluation
    result = fit(preset("cpu"), "data/my_product", "runs/my_product")
    detector = Detector.load("runs/my_product")
    maps, scores = detector.predict(images)  # images: (B, C, H, W) in [0, 1]
    evaluation = evaluate(detector, "data/my_product")  # metrics and per-image arrays; writes nothing
    write_evaluation(evaluation, "runs/my_product/evaluation")
"""

from importlib.metadata import PackageNotFoundError, version

from .config import Config, DataConfig, ModelConfig, ScoreConfig, TrainConfig, preset
from .core.model import InpaintingTransformer
from .errors import IntraError
from .evaluation.outputs import write_evaluation
from .evaluation.scoring import Evaluation, evaluate
from .export import export_onnx
from .export_full import export_full_onnx
from .inference.detector import Detector
from .predict import predict_paths
from .training.fit import fit

__all__ = [
    "Config",
    "DataConfig",
    "Detector",
    "Evaluation",
    "InpaintingTransformer",
    "IntraError",
    "ModelConfig",
    "ScoreConfig",
    "TrainConfig",
    "evaluate",
    "export_full_onnx",
    "export_onnx",
    "fit",
    "predict_paths",
    "preset",
    "write_evaluation",
]
try:
    __version__ = version("intra")  # the one version number is pyproject.toml's
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

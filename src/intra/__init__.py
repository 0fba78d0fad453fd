"""intra: the Inpainting Transformer (InTra, Pirnay & Chai 2021) for visual anomaly detection.

Train on defect-free images with `fit`, score new ones with `Detector`, evaluate on a test set:

    from intra import preset, fit, Detector, evaluate, write_evaluation
    result = fit(preset("cpu"), "data/my_product", "runs/my_product")
    detector = Detector.load("runs/my_product")
    maps, scores = detector.predict(images)  # images: (B, C, H, W) in [0, 1]
    evaluation = evaluate(detector, "data/my_product")  # metrics and per-image arrays; writes nothing
    write_evaluation(evaluation, "runs/my_product/evaluation")
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

# The public names and the modules that define them, imported on first use (PEP 562): `import intra`
# and the `intra` command's --help, --version and argument errors then do not wait for torch.
_EXPORTS = {
    "Config": ".config",
    "DataConfig": ".config",
    "ModelConfig": ".config",
    "ScoreConfig": ".config",
    "TrainConfig": ".config",
    "preset": ".config",
    "InpaintingTransformer": ".core.model",
    "IntraError": ".errors",
    "write_evaluation": ".evaluation.outputs",
    "Evaluation": ".evaluation.scoring",
    "evaluate": ".evaluation.scoring",
    "export_onnx": ".export",
    "export_full_onnx": ".export_full",
    "Detector": ".inference.detector",
    "predict_paths": ".predict",
    "fit": ".training.fit",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'intra' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


try:
    __version__ = version("intra")  # the one version number is pyproject.toml's
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

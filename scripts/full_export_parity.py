"""The full export against Detector.predict: the largest differences in maps and scores, and the time per image.

    python scripts/full_export_parity.py RUN [RUN ...]     # exports RUN/model_full.onnx first

For each run: `intra.export_full.export_full_onnx`, then the same uniform random images (seed 0)
scored by the torch path and by the full graph on onnxruntime and, where installed, OpenVINO, at
batch 1 and 4; prints one line per (run, backend, batch) with the largest absolute difference of
the maps and of the scores, the largest map value (for scale), and milliseconds per image (the
median of 5 calls on a batch of 4, one thread). First, where OpenVINO is installed, why the graph
downscales by matrix products: ONNX Resize with antialias on OpenVINO against torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import time
import warnings

import torch

from intra.export_full import export_full_onnx, fixed_size
from intra.inference.detector import Detector


def per_image_ms(predict, images: torch.Tensor) -> float:
    predict(images)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(images)


def resize_on_openvino(path: str = "/tmp/resize_antialias.onnx") -> float:
    """The largest difference between torch's antialiased bilinear halving of a uniform random
    (2, 3, 64, 64) batch (seed 0) and OpenVINO running the same op exported as ONNX Resize."""
    import openvino

    class Halve(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Halve(), (images,), dynamo=True, verbose=False).save(path)
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled.create_infer_request().infer({0: images.numpy()})[compiled.output(0)]
    return float((torch.from_numpy(out) - Halve()(images)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backends = ["onnx-full"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    if "openvino" in backends:
        print(f"ONNX Resize (antialias) on OpenVINO against torch: {resize_on_openvino():.3f}")
    for run in args.runs:
        export_full_onnx(run)
        reference = Detector.load(run, device="cpu")
        cfg = reference.cfg
        size = (cfg.model.channels, *fixed_size(cfg))
        print(f"{run}: head {cfg.model.head}, cover_spacing {cfg.score.cover_spacing}, images {size}")
        print(f"  torch: {per_image_ms(reference.predict, torch.rand(4, *size)):.1f} ms/image")
        for backend in backends:
            graph = Detector.load(run, backend=backend, threads=1)
            generator = torch.Generator().manual_seed(0)
            for batch in (1, 4):
                images = torch.rand(batch, *size, generator=generator)
                maps, scores = reference.predict(images)
                graph_maps, graph_scores = graph.predict(images)
                print(
                    f"  {backend} batch {batch}: maps {float((maps - graph_maps).abs().max()):.2e}, "
                    f"scores {float((scores - graph_scores).abs().max()):.2e} (map max {float(maps.abs().max()):.3f})"
                )
            print(f"  {backend}: {per_image_ms(graph.predict, torch.rand(4, *size)):.1f} ms/image")


if __name__ == "__main__":
    main()

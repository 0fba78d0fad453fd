"""The `intra` command line: argument parsing only; every command calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .allocator import reuse_freed_memory
from .config import CPU_TRAIN_BATCH, PRESETS, Config, apply_overrides, flatten, preset, read_config_file
from .errors import IntraError
from .tools.demo import DEMO_MINUTES

# Modules that import torch are imported by the commands that need them, after the arguments are read
# and checked: `intra --help`, `--version` and mistakes in the arguments answer without waiting for torch.

# Flags that set one config key each: flag -> (key, type, help).
TRAIN_FLAGS = {
    "--image-size": (
        "model.image_size",
        int,
        "image size in pixels, a multiple of the patch size: N x N with data.resize = square, else the median"
        " training image's short side, for objects and textures alike",
    ),
    "--patch-size": ("model.patch_size", int, "patch side K in pixels"),
    "--window": ("model.window", int, "window side L in patches"),
    "--dim": ("model.dim", int, "model width D"),
    "--depth": ("model.depth", int, "number of transformer blocks"),
    "--heads": ("model.heads", int, "attention heads"),
    "--attention": ("model.attention", str, "mfsa (paper) or msa (standard attention)"),
    "--position": (
        "model.position",
        str,
        "local (textures), global (aligned objects) or auto (global when the training images share one size)",
    ),
    "--color": ("data.color", str, "auto, gray or rgb: how images are converted"),
    "--epochs": ("train.max_epochs", int, "maximum number of epochs"),
    "--patience": ("train.patience", int, "stop after this many epochs without a better validation loss"),
    "--max-minutes": ("train.max_minutes", float, "wall-clock training budget in minutes (0 = none)"),
    "--windows-per-image": ("train.windows_per_image", int, "random windows per training image per epoch"),
    "--batch-size": ("train.batch_size", int, "training batch size in windows"),
    "--lr": ("train.lr", float, "Adam learning rate"),
    "--rotation": ("train.rotation", str, "augmentation: none, rot90 or any (any angle)"),
    "--seed": ("train.seed", int, "random seed for initialisation, split and windows"),
    "--device": ("train.device", str, "auto, cpu, cuda or cuda:N"),
    "--threads": ("train.threads", int, "torch CPU threads (0 = torch's default)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intra",
        description="Inpainting Transformer (InTra) anomaly detection: train on defect-free images, "
        "then score new images and locate their defects.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details to stderr")
    parser.add_argument(
        "--version", action="version", version=f"intra {__version__}", help="print the version and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model on defect-free images",
        description="Train InTra on defect-free images and write a run folder (config.json, train_log.jsonl, model.safetensors, model.json).",
    )
    train.add_argument(
        "--data", help="an MVTec-layout root (uses DATA/train/good) or a folder of images (required unless --resume)"
    )
    train.add_argument("--out", help="run folder to create (required unless --resume)")
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the interrupted training of RUN with its saved config and data (only --threads, --device and --data may be given)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (the old run is kept until the new model is complete)",
    )
    train.add_argument("--preset", choices=sorted(PRESETS), help="starting configuration (default: cpu)")
    train.add_argument("--config", help="a .json, .toml or .yaml file overriding the preset")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=3e-4 (repeatable; applied last)",
    )
    for flag, (key, kind, text) in TRAIN_FLAGS.items():
        metavar = "NAME" if kind is str else "N"
        train.add_argument(flag, type=kind, dest=key, metavar=metavar, help=f"{text} [{key}]")

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a run on an MVTec-layout test set",
        description="Score every image of DATA/test, compute image AUROC, pixel AUROC, AUPRO and per-kind AUROC, and write metrics.json, scores.csv and heatmaps.",
    )
    evaluate.add_argument("--run", required=True, help="a trained run folder")
    evaluate.add_argument("--data", required=True, help="an MVTec-layout root with test/ and ground_truth/")
    evaluate.add_argument("--out", help="output folder (default: RUN/evaluation)")
    evaluate.add_argument(
        "--eval-size",
        type=int,
        help="compute pixel metrics with the maps and masks resized to a short side of N px, the aspect kept "
        "(default: at the size each image is scored at)",
    )
    evaluate.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: 8)")
    evaluate.add_argument("--no-heatmaps", action="store_true", help="skip writing one overlay PNG per test image")
    evaluate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="score.KEY=VALUE",
        help="change a scoring setting without retraining, e.g. --set score.scales=1,0.5,0.25 (repeatable; new scales or filters refit the training mean map from DATA/train/good)",
    )
    _add_runtime_flags(evaluate)

    predict = commands.add_parser(
        "predict",
        help="score images and write anomaly maps, overlays and masks",
        description="Score images (files, folders or glob patterns): one JSON line per image on stdout (pred_score, pred_label, defect_area...), a summary on stderr; with --out also predictions.jsonl, anomaly_maps/, overlays/ and masks/. Rerun with the same --out to resume.",
    )
    predict.add_argument("--run", required=True, help="a trained run folder")
    predict.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders of images or glob patterns")
    predict.add_argument(
        "--out", help="output folder (default: records on stdout only); an interrupted run resumes in it"
    )
    predict.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default: 8)")
    predict.add_argument(
        "--backend",
        choices=("torch", "onnx", "onnx-full", "openvino"),
        default="torch",
        help="torch; onnx: onnxruntime runs the network of RUN/model.onnx (intra export); onnx-full or openvino: "
        "onnxruntime or OpenVINO runs the whole scoring in RUN/model_full.onnx (intra export --full)",
    )
    _add_onnx_file_flag(predict)
    predict.add_argument(
        "--image-threshold", type=float, help="pred_label threshold on pred_score (default: the run's calibrated one)"
    )
    predict.add_argument(
        "--pixel-threshold",
        type=float,
        help="pred_mask threshold on the anomaly map (default: the run's calibrated one)",
    )
    _add_runtime_flags(predict)

    benchmark = commands.add_parser(
        "benchmark",
        help="train and evaluate a grid of configurations",
        description="Train and evaluate every (dataset, configuration, seed) of a grid file (.toml or .json; see intra.tools.grid) and write OUT/results.md, results.csv and results.json. Finished cells are kept: rerunning resumes.",
    )
    benchmark.add_argument("--grid", required=True, help="grid file naming datasets, configurations and seeds")
    benchmark.add_argument("--out", required=True, help="output folder (runs/, cells/ and the result tables)")
    benchmark.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells computed in parallel, one process each (default: 1); give each few threads",
    )
    benchmark.add_argument(
        "--limit",
        type=int,
        default=0,
        help="stop after computing N cells per process (a long grid in slices; rerun to continue; default: no limit)",
    )
    export = commands.add_parser(
        "export",
        help="export the inpainting network, or the whole scoring (ONNX)",
        description="Export the run's inpainting network to ONNX with a dynamic batch dimension, for `intra predict --backend onnx` or other runtimes; with --full, one graph from images (B, C, H, W) at the run's size to anomaly maps and scores, for `intra predict --backend onnx-full` (or openvino).",
    )
    export.add_argument("--run", required=True, help="a trained run folder")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    export.add_argument(
        "--full",
        action="store_true",
        help="export the whole scoring (windows, network, GMS maps, filters, normalisation) as one graph",
    )
    export.add_argument("--out", help="output file (default: RUN/model.onnx, with --full RUN/model_full.onnx)")

    serve = commands.add_parser(
        "serve",
        help="serve a run over HTTP: POST /predict, GET /model, GET /health and a page at /",
        description="Serve a trained run over HTTP (FastAPI on uvicorn; needs the serve extra): POST /predict scores an uploaded image, concurrent requests batched together; a page at / to try it in a browser. See docs/serving.md.",
    )
    serve.add_argument("--run", required=True, help="a trained run folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--token",
        default=os.environ.get("INTRA_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on every endpoint but /health and the page (default: $INTRA_TOKEN; prefer the variable: flags show in ps)",
    )
    serve.add_argument(
        "--backend", choices=("torch", "onnx"), default="torch", help="run the network with torch or onnxruntime"
    )
    _add_onnx_file_flag(serve, full_graph=False)
    serve.add_argument("--max-batch", type=int, default=8, help="most images scored together (default: 8)")
    serve.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="longest wait for more images to batch with (default: 5)"
    )
    serve.add_argument("--no-batching", action="store_true", help="score one image at a time (--max-batch 1)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MiB (default: 20)")
    _add_runtime_flags(serve)

    demo = commands.add_parser(
        "demo",
        help="the whole pipeline on generated data, in a few minutes",
        description="Generate a synthetic defect dataset, train the cpu preset on it, evaluate, and write metrics and heatmaps under OUT.",
    )
    demo.add_argument("--out", required=True, help="folder for the dataset, the run and the evaluation")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the data and the training (default: 0)")
    demo.add_argument(
        "--minutes", type=float, default=DEMO_MINUTES, help=f"training budget in minutes (default: {DEMO_MINUTES})"
    )

    bench = commands.add_parser(
        "bench",
        help="measure inference and training speed",
        description="Time batched inference, the naive one-window-per-forward loop and training steps on random images, against a matrix-product ceiling measured in the same run; prints a table, then one JSON line.",
    )
    bench.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="model configuration to time (default: paper)"
    )
    bench.add_argument("--image-size", type=int, default=256, help="image side in pixels (default: 256)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    bench.add_argument(
        "--batch", type=int, default=0, help="images per inference call (default: 1 on the CPU, 8 on a GPU)"
    )
    bench.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="precision of the matrix products; auto = bf16 where the device computes it natively (default: auto)",
    )
    bench.add_argument("--compile", action="store_true", help="run the network through torch.compile")
    bench.add_argument(
        "--train-batch",
        type=int,
        default=0,
        help=f"windows per training step (default: the preset's, at most {CPU_TRAIN_BATCH} on the CPU)",
    )
    bench.add_argument(
        "--naive-windows",
        type=int,
        default=0,
        help="windows timed in the naive loop (default: 16 on the CPU, 64 on a GPU)",
    )
    bench.add_argument("--repeat", type=int, default=3, help="timed repetitions of each measurement (default: 3)")
    bench.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set score.memory_mb=512 (repeatable)",
    )
    return parser


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="precision of the network's matrix products; auto = bf16 where the device computes it natively "
        "(AVX-512 BF16 or AMX CPUs, Ampere GPUs on), else fp32; ONNX backends run fp32 (default: auto)",
    )


def _add_onnx_file_flag(parser: argparse.ArgumentParser, full_graph: bool = True) -> None:
    default = "RUN/model.onnx; RUN/model_full.onnx for onnx-full and openvino" if full_graph else "RUN/model.onnx"
    parser.add_argument(
        "--onnx-file",
        metavar="FILE",
        help=f"the exported graph an ONNX backend runs, where `intra export --out` wrote it (default: {default})",
    )


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise IntraError(f"{name} must be positive, not {value}")


def resolve_train_config(args: argparse.Namespace) -> Config:
    """Preset -> config file -> flags -> --set, merged, then validated once."""
    cfg = preset(args.preset or "cpu")
    if args.config:
        data = read_config_file(args.config)
        try:
            apply_overrides(cfg, flatten(data), check=False)  # validated below, together with the flags
        except IntraError as exc:
            raise IntraError(f"{args.config}: {exc}") from None
    flags = {key: getattr(args, key) for key, _, _ in TRAIN_FLAGS.values() if getattr(args, key) is not None}
    flags.update(_key_values(args.set))
    return apply_overrides(cfg, flags)


def _key_values(items: list[str]) -> dict[str, str]:
    """["a.b=1", ...] from repeated --set flags -> {"a.b": "1", ...}."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise IntraError(f"--set expects KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        cfg, data = resolve_resume(args)
        run, resume = args.resume, True
    else:
        if not args.data or not args.out:
            raise IntraError("intra train needs --data and --out (or --resume RUN)")
        cfg, data, run, resume = resolve_train_config(args), args.data, args.out, False
    from .training.fit import fit

    # resume and overwrite never come together (resolve_resume refuses --overwrite)
    result = fit(cfg, data, run, progress=True, resume=resume, overwrite=args.overwrite)
    if not result.main:
        return  # a distributed run's other processes: rank 0 reports
    s = result.stats
    print(
        f"trained {s['epochs']} epochs in {s['train_seconds']:.0f}s; kept epoch {s['best_epoch']} ({s['selected_by']} {s['best_metric']:.5f}); "
        f"thresholds: image {s['image_threshold']:.4g}, pixel {s['pixel_threshold']:.4g}; run saved to {run}"
    )


def resolve_resume(args: argparse.Namespace) -> tuple[Config, str]:
    """The saved config of the run to resume (with --threads/--device applied) and its data folder."""
    from .training import state as training_state

    changed = [
        flag
        for flag, (key, _, _) in TRAIN_FLAGS.items()
        if getattr(args, key) is not None and key not in ("train.threads", "train.device")
    ]
    changed += ["--preset"] * bool(args.preset) + ["--out"] * bool(args.out) + ["--config"] * bool(args.config)
    changed += ["--set"] * bool(args.set)
    changed += ["--overwrite"] * args.overwrite
    if changed:
        raise IntraError(f"--resume continues RUN with its saved config: drop {', '.join(changed)}")
    run = training_state.resumable_folder(args.resume)  # RUN, or where an interrupted --overwrite of it trained
    _, state = training_state.load(run)
    try:
        cfg = Config.from_dict(json.loads((run / "config.json").read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise IntraError(f"cannot read {run / 'config.json'}: {exc}") from None
    flags = {key: getattr(args, key) for key in ("train.threads", "train.device") if getattr(args, key) is not None}
    return apply_overrides(cfg, flags), args.data or state["data"]


def _check_threads(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise IntraError(f"--threads must not be negative, not {args.threads}")


def _load_detector(args: argparse.Namespace):
    from .inference.detector import Detector
    from .runtime import configure_threads

    _check_threads(args)
    configure_threads(args.threads)
    backend, onnx_file = getattr(args, "backend", "torch"), getattr(args, "onnx_file", None)
    return Detector.load(
        args.run, device=args.device, dtype=args.dtype, backend=backend, threads=args.threads, onnx_file=onnx_file
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    _positive("--eval-size", args.eval_size)
    _positive("--batch-size", args.batch_size)
    _check_threads(args)
    from .evaluation.outputs import write_evaluation
    from .evaluation.scoring import evaluate

    detector = _load_detector(args)
    if args.set:
        from .inference.calibration import rescore

        detector = rescore(detector, _key_values(args.set), args.data)
    out = Path(args.out) if args.out else Path(args.run) / "evaluation"
    evaluation = evaluate(detector, args.data, eval_size=args.eval_size, batch_size=args.batch_size, progress=True)
    write_evaluation(evaluation, out, heatmaps=not args.no_heatmaps, progress=True)
    _print_results(evaluation.metrics)
    print(f"results written to {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    _positive("--batch-size", args.batch_size)
    _check_threads(args)
    from .predict import Predictions, dumps

    detector = _load_detector(args)
    with Predictions(
        detector,
        args.inputs,
        args.out,
        run_dir=args.run,
        batch_size=args.batch_size,
        image_threshold=args.image_threshold,
        pixel_threshold=args.pixel_threshold,
        threads=args.threads,
    ) as job:
        if job.thresholds["image_threshold"] is None:
            print(
                "intra: warning: this run has no calibrated thresholds (trained by an older intra): pred_label is null",
                file=sys.stderr,
            )
        for record in job.run(progress=True):
            print(dumps(record), flush=True)
    print(job.summary(), file=sys.stderr)
    if job.failed:
        raise IntraError(
            f"{job.failed} of {job.failed + job.predicted} images could not be read and were skipped "
            f'(their records hold "error"; a rerun retries them); the first: {job.first_error}'
        )


def cmd_export(args: argparse.Namespace) -> None:
    if args.full:
        from .export_full import export_full_onnx

        path = export_full_onnx(args.run, args.out)
        print(f"exported images -> anomaly maps and scores to {path} (ONNX, dynamic batch)")
        return
    from .export import export_onnx

    path = export_onnx(args.run, args.out)
    print(f"exported the inpainting network to {path} (ONNX, dynamic batch)")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    _positive("--max-batch", args.max_batch)
    _positive("--port", args.port)
    if args.port > 65535:
        raise IntraError(f"--port must be at most 65535, not {args.port}")
    if not (args.max_upload_mb > 0 and args.max_upload_mb < float("inf")):
        raise IntraError(f"--max-upload-mb must be a positive number, not {args.max_upload_mb}")
    if not (0 <= args.batch_wait_ms <= 10_000):
        raise IntraError(f"--batch-wait-ms must be between 0 and 10000, not {args.batch_wait_ms}")
    detector = _load_detector(args)
    batch = 1 if args.no_batching else args.max_batch
    batching = "off" if batch == 1 else f"up to {batch} images within {args.batch_wait_ms:g} ms"
    print(
        f"intra serve: {args.run} on http://{args.host}:{args.port}/ ({args.backend}, batching {batching}, "
        f"token {'required' if args.token else 'not required'})",
        file=sys.stderr,
        flush=True,
    )
    serve(
        detector,
        args.run,
        host=args.host,
        port=args.port,
        token=args.token,
        max_batch=batch,
        batch_wait_ms=args.batch_wait_ms,
        max_upload_mb=args.max_upload_mb,
        threads=args.threads,
        backend=args.backend,
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from .tools.demo import run_demo

    _positive("--minutes", args.minutes)
    start = time.perf_counter()
    m = run_demo(args.out, threads=args.threads, seed=args.seed, progress=True, minutes=args.minutes)
    _print_results(m)
    print(
        f"demo finished in {time.perf_counter() - start:.0f}s; metrics in {Path(args.out) / 'evaluation' / 'metrics.json'}"
    )


def cmd_benchmark(args: argparse.Namespace) -> None:
    from .tools.grid import run_grid

    _positive("--jobs", args.jobs)
    if args.limit < 0:
        raise IntraError(f"--limit must not be negative, not {args.limit}")

    def report(number: int, total: int, cell, row: dict, status: str) -> None:
        detail = row["error"] if status == "failed" else _summary(row)
        print(f"[{number}/{total}] {cell.name}: {status}: {detail}", flush=True)

    paths, failed = run_grid(args.grid, args.out, args.jobs, args.limit, report)
    print(f"results written to {paths['md']}, {paths['csv'].name} and {paths['json'].name}")
    if failed:
        raise IntraError(f"{failed} cell(s) or worker(s) failed; rerun the same command to retry them")


def cmd_bench(args: argparse.Namespace) -> None:
    from .runtime import configure_threads
    from .tools.speed import BenchOptions, format_table, run_bench

    for name in ("image_size", "batch", "train_batch", "naive_windows", "repeat"):
        if getattr(args, name) < (1 if name in ("image_size", "repeat") else 0):
            raise IntraError(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    configure_threads(args.threads)
    opts = BenchOptions(
        args.preset,
        args.image_size,
        args.device,
        args.batch,
        args.dtype,
        args.compile,
        args.repeat,
        args.naive_windows,
        args.train_batch,
        overrides=_key_values(args.set),
    )
    result = run_bench(opts)
    print(format_table(result))
    print(json.dumps(result))


def _summary(m: dict) -> str:
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in m["per_kind"].items())
    names = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"))
    values = [f"{name} {m[key]:.3f}" for name, key in names if m.get(key) is not None]  # no masks: image only
    return "  ".join(values) + f"  ({kinds})"


def _print_results(m: dict) -> None:
    """The metrics, then what the run's own image threshold flags: what `intra predict` will do."""
    from .evaluation.outputs import share_text

    print(_summary(m))
    stored = m.get("thresholds", {}).get("image", {})
    if "tpr_at_stored" in stored:
        print(
            f"at the stored image threshold {stored['stored_threshold']:.4g}: flags {share_text(stored['tpr_at_stored'])} "
            f"of the defective images and {share_text(stored['fpr_at_stored'])} of the good ones"
        )


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "benchmark": cmd_benchmark,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    reuse_freed_memory()  # fewer page faults per forward pass on a CPU (allocator.py)
    try:
        COMMANDS[args.command](args)
    except IntraError as exc:
        print(f"intra: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("intra: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `intra predict ... | head`: the reader left, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())

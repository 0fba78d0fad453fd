"""The HTTP service: a FastAPI app around one Detector and its Batcher, run by uvicorn.

Endpoints: `GET /` the page (page.html: static, no model data, so it loads without a token and the
user types one into it), `GET /health` (never needs a token), `GET /model` and `POST /predict`
(a bearer token when one is set). `/predict` takes a multipart upload in the field `file` or a raw
body with an image content type, and answers the record `intra predict` writes (built by
`ImagePrediction.to_record`), with `overlay_png` (base64) for `?heatmap=1`.

Safety: the request body is counted while it is read and refused past `max_upload_mb` (413);
images are read by `data.images` from a private temporary file, so its checks apply unchanged (the
pixel budget and Pillow's bomb check from the header, before decoding: 413; undecodable, truncated,
too small or multi-frame: 400). Every error is one JSON line `{"error": "..."}`; unexpected ones are
logged here and answered 500 without details.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..checkpoint import read_metadata
from ..config import PRESETS, Config, preset
from ..data.geometry import Geometry
from ..data.images import ImageTooLarge, image_size, load_image
from ..errors import IntraError
from ..inference.detector import Detector
from ..pictures import png_bytes
from ..predict import overlay
from .batcher import Batcher, Busy, Scored

log = logging.getLogger(__name__)

# A multipart upload carries its part headers and boundaries besides the file: allowed on top of the limit.
MULTIPART_OVERHEAD = 64 * 1024
MAX_QUEUE = 64  # images waiting for the engine; more are answered 503 (memory stays bounded under overload)
# Uploads decoded at once. Decoding is CPU work (more at once is not faster), and a small compressed
# upload can decode to a 50-megapixel image (about 1.5 GB at its peak): the queue bounds decoded
# images, this bounds the ones being decoded.
DECODE_SLOTS = 2


class ApiError(Exception):
    """An answer other than 200, with the one-line reason the client gets as {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def create_app(
    detector: Detector,
    run_dir: str | Path | None = None,
    token: str | None = None,
    max_batch: int = 8,
    batch_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    threads: int = 0,
    backend: str = "torch",
) -> FastAPI:
    """The service for one detector (see the module docstring). max_batch = 1 turns batching off."""
    batcher = Batcher(detector, max_batch, batch_wait_ms, MAX_QUEUE, threads)
    limit = int(max_upload_mb * 2**20)
    info = model_info(detector, run_dir, backend) | {
        "batching": {"max_batch": batcher.max_batch, "wait_ms": batch_wait_ms},
        "max_upload_mb": max_upload_mb,
    }
    page = files("intra.serve").joinpath("page.html").read_text(encoding="utf-8")
    decoding = asyncio.Semaphore(DECODE_SLOTS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with tempfile.TemporaryDirectory(prefix="intra-serve-") as uploads:
            app.state.uploads = uploads
            batcher.start()
            try:
                yield
            finally:
                batcher.close()

    app = FastAPI(
        title="intra", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    authorized = Depends(_bearer(token))
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model", dependencies=[authorized])
    async def model() -> dict:
        return info

    @app.post("/predict", dependencies=[authorized])
    async def predict(request: Request) -> JSONResponse:
        data, name = await _upload(request, limit)
        async with decoding:
            image, size = await run_in_threadpool(_decode, data, name, detector, request.app.state.uploads)
        try:
            scored: Scored = await asyncio.wrap_future(batcher.submit(image, size))
        except Busy as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        record = {"filename": name, **scored.prediction.to_record()}
        record.update(anomaly_map_max=float(scored.amap.max()), batch=scored.batch, seconds=scored.seconds)
        if request.query_params.get("heatmap", "0").lower() in ("1", "true", "yes"):
            vmax = float(detector.stats.get("overlay_vmax", 0.0))
            found = scored.prediction
            picture = await run_in_threadpool(overlay, image, scored.amap, found.pixel_threshold, vmax, found.mark)
            record["overlay_png"] = base64.b64encode(png_bytes(picture)).decode("ascii")
        return JSONResponse(record)

    return app


def model_info(detector: Detector, run_dir: str | Path | None, backend: str) -> dict:
    """What GET /model answers: the run's identity, geometry, thresholds and how it is served."""
    cfg, meta = detector.cfg, {} if run_dir is None else read_metadata(run_dir)
    image_threshold, pixel_threshold = detector.thresholds()
    geometry = Geometry.of(cfg)
    return {
        "version": __version__,
        "run": None if run_dir is None else _text(Path(run_dir).resolve().name),  # its name, not the server's paths
        "preset": preset_of(cfg),
        "config_sha256": meta.get("config_sha256"),
        "weights_sha256": meta.get("weights_sha256"),
        "image_size": cfg.model.image_size,
        "geometry": {
            "resize": geometry.resize,
            "scale": geometry.scale,
            "fixed_size": list(geometry.fixed) if all(geometry.fixed) else None,  # (height, width) of object runs
            "patch_size": geometry.patch,
            "window": geometry.window,
            "color": cfg.data.color,
            "channels": cfg.model.channels,
        },
        "thresholds": {"image_threshold": image_threshold, "pixel_threshold": pixel_threshold},
        "backend": backend,
        "dtype": detector.backend.describe()["dtype"],  # what the products compute in: --dtype auto resolved
        "device": str(detector.device),
    }


def _text(name: str) -> str:
    """A file name as JSON can carry it: bytes that are not UTF-8 (kept by Python as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def preset_of(cfg: Config) -> str | None:
    """The preset whose network this run's is (the channel count aside, which follows the data), else None.

    Runs do not record the preset they started from; the network's shape is what identifies one."""
    shape = lambda model: {**asdict(model), "channels": None}  # noqa: E731
    return next((name for name in PRESETS if shape(preset(name).model) == shape(cfg.model)), None)


def _bearer(token: str | None):
    """A dependency refusing requests without `Authorization: Bearer <token>` (nothing when no token is set)."""
    expected = None if not token else token.encode("utf-8")

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes as long for any wrong token of a length: nothing to learn from timing
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return check


async def _upload(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The uploaded image's bytes and file name: a multipart field `file` or a raw image body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        body = await _read_body(request, limit + MULTIPART_OVERHEAD)
        return await _multipart_file(request, body, limit)
    if not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise ApiError(
            415,
            f"unsupported content type {kind or '(none)'!r}: send multipart/form-data with a field 'file', or image/*",
        )
    body = await _read_body(request, limit)
    if not body:
        raise ApiError(400, "empty upload: send the image's bytes")
    return body, None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: declared or while it arrives."""
    too_large = ApiError(413, f"upload larger than the limit of {limit / 2**20:.1f} MiB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes, limit: int) -> tuple[bytes, str | None]:
    """The part `file` of a multipart body already read (and counted) by _read_body."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "multipart upload without a file in the field 'file'")
        data = await upload.read()
    finally:
        await form.close()
    if not data:
        raise ApiError(400, "empty upload: the file holds no bytes")
    if len(data) > limit:
        raise ApiError(413, f"upload larger than the limit of {limit / 2**20:.1f} MiB")
    return data, _display_name(upload.filename)


def _display_name(filename: str | None) -> str | None:
    """The client's file name as it may appear in answers: its last part, printable, at most 200 characters."""
    if not filename:
        return None
    name = "".join(ch for ch in filename.replace("\\", "/").rsplit("/", 1)[-1] if ch.isprintable())
    return name[:200] or None


def _decode(data: bytes, name: str | None, detector: Detector, folder: str):
    """Read an upload with `data.images` (its checks, unchanged) -> ((C, h, w) tensor, (width, height))."""
    handle, path = tempfile.mkstemp(dir=folder, suffix=".upload")
    shown = repr(name) if name else "the upload"
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        image = load_image(path, Geometry.of(detector.cfg), detector.cfg.data.color)
        return image, image_size(path)
    except IntraError as exc:
        message = str(exc).replace(path, shown)  # the server's temporary path is not the client's business
        raise ApiError(413 if isinstance(exc, ImageTooLarge) else 400, message) from None
    except Exception:  # noqa: BLE001 - a decoder failing in a way images.py does not name: still the upload's fault
        log.exception("reading an upload failed")
        raise ApiError(400, f"cannot read {shown} as an image") from None
    finally:
        os.unlink(path)


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer but 200 is {"error": one line}; unexpected failures are logged here, never sent."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        return JSONResponse({"error": message.lower()}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error (details are in the server's log)"}, 500)

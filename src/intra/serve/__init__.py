"""`intra serve`: a trained run as an HTTP service with a browser page (FastAPI on uvicorn).

`app.create_app` builds the service (a FastAPI app) around a Detector, `batcher.Batcher` scores
concurrent requests together off the event loop, and `serve` runs it on uvicorn. docs/serving.md
describes the endpoints, replicas and measured latency. Needs the `serve` extra:
pip install 'intra[serve]'.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from ..errors import IntraError
from ..inference.detector import Detector

log = logging.getLogger(__name__)

__all__ = ["serve"]


def serve(
    detector: Detector,
    run_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_batch: int = 8,
    batch_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    threads: int = 0,
    backend: str = "torch",
) -> None:
    """Serve `detector` on host:port until interrupted (see `app.create_app` for the arguments)."""
    try:  # FastAPI and uvicorn are the optional `serve` extra
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as exc:
        raise IntraError(f"intra serve needs {exc.name}: pip install 'intra[serve]'") from None
    app = create_app(detector, run_dir, token, max_batch, batch_wait_ms, max_upload_mb, threads, backend)

    if not token and not _loopback(host):
        log.warning("serving on %s without a token: anyone who can reach it can use the model", host)
    # Access logs off: one line per request on a busy line is noise; errors are logged by the app.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

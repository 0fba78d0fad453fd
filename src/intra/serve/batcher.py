"""Dynamic batching: images submitted from many requests are scored together by one worker thread.

The worker takes the first waiting image, then waits at most `wait_ms` for more, up to `max_batch`,
and scores them in one `Detector.detect` call (images of different sizes go in one list; the engine
batches their windows). Only this thread runs the engine, so there is one engine call at a time and
the event loop stays free to answer `/health` while a batch runs. `max_batch = 1` scores one image
at a time (`intra serve --no-batching`). The queue is bounded: a full one refuses new work (`Busy`)
rather than holding images without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from ..data.geometry import Geometry
from ..inference.detector import Detector
from ..inference.prediction import ImagePrediction, predicted

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


@dataclass
class Scored:
    """One image's result, with the scored-resolution map the overlay is drawn from."""

    prediction: ImagePrediction
    amap: torch.Tensor  # (h, w) anomaly map at the resolution it was scored at
    batch: int  # images scored in the same engine call
    seconds: float  # that call's wall time divided by `batch` (as `intra predict` reports it)


@dataclass
class _Job:
    image: torch.Tensor  # (C, h, w) in [0, 1], as `data.images.load_image` gives it
    size: tuple[int, int]  # the image's own (width, height)
    future: Future


class Batcher:
    """Scores submitted images in batches on one worker thread (see the module docstring)."""

    def __init__(
        self, detector: Detector, max_batch: int = 8, wait_ms: float = 5.0, max_queue: int = 64, threads: int = 0
    ):
        self.detector, self.max_batch, self.wait = detector, max(1, max_batch), max(0.0, wait_ms) / 1000
        self.threads = threads
        self.thresholds = detector.thresholds()
        self.geometry = Geometry.of(detector.cfg)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="intra-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Finish the queued images, then stop the worker."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def submit(self, image: torch.Tensor, size: tuple[int, int]) -> Future:
        """Queue one image (C, h, w) of own size (width, height); the Future resolves to its `Scored`."""
        job = _Job(image, size, Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"the server is busy ({self._queue.maxsize} images queued): retry shortly") from None
        return job.future

    def _loop(self) -> None:
        if self.threads > 0:
            torch.set_num_threads(self.threads)  # OpenMP's thread count is per thread: set it here too
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus whatever arrives within the wait bound, up to max_batch; True if told to stop."""
        jobs, deadline = [first], time.monotonic() + self.wait
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            maps, scores, peaks = self.detector.detect([job.image for job in jobs])
            seconds = (time.perf_counter() - start) / len(jobs)
            for job, amap, score, peak in zip(jobs, maps, scores, peaks):
                prediction = predicted(amap, float(score), job.size, *self.thresholds, self.geometry, peak)
                job.future.set_result(Scored(prediction, amap, len(jobs), round(seconds, 4)))
        except Exception as exc:  # noqa: BLE001 - the requests get the error; the worker keeps serving
            log.exception("scoring a batch of %d images failed", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)

"""`intra serve`: a real uvicorn process on loopback, driven through a real HTTP client and in Chromium.

One server for the module (the tiny CLI run, a token, a 1 MiB upload limit); every test leaves it
serving. The bad-request matrix follows each refusal with a valid request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from evaluation.test_report import CHROMIUM, CHROMIUM_FLAGS
from PIL import Image

from conftest import intra, lively_model, tiny_config, user_error

httpx = pytest.importorskip("httpx2", reason="httpx2 is in the dev extra")
pytest.importorskip("fastapi", reason="the serve extra is in the dev extra")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A generated textured RGB image as PNG bytes."""
    rng = np.random.default_rng(seed)
    array = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def claims_pixels(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its data is not that large): a decompression bomb's shape."""
    ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    return data[:8] + data[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


@contextlib.contextmanager
def serving(run, *flags: str):
    """`intra serve --run RUN FLAGS` on a free loopback port; yields (base URL, process), then stops it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INTRA_TOKEN": TOKEN, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "intra.cli", "serve", "--run", str(run), "--port", str(port)]
    command += ["--threads", "1", "--max-upload-mb", "1", "--device", "cpu", *flags]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "intra serve did not answer /health within 60 s"
        time.sleep(0.2)
    try:
        yield url, process
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def server(cli_run):
    """`intra serve` of the tiny CLI run, shared by the module; yields (base URL, process)."""
    with serving(cli_run) as running:
        yield running


def test_the_onnx_backend_serves_the_torch_backends_scores(cli_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    intra("export", "--run", run, "--format", "onnx")
    image = png(64, 64, seed=3)
    with serving(run, "--dtype", "fp32") as (url, _):  # onnxruntime runs fp32; "auto" may be bf16 here
        by_torch = httpx.post(f"{url}/predict", content=image, headers={**AUTH, "Content-Type": "image/png"}).json()
    with serving(run, "--backend", "onnx") as (url, _):
        served = httpx.get(f"{url}/model", headers=AUTH).json()
        assert served["backend"] == "onnx" and served["dtype"] == "fp32"
        by_onnx = httpx.post(f"{url}/predict", content=image, headers={**AUTH, "Content-Type": "image/png"}).json()
    assert by_onnx["pred_score"] == pytest.approx(by_torch["pred_score"], abs=1e-4)
    assert by_onnx["pred_label"] == by_torch["pred_label"]


def predict(url: str, data: bytes = b"", **kwargs) -> httpx.Response:
    files = {"file": ("part.png", data or png(), "image/png")}
    return httpx.post(f"{url}/predict", files=files, headers=AUTH, timeout=30, **kwargs)


def test_predict_answers_the_record_intra_predict_writes(server, cli_run, tmp_path):
    url, _ = server
    data = png(80, 64, seed=1)
    answer = predict(url, data, params={"heatmap": "1"})
    assert answer.status_code == 200, answer.text
    record = answer.json()
    path = tmp_path / "part.png"
    path.write_bytes(data)
    line = intra("predict", "--run", cli_run, path, "--threads", "1").stdout.splitlines()[0]
    expected = json.loads(line)
    for key in ("pred_score", "pred_label", "threshold", "pixel_threshold", "defect_area", "image_size", "peak"):
        assert record[key] == pytest.approx(expected[key], abs=1e-5), key
    assert len(record["regions"]) == len(expected["regions"])
    for got, want in zip(record["regions"], expected["regions"]):
        assert got["bbox"] == want["bbox"] and got["area"] == want["area"]
        assert got["peak_score"] == pytest.approx(want["peak_score"], abs=1e-5)
    assert record["filename"] == "part.png" and record["image_size"] == [80, 64] and record["batch"] >= 1
    overlay = Image.open(io.BytesIO(base64.b64decode(record["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size[0] == 3 * overlay.size[1]  # image | heatmap | mask

    raw = httpx.post(f"{url}/predict", content=data, headers={**AUTH, "Content-Type": "image/png"}, timeout=30)
    assert raw.status_code == 200 and raw.json()["pred_score"] == pytest.approx(record["pred_score"], abs=1e-6)
    assert "overlay_png" not in raw.json() and raw.json()["filename"] is None


def test_health_and_model(server, cli_run):
    url, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # no token needed
    info = httpx.get(f"{url}/model", headers=AUTH).json()
    stored = json.loads((cli_run / "model.json").read_text())
    assert info["config_sha256"] == stored["config_sha256"] and info["backend"] == "torch"
    assert info["thresholds"]["image_threshold"] == stored["stats"]["image_threshold"]
    assert info["image_size"] == 64 and info["preset"] is None  # the tiny network is no preset's
    assert info["batching"] == {"max_batch": 8, "wait_ms": 5.0} and info["version"]


def chunked_oversize():
    """A body over the 1 MiB limit in chunks, without a Content-Length: counted while it arrives."""
    yield b"\x89PNG" + b"\0" * (600 * 1024)
    yield b"\0" * (600 * 1024)


@pytest.mark.parametrize(
    "case, status",
    [
        ("non-image", 400),
        ("truncated", 400),
        ("empty", 400),
        ("empty file", 400),
        ("oversized", 413),
        ("oversized chunked", 413),
        ("too many pixels", 413),
        ("tiny", 400),
        ("wrong method", 405),
        ("wrong content type", 415),
        ("no file field", 422),
        ("missing token", 401),
        ("wrong token", 401),
        ("unknown path", 404),
    ],
)
def test_bad_requests_are_refused_in_one_line_and_the_server_keeps_serving(server, case, status):
    url, _ = server
    good = png()
    post = lambda **kw: httpx.post(f"{url}/predict", timeout=30, **kw)  # noqa: E731
    raw = {**AUTH, "Content-Type": "image/png"}
    answer = {
        "non-image": lambda: post(files={"file": ("notes.txt", b"not an image at all", "text/plain")}, headers=AUTH),
        "truncated": lambda: post(content=good[: len(good) // 2], headers=raw),
        "empty": lambda: post(content=b"", headers=raw),
        "empty file": lambda: post(files={"file": ("x.png", b"", "image/png")}, headers=AUTH),
        "oversized": lambda: post(content=b"\0" * (1024 * 1024 + 1), headers=raw),
        "oversized chunked": lambda: post(content=chunked_oversize(), headers=raw),
        "too many pixels": lambda: post(content=claims_pixels(good, 10_000, 6_000), headers=raw),
        "tiny": lambda: post(content=png(8, 8), headers=raw),
        "wrong method": lambda: httpx.get(f"{url}/predict", headers=AUTH),
        "wrong content type": lambda: post(
            content=b'{"image": 1}', headers={**AUTH, "Content-Type": "application/json"}
        ),
        "no file field": lambda: post(files={"image": ("x.png", good, "image/png")}, headers=AUTH),
        "missing token": lambda: post(content=good, headers={"Content-Type": "image/png"}),
        "wrong token": lambda: post(
            content=good, headers={"Authorization": "Bearer nope", "Content-Type": "image/png"}
        ),
        "unknown path": lambda: httpx.get(f"{url}/nothing-here", headers=AUTH),
    }[case]()
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert "/tmp" not in body["error"] and "intra-serve-" not in body["error"]  # no server paths
    if case == "too many pixels":
        assert "60,000,000 pixels" in body["error"]
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{url}/model", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert predict(url).status_code == 200  # still serving


def test_the_page_scores_an_upload_in_chromium(server, tmp_path):
    if CHROMIUM is None and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    url, _ = server
    image = tmp_path / "upload.png"
    image.write_bytes(png(96, 64, seed=3))
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM or "/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
        page.goto(url + "/", wait_until="load")
        page.fill("#token", TOKEN)
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#result:not([hidden])", timeout=20_000)
        page.wait_for_function(
            "document.getElementById('overlay').complete && document.getElementById('overlay').naturalWidth > 0"
        )
        verdict = page.text_content("#verdict")
        score = page.text_content("#score")
        peak = page.text_content("#peak") if page.is_visible("#peak") else None
        warning = page.text_content("#warning") if page.is_visible("#warning") else None
        overlay = page.evaluate(
            "[document.getElementById('overlay').naturalWidth, document.getElementById('overlay').naturalHeight]"
        )
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model:')")
        browser.close()
    assert problems == []
    assert verdict in ("Anomalous", "Normal")
    assert "vs threshold" in score and "96x64 px" in score
    assert peak is not None and peak.startswith("score found at x ") and peak.split()[4].endswith(",")
    # The run's training images are 64 px squares: the wide upload is stretched to one, and the page says so.
    assert warning is not None and warning.startswith("Less reliable: this image was stretched 1.50x")
    assert overlay[0] == 3 * overlay[1] > 0


def test_batcher_scores_waiting_images_in_one_call_as_one_at_a_time():
    from intra.inference.detector import Detector
    from intra.serve.batcher import Batcher

    cfg = tiny_config()
    cfg.data.resize, cfg.data.scale = "scale", 1.0  # images keep their own sizes: one batch of several sizes
    detector = Detector(lively_model(cfg), cfg, stats={"image_threshold": 0.5, "pixel_threshold": 0.5})
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.random((3, 32, 24 + 4 * i), dtype=np.float32)) for i in range(5)]
    results = {}
    for max_batch in (8, 1):
        batcher = Batcher(detector, max_batch=max_batch, wait_ms=50)
        futures = [batcher.submit(image, (image.shape[2], image.shape[1])) for image in images]  # queued before start
        batcher.start()
        results[max_batch] = [future.result(timeout=60) for future in futures]
        batcher.close()
    assert [r.batch for r in results[8]] == [5] * 5 and [r.batch for r in results[1]] == [1] * 5
    for together, alone, image in zip(results[8], results[1], images):
        assert together.prediction.image_size == (image.shape[2], image.shape[1])
        assert together.prediction.pred_score == pytest.approx(alone.prediction.pred_score, abs=1e-5)
        assert together.prediction.pred_label == (together.prediction.pred_score >= 0.5)


def test_serve_refuses_bad_options_in_one_line(tmp_path):
    user_error(intra("serve", "--run", tmp_path / "missing", check=False), "run folder not found")
    user_error(intra("serve", "--run", tmp_path, "--max-batch", "0", check=False), "--max-batch must be positive")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_under_load_nothing_fails_requests_batch_and_memory_stays_bounded(server):
    url, process = server
    images = [png(48 + 8 * (i % 4), 64, seed=i) for i in range(8)]  # several sizes in one batch
    with httpx.Client(headers=AUTH, timeout=60) as client:
        for data in images:  # warm up: every size's plan made once
            assert client.post(f"{url}/predict", content=data, headers={"Content-Type": "image/png"}).status_code == 200

    def client_run(worker: int, count: int) -> list[tuple[int, int]]:
        with httpx.Client(headers=AUTH, timeout=60) as client:
            out = []
            for i in range(count):
                data = images[(worker + i) % len(images)]
                answer = client.post(f"{url}/predict", content=data, headers={"Content-Type": "image/png"})
                out.append((answer.status_code, answer.json().get("batch", 0)))
            return out

    start, rss = time.monotonic(), [rss_kb(process.pid)]
    results = []
    with ThreadPoolExecutor(16) as pool:
        for count in (6, 7):  # two bursts of 16 clients: memory after the first is the plateau
            runs = [pool.submit(client_run, worker, count) for worker in range(16)]
            if count == 7:
                time.sleep(0.5)
                asked = time.monotonic()
                health = httpx.get(f"{url}/health", timeout=10)  # while batches run: the engine is off the event loop
                health_seconds, busy = time.monotonic() - asked, sum(not run.done() for run in runs)
            results += [r for run in runs for r in run.result()]
            rss.append(rss_kb(process.pid))
    seconds = time.monotonic() - start
    assert len(results) == 208 and all(status == 200 for status, _ in results)
    assert health.status_code == 200 and busy > 0 and health_seconds < 2.0, (busy, health_seconds)
    assert max(batch for _, batch in results) > 1  # concurrent requests were scored together
    # The first burst grows the heap to hold batches of 8 (measured here: 20 to 45 MB); the second must not grow it
    # much further (measured: -11 to +32 MB: batches of other compositions and the allocator arenas of new
    # decoding threads move it by tens of MB). The bounds catch growth of tens of MB per hundred requests, not a
    # leak of a few kB per request.
    growth = f"VmRSS (kB) before and after each burst: {rss}"
    assert rss[1] - rss[0] < 100_000 and rss[2] - rss[1] < 60_000 and rss[2] - rss[0] < 150_000, growth
    assert seconds < 60


def test_a_full_queue_is_answered_503_with_retry_after(monkeypatch):
    """The batcher refuses work beyond its queue (Busy), and the service answers that 503 with Retry-After."""
    from fastapi.testclient import TestClient

    from intra.inference.detector import Detector
    from intra.serve import app as service
    from intra.serve.batcher import Batcher, Busy

    cfg = tiny_config()
    detector = Detector(lively_model(cfg), cfg, stats={"image_threshold": 0.5, "pixel_threshold": 0.5})
    image = torch.rand(3, 32, 32)
    waiting = Batcher(detector, max_queue=2)  # never started: nothing leaves the queue
    for _ in range(2):
        waiting.submit(image, (32, 32))
    with pytest.raises(Busy, match="busy"):
        waiting.submit(image, (32, 32))

    def busy(self, image, size):
        raise Busy("the server is busy (64 images queued): retry shortly")

    monkeypatch.setattr(service.Batcher, "submit", busy)  # as a full queue answers
    with TestClient(service.create_app(detector)) as client:
        answer = client.post("/predict", content=png(32, 32), headers={"Content-Type": "image/png"})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert answer.json() == {"error": "the server is busy (64 images queued): retry shortly"}
        assert client.get("/health").status_code == 200


def test_model_info_of_a_run_whose_name_is_not_utf8_is_json(cli_run, tmp_path):
    # Starlette encodes JSON strictly as UTF-8: a folder name with a Latin-1 byte made every GET /model a 500.
    from intra.inference.detector import Detector
    from intra.runtime import native_bf16
    from intra.serve.app import model_info

    run = tmp_path / os.fsdecode(b"mod\xe8le")
    shutil.copytree(cli_run, run)
    info = model_info(Detector.load(run, device="cpu"), run, "torch")
    assert info["run"] == "mod\ufffdle"
    assert info["dtype"] == ("bf16" if native_bf16("cpu") else "fp32")  # --dtype auto, resolved
    json.dumps(info, ensure_ascii=False).encode("utf-8")


def test_uploads_are_decoded_a_few_at_a_time(monkeypatch):
    # A few KB of PNG can decode to 50 megapixels: many clients at once must not decode all at once.
    import threading

    from fastapi.testclient import TestClient

    from intra.inference.detector import Detector
    from intra.serve import app as service

    cfg = tiny_config()
    detector = Detector(lively_model(cfg), cfg, stats={"image_threshold": 0.5, "pixel_threshold": 0.5})
    lock, active, most = threading.Lock(), [0], [0]

    def slow_decode(*args):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        raise service.ApiError(400, "decoded")

    monkeypatch.setattr(service, "_decode", slow_decode)
    with TestClient(service.create_app(detector)) as client:
        post = lambda _: client.post("/predict", content=png(32, 32), headers={"Content-Type": "image/png"})  # noqa: E731
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
    assert [a.status_code for a in answers] == [400] * 8
    assert most[0] == service.DECODE_SLOTS

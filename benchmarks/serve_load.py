"""Latency and throughput of `intra serve` at several numbers of concurrent clients: a markdown table.

Against a running server:

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--token T] --label "batching on"

or, starting `intra serve --run RUN` itself twice (batching on, then --no-batching), each on a free
loopback port with --threads pinned, and reporting the server's memory (VmRSS after the run,
VmHWM its peak, from /proc):

    python benchmarks/serve_load.py --run runs/x --threads 1

Every client is a thread with its own HTTP connection sending raw PNG bodies back to back; the
images are generated textures (intra.data.synthetic.texture) of --size px, or the files in
--images. Latency is per request as the client sees it; throughput is requests / wall time.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
from PIL import Image


def generated_images(size: int, count: int = 8) -> list[bytes]:
    from intra.data.synthetic import texture

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        array = texture(rng, size)
        buffer = io.BytesIO()
        Image.fromarray((array * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def measure(url: str, images: list[bytes], clients: int, requests: int, token: str | None) -> dict:
    """`requests` POST /predict spread over `clients` threads -> latency percentiles and throughput."""
    headers = {"Content-Type": "image/png", **({"Authorization": f"Bearer {token}"} if token else {})}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(headers=headers, timeout=120) as http:
            for index in counter:  # shared iterator: clients take the next request until none is left
                start = time.perf_counter()
                answer = http.post(f"{url}/predict", content=images[index % len(images)])
                elapsed = time.perf_counter() - start
                with lock:
                    if answer.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        failures.append(answer.text[:200])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, the first: {failures[0]}")
    cuts = statistics.quantiles(latencies, n=20)  # 19 cut points: [9] is the median, [18] the 95th percentile
    return {"p50_ms": 1000 * cuts[9], "p95_ms": 1000 * cuts[18], "per_s": len(latencies) / wall}


def memory_kb(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def start_server(run: str, threads: int, batching: bool, token: str | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "intra.cli", "serve", "--run", run, "--port", str(port)]
    command += ["--threads", str(threads), "--device", "cpu"] + ([] if batching else ["--no-batching"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **({"INTRA_TOKEN": token} if token else {})}
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("intra serve did not start within a minute")


def table(label: str, url: str, images: list[bytes], levels: list[int], requests: int, token: str | None) -> list[str]:
    measure(url, images, 2, 16, token)  # warm up: plans made, allocator settled
    rows = []
    for clients in levels:
        m = measure(url, images, clients, max(requests, 4 * clients), token)
        rows.append(
            f"| {label} | {clients} | {max(requests, 4 * clients)} | {m['p50_ms']:.0f} | {m['p95_ms']:.0f} | {m['per_s']:.2f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server")
    target.add_argument("--run", help="start intra serve on this run, batching on then off")
    parser.add_argument("--label", default="", help="the table's first column for --url (default: the URL)")
    parser.add_argument("--token", default=os.environ.get("INTRA_TOKEN"), help="bearer token (default: $INTRA_TOKEN)")
    parser.add_argument("--threads", type=int, default=1, help="the started servers' torch threads (default: 1)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default: 1,4,16)")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (default: 64)")
    parser.add_argument("--size", type=int, default=128, help="side of the generated images in px (default: 128)")
    parser.add_argument("--images", help="a folder of PNG/JPEG files to send instead of generated ones")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if args.images:
        paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images = [p.read_bytes() for p in paths[:32]]
    else:
        images = generated_images(args.size)
    rows, notes = [], []
    if args.url:
        rows = table(args.label or args.url, args.url, images, levels, args.requests, args.token)
    else:
        for batching in (True, False):
            process, url = start_server(args.run, args.threads, batching, args.token)
            try:
                label = "on (max 8, 5 ms)" if batching else "off"
                rows += table(label, url, images, levels, args.requests, args.token)
                memory = memory_kb(process.pid)
                notes.append(
                    f"batching {label}: server VmRSS {memory['VmRSS'] / 1024:.0f} MiB after the run, "
                    f"peak (VmHWM) {memory['VmHWM'] / 1024:.0f} MiB"
                )
            finally:
                process.terminate()
                process.wait(timeout=30)
    print("| batching | clients | requests | p50 ms | p95 ms | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()

"""A screenshot of the `intra serve` page after an upload, taken in the system's Chromium (playwright).

    python benchmarks/serve_screenshot.py --run runs/x --image some.png --out docs/serve.png

Starts `intra serve` on a free loopback port (with a token, typed into the page as a user would),
uploads the image through the page's file input, waits for the verdict and the overlay, and saves
the page. Never downloads a browser: it drives /usr/bin/chromium (or --chromium).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

# As tests/evaluation/test_report.py: a closed network, as root, without a screen.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--image", required=True, help="the image to upload")
    parser.add_argument("--out", default="docs/serve.png", help="the PNG to write (default: docs/serve.png)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser (default: /usr/bin/chromium)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_load.py sits beside this script
    from serve_load import start_server

    token = secrets.token_urlsafe(16)
    process, url = start_server(args.run, threads=1, batching=True, token=token)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 600}, device_scale_factor=1)
            page.goto(url + "/", wait_until="load")
            page.fill("#token", token)
            page.set_input_files("#file", args.image)
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            page.wait_for_function("document.getElementById('model').textContent.startsWith('model:')")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()

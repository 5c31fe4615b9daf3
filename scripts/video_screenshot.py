"""The screenshot in docs/video-page.png: the page, on the shipped model, after a video upload.

    python -m scripts.video_screenshot [--output docs/video-page.png]

The clip is the benchmark's (``benchmarks/video.py``: a real and a fake face from
lfw-faceswap moving over a background), 10 s long.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.video import make_clip
from deepfake_detector.detector import DEFAULT_MODEL_PATH
from harness.server import REPO, running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "video-page.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory() as folder,
        running_server(DEFAULT_MODEL_PATH) as url,
        sync_playwright() as playwright,
    ):
        clip = Path(folder) / "two-faces.mp4"
        clip.write_bytes(make_clip(10, 50))
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 760, "height": 900})
        page.goto(url)
        page.set_input_files("input[type=file]", str(clip))
        page.click("button[type=submit]")
        page.wait_for_selector(".plot svg", timeout=300_000)
        page.click("#frames summary")
        page.screenshot(path=str(args.output), full_page=True)
        browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

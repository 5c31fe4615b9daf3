"""A real browser (Debian's Chromium, driven by Playwright) uses the page served by inference.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deepfake_detector.labels import VERDICT_WORDS
from harness.server import running_server

pytestmark = pytest.mark.slow  # a real server and a real browser

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lfw-faceswap"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def real_face() -> Path:
    """A real face photo from the shared data, or a generated stand-in where it is absent."""
    faces = sorted((SHARED_DATA / "Test" / "Real").glob("*.jpg"))
    return faces[0] if faces else None


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_url(trained_model_path):
    with running_server(trained_model_path) as url:
        yield url


def test_upload_a_face_and_see_the_verdict(browser, page_url, tmp_path, fake_png):
    face = real_face()
    if face is None:  # shared data missing: still drive the page with a generated image
        face = tmp_path / "face.png"
        face.write_bytes(fake_png)
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-width screen
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(page_url)
    assert (
        page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") != "none"
    )  # static/style.css served
    page.set_input_files("input[type=file]", str(face))
    page.click("button[type=submit]")
    page.wait_for_selector("#result")
    verdict = page.inner_text("#verdict")
    percentage = page.inner_text("#percentage")
    assert verdict in VERDICT_WORDS.values()
    assert percentage.endswith("%") and 0.0 <= float(percentage[:-1]) <= 100.0
    assert page.locator("#result img").evaluate("img => img.naturalWidth") > 0  # the upload is shown
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)
    assert errors == []  # e.g. no Content-Security-Policy violations


def test_upload_a_text_file_and_see_the_error(browser, page_url, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    page = browser.new_page()
    page.goto(page_url)
    page.set_input_files("input[type=file]", str(text))
    page.click("button[type=submit]")
    message = page.wait_for_selector("#error").inner_text()
    assert "not an image" in message


def face_clip() -> bytes:
    """Two faces (the astronaut's, darkened) crossing: what tests/test_video.py scores."""
    from tests.helpers import clip, crossing

    return clip(crossing())


def test_upload_a_video_and_see_its_tracks_and_plots(browser, page_url, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(face_clip())
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(page_url)
    page.set_input_files("input[type=file]", str(video))
    page.click("button[type=submit]")
    page.wait_for_selector("#video-result")
    assert page.inner_text("#verdict") in VERDICT_WORDS.values()
    assert page.locator("#tracks > li").count() == 2
    page.wait_for_selector(".plot svg polyline")
    points = page.locator(".plot svg polyline").first.get_attribute("points").split()
    assert len(points) == 32 and page.locator(".plot svg circle").count() == 64  # one per sampled frame, per track
    assert page.locator("#tracks img").first.evaluate("img => img.naturalWidth") > 0  # the track's face
    assert not page.locator(".frame-grid img").first.is_visible()  # the frames are shown on demand
    page.click("#frames summary")
    assert page.locator(".frame-grid img").first.is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "video.png"), full_page=True)
    assert errors == []  # no Content-Security-Policy violation from the plot's script or its data

"""The page and the JSON API through Flask's test client: verdicts, bad input, headers."""

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector import labels
from tests.helpers import GridFinder, image_bytes, synthetic_image


def post_api(client, data: bytes, name="x.png", field="file"):
    return client.post("/api/predict", data={field: (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_api_answers_the_documented_json(client, detector, fake_png):
    response = post_api(client, fake_png)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {
        "label",
        "fake_probability",
        "threshold",
        "verdict",
        "face_detection",
        "faces_found",
        "faces_scored",
        "faces",
        "model",
        "elapsed_ms",
    }
    assert body["label"] in ("fake", "real")
    assert 0.0 <= body["fake_probability"] <= 1.0
    assert body["threshold"] == pytest.approx(detector.threshold)
    assert body["model"] == detector.name
    assert body["elapsed_ms"] >= 0


def test_api_score_equals_python_api(client, detector, fake_png):
    body = post_api(client, fake_png).get_json()
    assert body["fake_probability"] == pytest.approx(detector.predict(fake_png).fake_probability, abs=1e-6)


@pytest.mark.parametrize(
    "data, name, status, message",
    [
        (b"", "empty.png", 400, "empty"),
        (b"hello, this is text not an image", "notes.txt", 400, "not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "doc.pdf", 400, "not an image"),
    ],
)
def test_api_rejects_bad_uploads_with_json_error(client, data, name, status, message):
    response = post_api(client, data, name)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_api_rejects_truncated_image(client, fake_png):
    jpeg = image_bytes(synthetic_image(True, np.random.default_rng(5), size=64), "JPEG", quality=90)
    response = post_api(client, jpeg[: len(jpeg) // 2])
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_api_rejects_unsupported_format(client):
    from PIL import Image

    icon = image_bytes(Image.new("RGB", (32, 32), "red"), "ICO")
    response = post_api(client, icon, "x.png")
    assert response.status_code == 415
    assert "not supported" in response.get_json()["error"]


def test_api_without_file_field(client, fake_png):
    response = client.post("/api/predict", data={"other": (io.BytesIO(fake_png), "a.png")})
    assert response.status_code == 400
    assert "field 'file'" in response.get_json()["error"]
    response = client.post("/api/predict", data=b"raw body", content_type="application/octet-stream")
    assert response.status_code == 400


def test_api_upload_over_the_cap_is_413(client):
    big = os.urandom(3 * 1024 * 1024)  # the fixture's cap is 2 MB
    response = post_api(client, big, "big.png")
    assert response.status_code == 413
    assert "larger than" in response.get_json()["error"]


def test_uploads_are_never_written_to_disk(client, fake_png, tmp_path, monkeypatch):
    """The original saved uploads under the client's name (``../x`` escaped the folder)."""
    monkeypatch.chdir(tmp_path)
    response = post_api(client, fake_png, "../../escape.png")
    assert response.status_code == 200
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escape.png").exists()


def test_page_shows_verdict_and_percentage(client, detector, fake_png):
    page = client.get("/")
    assert page.status_code == 200 and b'type="file"' in page.data
    response = client.post("/", data={"file": (io.BytesIO(fake_png), "face.png")})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    expected = detector.predict(fake_png)
    assert f"{expected.fake_probability * 100:.1f}%" in html
    assert (
        f">{labels.VERDICT_WORDS[expected.label]}<" in html
    )  # below the threshold: no sign of known fakes, not "Real"
    assert ">Real<" not in html
    assert "data:image/jpeg;base64," in html  # the uploaded image, re-encoded


@pytest.mark.parametrize("data", [b"", b"not an image at all"])
def test_page_shows_a_message_for_bad_uploads(client, data):
    response = client.post("/", data={"file": (io.BytesIO(data), "x.txt")})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'role="alert"' in html and "Traceback" not in html


def test_page_without_file(client):
    response = client.post("/", data={})
    assert response.status_code == 400
    assert 'role="alert"' in response.get_data(as_text=True)


def test_security_headers_and_no_debug(client, detector):
    response = client.get("/")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert client.application.debug is False


def test_unknown_api_route_is_json_404(client):
    response = client.get("/api/nothing")
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_healthz_names_the_model(client, detector):
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["model"] == detector.name


def test_a_files_request_stops_starting_files_after_its_time(detector, fake_png):
    from deepfake_detector.web import RequestLimits, create_app

    client = create_app(detector, RequestLimits(files_seconds=0.0)).test_client()
    files = [(io.BytesIO(fake_png), f"{i}.png") for i in range(3)]
    body = client.post("/api/predict", data={"files": files}, content_type="multipart/form-data").get_json()
    assert [entry["status"] for entry in body["results"]] == [503, 503, 503]
    assert "send this file again" in body["results"][0]["error"]


def test_page_says_how_many_faces_were_found_and_scored(detector, fake_png):
    from deepfake_detector.web import RequestLimits, create_app

    client = create_app(detector, RequestLimits(faces_per_image=5), face_finder=GridFinder(12)).test_client()
    html = client.post(
        "/", data={"file": (io.BytesIO(fake_png), "x.png")}, content_type="multipart/form-data"
    ).get_data(as_text=True)
    assert "12 faces found, the 5 largest scored" in html and html.count("Face 5:") == 1 and "Face 6:" not in html


def test_uploads_are_parsed_into_memory_not_temporary_files(client, fake_png, monkeypatch):
    from werkzeug import formparser

    def refuse(*args, **kwargs):
        raise AssertionError("a temporary file was made for the upload")

    monkeypatch.setattr(formparser, "SpooledTemporaryFile", refuse)  # Werkzeug's default: on disk above 500 KB
    big = image_bytes(
        synthetic_image(True, np.random.default_rng(9), size=700), "BMP"
    )  # 1.5 MB, over Werkzeug's 500 KB
    assert post_api(client, big, "big.bmp").status_code == 200


def test_an_upload_is_checked_and_decoded_once(client, fake_png, real_png, monkeypatch):
    """The app decodes an upload and hands the decoded image to the detector, which does not
    check or decode it again. Counted where every path of preprocessing.probe_image and
    preprocessing.decode goes, however a caller imported them: the size checks and the
    conversion to RGB."""
    from deepfake_detector import preprocessing

    calls = {"size checks": 0, "decodes": 0}

    def counted(key, function):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(preprocessing, "_check_size", counted("size checks", preprocessing._check_size))
    monkeypatch.setattr(preprocessing, "_to_rgb", counted("decodes", preprocessing._to_rgb))
    for path in ("/", "/api/predict"):
        response = client.post(path, data={"file": (io.BytesIO(fake_png), "x.png")}, content_type="multipart/form-data")
        assert response.status_code == 200 and calls == {"size checks": 1, "decodes": 1}, (path, calls)
        calls.update({"size checks": 0, "decodes": 0})
    files = [(io.BytesIO(fake_png), "a.png"), (io.BytesIO(real_png), "b.png")]
    response = client.post("/api/predict", data={"files": files}, content_type="multipart/form-data")
    assert all("label" in entry for entry in response.get_json()["results"])
    assert calls == {"size checks": 2, "decodes": 2}


def test_apps_in_one_process_keep_their_own_detector_and_limits(detector, fake_png):
    """The views are module-level (one Blueprint); each app's state is its own."""
    from deepfake_detector.web import RequestLimits, create_app

    hurried = create_app(detector, RequestLimits(files_seconds=0.0), face_finder=GridFinder(0)).test_client()
    patient = create_app(detector, face_finder=GridFinder(3)).test_client()
    files = {"files": [(io.BytesIO(fake_png), "a.png")]}
    assert (
        hurried.post("/api/predict", data=files, content_type="multipart/form-data").get_json()["results"][0]["status"]
        == 503
    )
    body = post_api(patient, fake_png).get_json()
    assert body["faces_found"] == 3 and body["face_detection"] == "found"
    assert post_api(hurried, fake_png).get_json()["face_detection"] == "none"


def test_page_and_its_files_are_found_from_any_working_folder(detector, tmp_path, monkeypatch):
    """templates/ and static/ sit at the top of the checkout, beside inference.py (Flask's
    single-module layout), and are found from web.py, never from the working folder."""
    from deepfake_detector import web

    repo = Path(__file__).resolve().parent.parent
    assert (web.TEMPLATES, web.STATIC) == (repo / "templates", repo / "static")
    monkeypatch.chdir(tmp_path)
    client = web.create_app(detector).test_client()
    html = client.get("/").get_data(as_text=True)
    for name in ("style.css", "favicon.svg"):
        assert f"/static/{name}" in html
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.data == (repo / "static" / name).read_bytes()


# ----------------------------------------------------------------------------- issue 29


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns of the corrupt EXIF it skips
def test_a_file_that_broke_the_decoder_costs_no_other_file_its_answer(client, fake_png):
    """A mistyped EXIF tag made exif_transpose raise TypeError: a 500 for the whole request."""
    from harness.hostile import mistyped_exif_jpeg, mutants

    broken = [data for _, data in mutants({"m.jpg": mistyped_exif_jpeg()}, count=30, seed=1)]
    files = [
        (io.BytesIO(data), f"{i}.jpg")
        for i, data in enumerate([fake_png, mistyped_exif_jpeg(), *broken[:12], fake_png])
    ]
    response = client.post("/api/predict", data={"files": files}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    results = response.get_json()["results"]
    assert len(results) == 15 and "label" in results[0] and "label" in results[1] and "label" in results[-1]
    assert all("label" in entry or 400 <= entry["status"] < 500 for entry in results)
    single = post_api(client, mistyped_exif_jpeg(), "rotated.jpg")
    assert single.status_code == 200 and single.get_json()["label"] in ("fake", "real")


def test_request_paths_are_logged_escaped_on_one_line(client, caplog):
    caplog.set_level("INFO", logger="deepfake_detector.web")
    client.get("/api/x%0a2025-01-01 INFO deepfake_detector.web: POST /api/predict 200 1.0ms%0d")
    lines = [record.getMessage() for record in caplog.records if record.name == "deepfake_detector.web"]
    assert lines and all("\n" not in line and "\r" not in line for line in lines)
    assert any("/api/x\\n2025-01-01" in line for line in lines)


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "https://evil.example"}, 403),  # a browser too old to send Sec-Fetch-Site
        ({"Origin": "null"}, 403),  # a sandboxed frame
        ({"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}, 200),  # this server's own page
        ({"Origin": "http://localhost:8080"}, 200),  # behind a proxy whose Host drops the port
        ({}, 200),  # a script: curl, requests
    ],
)
def test_cross_site_posts_are_refused_and_scripts_keep_the_api(detector, fake_png, tmp_path, headers, status):
    from deepfake_detector.uploads import UploadStore
    from deepfake_detector.web import create_app

    store = UploadStore(tmp_path / "kept", 10 * 2**20)
    client = create_app(detector, face_finder=GridFinder(0), upload_store=store).test_client()
    api = client.post("/api/predict", data={"file": (io.BytesIO(fake_png), "x.png")}, headers=headers)
    page = client.post("/", data={"file": (io.BytesIO(fake_png), "x.png")}, headers=headers)
    assert (api.status_code, page.status_code) == (status, status)
    if status == 403:
        assert "another site" in api.get_json()["error"] and "another site" in page.get_data(as_text=True)
        assert list((tmp_path / "kept").iterdir()) == []  # neither scored nor kept


def test_the_app_leaves_no_daemon_thread_to_be_killed_at_exit(detector, monkeypatch):
    """A daemon thread still in TensorFlow's C++ code when the interpreter exits is unwound by
    pthread_exit, which aborts the process (status 134): the Grad-CAM trace started here was one."""
    from deepfake_detector import web

    started = []

    class Recorded(threading.Thread):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(web.threading, "Thread", Recorded)
    web.create_app(detector, face_finder=GridFinder(0))
    assert [thread.name for thread in started] == ["trace-grad-cam"]
    assert not any(thread.daemon for thread in started)
    for thread in started:
        thread.join()

"""The Flask upload page and JSON API: ``create_app(detector)``.

Uploads are kept in memory (:class:`InMemoryRequest`) and decoded by content; by default
nothing of them is written to disk. With an :class:`~deepfake_detector.uploads.UploadStore`
each scored upload is kept under a name made from its content, never the client's. Every
failure a client can cause is a 4xx with a readable message (JSON ``{"error": ...}`` for the
API); nothing leaks a stack trace. What one request may cost is bounded by :class:`RequestLimits`.

As in Flask's tutorial (flaskr), :func:`create_app` is a short factory: it keeps the detector,
the limits and the shared locks in ``app.extensions`` and registers :data:`bp`, whose views live
here at module level and read them through ``current_app``. An upload is decoded once, here,
and the decoded image handed on; each of its faces is scored on its own
(:mod:`deepfake_detector.faces`), and the preview's boxes are drawn server-side
(:mod:`deepfake_detector.previews`).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import numpy as np
from flask import Blueprint, Flask, Request, current_app, g, jsonify, render_template, request
from PIL import Image
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from deepfake_detector import faces, labels, preprocessing
from deepfake_detector.detector import Detector, ImageScore
from deepfake_detector.errors import (
    CrossSiteRequestError,
    ImageError,
    ImageTooLargeError,
    ServerBusyError,
    UploadError,
    VideoError,
)
from deepfake_detector.previews import preview_data_url, video_page
from deepfake_detector.uploads import UploadStore
from deepfake_detector.video import DEFAULT_FRAMES, VideoLimits, VideoScore, looks_like_video, score_video

log = logging.getLogger(__name__)

#: The page's files sit at the top of the checkout, beside ``inference.py``: Flask's layout for
#: a single-module app, as in the tutorial this project began as. Found from this file, never
#: from the working folder.
ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server. The costs quoted were measured on 2 cores with
    the shipped model (``python -m benchmarks.hostile_load``)."""

    upload_bytes: int = 20 * 1024 * 1024  # the whole body, all files together
    files: int = 16  # files in one ``files`` request
    form_fields: int = 8  # text fields besides the files (the page sends one: ``explain``)
    field_bytes: int = 512 * 1024  # largest text field (also the parser's buffer: files stream through it)
    faces_per_image: int = 20  # the largest faces are scored (a model call each); the rest are only counted
    explained_faces: int = 8  # Grad-CAM heatmaps per request (a backward pass each), the highest scores first
    files_seconds: float = 3.0  # a ``files`` request starts no new file after this; the rest come back as 503
    large_image_pixels: int = 12_000_000  # larger images are decoded and scored one at a time (40 MP RGBA: 640 MB)


SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class InMemoryRequest(Request):
    """A request whose multipart files stay in memory: Werkzeug spools each file over 500 KB
    to a temporary file. Parsing stops at the first file past the app's limit."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        self._file_parts = getattr(self, "_file_parts", 0) + 1
        most = current_app.extensions["request_limits"].files
        if self._file_parts > most:
            raise RequestEntityTooLarge(f"at most {most} files per request")
        return io.BytesIO()


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
#: ``Sec-Fetch-Site`` values of a request a browser made from this server's own page (or by the
#: user's own action); "same-site" is another host of the same site, which is not this server.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})


def cross_site(request: Request) -> bool:
    """Whether a browser sent ``request`` from another site's page: its ``Sec-Fetch-Site`` says
    so or, from a browser too old to send that, its ``Origin`` is another host (or ``null``: a
    sandboxed frame). Scripts (curl, requests) send neither, and the API stays theirs."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in OWN_FETCH_SITES
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    # Host names only: a proxy's ``Host $host`` drops the port the browser saw.
    return urlsplit(origin.strip()).hostname != urlsplit(f"//{request.host}").hostname


def printable(text: str) -> str:
    """``text`` with control and non-ASCII characters escaped, for one log line: a path with
    ``%0a`` in it must not write a line of its own."""
    return text.encode("unicode_escape").decode("ascii")


bp = Blueprint("web", __name__)


def create_app(
    detector: Detector,
    limits: RequestLimits = RequestLimits(),
    face_finder: faces.FaceFinder | None = None,
    upload_store: UploadStore | None = None,
    video_limits: VideoLimits = VideoLimits(),
) -> Flask:
    """Build the app around an already loaded detector (tests hand in a tiny one).

    ``face_finder`` defaults to :func:`deepfake_detector.faces.default_finder`, loaded here,
    at start-up, not on the first request. ``upload_store``, when given, keeps every upload
    that was scored (page and API, each file of a ``files`` request); without it nothing is
    written anywhere. A video upload (``video_limits``) is scored by one worker at a time
    (:func:`_score_video`); it is never stored.
    """
    if not (TEMPLATES / "index.html").is_file():
        raise FileNotFoundError(
            f"no {TEMPLATES / 'index.html'}: the page's templates/ and static/ belong "
            "at the top of the checkout, beside inference.py"
        )
    app = Flask(__name__, template_folder=str(TEMPLATES), static_folder=str(STATIC))
    app.request_class = InMemoryRequest
    app.config.update(
        MAX_CONTENT_LENGTH=max(limits.upload_bytes, video_limits.upload_bytes),
        JSON_SORT_KEYS=False,
        MAX_FORM_MEMORY_SIZE=limits.field_bytes,
        MAX_FORM_PARTS=limits.files + limits.form_fields,
    )
    app.extensions.update(
        detector=detector,
        request_limits=limits,
        video_limits=video_limits,
        face_finder=face_finder or faces.default_finder(),
        upload_store=upload_store,
        model_info=detector.describe(),
        video_worker=threading.Semaphore(1),  # one video decoded and scored at a time
        large_image=threading.Lock(),  # bounds memory: four 40 MP uploads at once took 3 GB
    )
    if limits.explained_faces:
        _trace_grad_cam(detector)
    app.register_blueprint(bp)
    return app


def _trace_grad_cam(detector: Detector) -> None:
    """Grad-CAM is traced on first use, for seconds: in the background now, not in a request.

    Not a daemon: the interpreter's exit waits for the trace to end. A daemon thread still in
    TensorFlow's C++ code at exit is unwound by pthread_exit, which aborts a script that used
    InferenceModel ("FATAL: exception not rethrown", status 134).
    """
    blank = np.zeros((1, detector.image_size, detector.image_size, 3), np.uint8)
    threading.Thread(target=detector.heatmaps, args=(blank,), name="trace-grad-cam").start()


# ----------------------------------------------------------------------------- every request


@bp.app_context_processor
def page_facts() -> dict:
    extensions = current_app.extensions
    return {
        "model": extensions["model_info"],
        "face_finder": extensions["face_finder"].name,
        "keeps_uploads": extensions["upload_store"] is not None,
        "verdict_words": labels.VERDICT_WORDS,
    }


@bp.before_app_request
def start_timer():
    g.start = time.perf_counter()
    if request.method == "POST" and cross_site(request):  # before the body is parsed
        error = CrossSiteRequestError(
            "a page on another site cannot send uploads here: use this server's own page, or call the API from a script"
        )
        if request.path.startswith("/api/"):
            return _json_error(str(error), error.http_status)
        return _page_error(str(error), error.http_status)


@bp.after_app_request
def finish(response):
    response.headers.update(SECURITY_HEADERS)
    elapsed = (time.perf_counter() - g.get("start", time.perf_counter())) * 1000
    log.info("%s %s %d %.1fms", printable(request.method), printable(request.path), response.status_code, elapsed)
    return response


# ----------------------------------------------------------------------------- views


@bp.get("/")
def index():
    return render_template("index.html")


@bp.post("/")
def upload_page():
    try:
        if (clip := _uploaded_video()) is not None:
            return render_template("index.html", video=video_page(_score_video(clip, thumbnail_width=240)))
        result, image, analysis = _score_image(_read_upload(), _explain_allowance())
    except ServerBusyError as error:
        return _page_error(str(error), error.http_status, {"Retry-After": str(error.retry_after_seconds)})
    except (UploadError, ImageError, VideoError) as error:
        return _page_error(str(error), error.http_status)
    return render_template("index.html", result=result, preview=preview_data_url(image, analysis))


@bp.post("/api/predict")
def api_predict():
    if many := request.files.getlist("files"):
        return _predict_files(many)
    model = current_app.extensions["model_info"]["model"]
    try:
        if (clip := _uploaded_video()) is not None:
            return jsonify(**_score_video(clip).to_dict(), model=model, elapsed_ms=_elapsed_ms())
        result = _score_image(_read_upload(), _explain_allowance())[0]
    except ServerBusyError as error:
        return *_json_error(str(error), error.http_status), {"Retry-After": str(error.retry_after_seconds)}
    except (UploadError, ImageError, VideoError) as error:
        return _json_error(str(error), error.http_status)
    return jsonify(**result, model=model, elapsed_ms=_elapsed_ms())


def _predict_files(uploads: list):
    """The API's ``files`` request: each file scored on its own, in order, until the time is up."""
    limits: RequestLimits = current_app.extensions["request_limits"]
    _check_image_body(limits)
    explain_left = _explain_allowance()  # for the whole request
    results = []
    deadline = g.start + limits.files_seconds
    for index, upload in enumerate(uploads):
        entry = {"index": index, "filename": upload.filename or ""}
        if time.perf_counter() > deadline:
            results.append(
                {
                    **entry,
                    "error": f"not scored: the request took over {limits.files_seconds:g} s; send this file again",
                    "status": 503,
                }
            )
            continue
        try:
            result, _, analysis = _score_image(upload.read(), explain_left)
            entry.update(result)
            explain_left -= analysis.heatmap_count
        except (UploadError, ImageError) as error:
            entry.update(error=str(error), status=error.http_status)
        results.append(entry)
    return jsonify(results=results, model=current_app.extensions["model_info"]["model"], elapsed_ms=_elapsed_ms())


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok", **current_app.extensions["model_info"])


# ----------------------------------------------------------------------------- errors


@bp.app_errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    limits: RequestLimits = current_app.extensions["request_limits"]
    if request.content_length is None or request.content_length > current_app.config["MAX_CONTENT_LENGTH"]:
        message = too_large_message(limits, current_app.extensions["video_limits"])
    elif error.description != RequestEntityTooLarge.description:
        message = error.description  # InMemoryRequest's: too many files
    else:  # Werkzeug's form limits
        message = (
            f"the form has more than {limits.files + limits.form_fields} parts "
            f"or a text field over {limits.field_bytes // 1024} KB"
        )
    if request.path.startswith("/api/"):
        return _json_error(message, 413)
    return _page_error(message, 413)


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException):
    if request.path.startswith("/api/") or request.path == "/healthz":
        return _json_error(error.description or error.name, error.code or 400)
    return error


@bp.app_errorhandler(Exception)
def unexpected(error: Exception):
    log.exception("unexpected error on %s", printable(request.path))
    if request.path.startswith("/api/"):
        return _json_error("internal error while scoring the image", 500)
    return _page_error("Something went wrong on our side.", 500)


def too_large_message(limits: RequestLimits, video_limits: VideoLimits) -> str:
    """What an upload over both caps is told (the server's own 413 says the same)."""
    return (
        f"the upload is larger than {video_limits.upload_bytes // (1024 * 1024)} MB for a video "
        f"or {limits.upload_bytes // (1024 * 1024)} MB for images"
    )


# ----------------------------------------------------------------------------- one upload


def _score_image(data: bytes, max_explained: int = 0) -> tuple[dict, Image.Image, ImageScore]:
    """Decode one upload (once: the detector is handed the decoded image) and score it, with
    heatmaps for at most ``max_explained`` of its faces; keep it when the app keeps uploads."""
    if not data:
        raise UploadError("the file is empty")
    extensions = current_app.extensions
    limits: RequestLimits = extensions["request_limits"]
    image = preprocessing.probe_image(data)
    image_format = image.format  # decode() may convert, which forgets it
    with extensions["large_image"] if image.width * image.height > limits.large_image_pixels else nullcontext():
        image = preprocessing.decode(image)
        analysis = extensions["detector"].predict_decoded_faces(
            image,
            extensions["face_finder"],
            explain=max_explained > 0,
            max_faces=limits.faces_per_image,
            max_explained=max_explained,
        )
    result = analysis.to_dict()
    if extensions["upload_store"] is not None:  # never raises: a full or broken disk costs no answer
        extensions["upload_store"].keep(data, image_format, {**result, "model": extensions["model_info"]["model"]})
    return result, image, analysis


def _explain_allowance() -> int:
    """Heatmaps this request may have: ``?explain=1`` on the API, or the page's checkbox."""
    value = request.args.get("explain") or request.form.get("explain") or ""
    return current_app.extensions["request_limits"].explained_faces if value.lower() in TRUE_WORDS else 0


def _read_upload(field: str = "file") -> bytes:
    upload = request.files.get(field)
    if upload is None:
        raise UploadError(f"no file in the request: send it as multipart form field '{field}'")
    _check_image_body(current_app.extensions["request_limits"])
    return upload.read()


def _check_image_body(limits: RequestLimits) -> None:
    """Images have a smaller cap than videos; the body was let in up to the video cap."""
    if request.content_length is not None and request.content_length > limits.upload_bytes:
        raise ImageTooLargeError(f"the upload is larger than {limits.upload_bytes // (1024 * 1024)} MB")


def _uploaded_video(field: str = "file") -> BinaryIO | None:
    """The upload's in-memory stream when its first bytes are a video container's, else None."""
    upload = request.files.get(field)
    if upload is None:
        return None
    head = upload.stream.read(16)
    upload.stream.seek(0)
    return upload.stream if looks_like_video(head) else None


def _frames_asked(limits: VideoLimits) -> int:
    """``?frames=N`` (or the form's ``frames``), else the default."""
    value = request.args.get("frames") or request.form.get("frames") or ""
    if not value:
        return DEFAULT_FRAMES
    if not value.isdigit() or not 1 <= int(value) <= limits.frames:
        raise VideoError(f"frames must be a whole number from 1 to {limits.frames}, got {value[:20]!r}")
    return int(value)


def _score_video(stream: BinaryIO, thumbnail_width: int = 0) -> VideoScore:
    """Score a video upload with the app's one video worker; 503 when it stays busy."""
    extensions = current_app.extensions
    video_limits: VideoLimits = extensions["video_limits"]
    frames = _frames_asked(video_limits)
    worker = extensions["video_worker"]
    if not worker.acquire(timeout=video_limits.queue_seconds):
        raise ServerBusyError("another video is being scored; send this one again in a few seconds")
    try:
        return score_video(
            extensions["detector"], stream, extensions["face_finder"], frames, video_limits, thumbnails=thumbnail_width
        )
    finally:
        worker.release()


def _elapsed_ms() -> float:
    return round((time.perf_counter() - g.start) * 1000.0, 1)


def _json_error(message: str, status: int):
    return jsonify(error=message), status


def _page_error(message: str, status: int, headers: dict | None = None):
    return render_template("index.html", error=message), status, headers or {}

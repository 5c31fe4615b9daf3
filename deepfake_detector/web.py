"""The Flask upload page and JSON API: ``create_app(detector)``.

Uploads are kept in memory (:class:`InMemoryRequest`) and decoded by content; by default
nothing of them is written to disk. With an :class:`~deepfake_detector.uploads.UploadStore`
each scored upload is kept under a name made from its content, never the client's. Every
failure a client can cause is a 4xx with a readable message (JSON ``{"error": ...}`` for the
API); nothing leaks a stack trace. What one request may cost is bounded by :class:`RequestLimits`.

Each face in an upload is scored on its own (:mod:`deepfake_detector.faces`); the page draws
the boxes onto the preview server-side, so the strict Content-Security-Policy stays intact.
"""

from __future__ import annotations

import base64
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
from flask import Flask, Request, current_app, g, jsonify, render_template, request
from PIL import Image, ImageDraw, ImageFont
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from deepfake_detector import faces, labels
from deepfake_detector.detector import Detector, FaceScore, ImageScore
from deepfake_detector.errors import CrossSiteRequestError, ImageError, ImageTooLargeError, ServerBusyError, UploadError, VideoError
from deepfake_detector.preprocessing import decode, probe_image
from deepfake_detector.uploads import UploadStore
from deepfake_detector.video import DEFAULT_FRAMES, VideoLimits, VideoScore, data_url, looks_like_video, score_video

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


#: Box colours on the preview, as in style.css.
LABEL_COLOURS = {labels.FAKE: (179, 38, 30), labels.REAL: (27, 110, 58)}
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


def create_app(
    detector: Detector, limits: RequestLimits = RequestLimits(), face_finder: faces.FaceFinder | None = None,
    upload_store: UploadStore | None = None, video_limits: VideoLimits = VideoLimits(),
) -> Flask:
    """Build the app around an already loaded detector (tests hand in a tiny one).

    ``face_finder`` defaults to :func:`deepfake_detector.faces.default_finder`, loaded here,
    at start-up, not on the first request. ``upload_store``, when given, keeps every upload
    that was scored (page and API, each file of a ``files`` request); without it nothing is
    written anywhere. A video upload (``video_limits``) is scored by one worker at a time
    (:func:`_score_video`); it is never stored.
    """
    if not (TEMPLATES / "index.html").is_file():
        raise FileNotFoundError(f"no {TEMPLATES / 'index.html'}: the page's templates/ and static/ belong "
                                "at the top of the checkout, beside inference.py")  # fmt: skip
    app = Flask(__name__, template_folder=str(TEMPLATES), static_folder=str(STATIC))
    app.request_class = InMemoryRequest
    app.config.update(
        MAX_CONTENT_LENGTH=max(limits.upload_bytes, video_limits.upload_bytes), JSON_SORT_KEYS=False, MAX_FORM_MEMORY_SIZE=limits.field_bytes,
        MAX_FORM_PARTS=limits.files + limits.form_fields,
    )  # fmt: skip
    app.extensions["detector"] = detector
    app.extensions["request_limits"] = limits
    app.extensions["video_limits"] = video_limits
    app.extensions["video_worker"] = threading.Semaphore(1)  # one video decoded and scored at a time
    finder = face_finder or faces.default_finder()
    app.extensions["face_finder"] = finder
    model_info = detector.describe()
    one_large_image = threading.Lock()  # bounds memory: four 40 MP uploads at once took 3 GB
    if limits.explained_faces:  # Grad-CAM is traced on first use, for seconds: in the background now, not in a request
        blank = np.zeros((1, detector.image_size, detector.image_size, 3), np.uint8)
        # Not a daemon: the interpreter's exit waits for the trace to end. A daemon thread still in
        # TensorFlow's C++ code at exit is unwound by pthread_exit, which aborts a script that used
        # InferenceModel ("FATAL: exception not rethrown", status 134).
        threading.Thread(target=detector.heatmaps, args=(blank,), name="trace-grad-cam").start()

    @app.context_processor
    def page_facts():
        return {"face_finder": finder.name, "keeps_uploads": upload_store is not None,
                "verdict_words": labels.VERDICT_WORDS}

    def score(data: bytes, max_explained: int = 0) -> tuple[dict, Image.Image, ImageScore]:
        """Score one upload, with heatmaps for at most ``max_explained`` of its faces."""
        if not data:
            raise UploadError("the file is empty")
        image = probe_image(data)
        image_format = image.format  # decode() may convert, which forgets it
        with one_large_image if image.width * image.height > limits.large_image_pixels else nullcontext():
            image = decode(image)
            analysis = detector.predict_faces(image, finder, explain=max_explained > 0,
                                              max_faces=limits.faces_per_image, max_explained=max_explained)  # fmt: skip
        result = analysis.to_dict()
        if upload_store is not None:  # never raises: a full or broken disk costs no answer
            upload_store.keep(data, image_format, {**result, "model": model_info["model"]})
        return result, image, analysis

    def explain_allowance() -> int:
        """Heatmaps this request may have: ``?explain=1`` on the API, or the page's checkbox."""
        value = request.args.get("explain") or request.form.get("explain") or ""
        return limits.explained_faces if value.lower() in TRUE_WORDS else 0

    def read_upload(field: str = "file") -> bytes:
        upload = request.files.get(field)
        if upload is None:
            raise UploadError(f"no file in the request: send it as multipart form field '{field}'")
        _check_image_body(limits)
        return upload.read()

    @app.before_request
    def start_timer():
        g.start = time.perf_counter()
        if request.method == "POST" and cross_site(request):  # before the body is parsed
            error = CrossSiteRequestError("a page on another site cannot send uploads here: use this server's "
                                          "own page, or call the API from a script")  # fmt: skip
            if request.path.startswith("/api/"):
                return _json_error(str(error), error.http_status)
            return render_template("index.html", model=model_info, error=str(error)), error.http_status

    @app.after_request
    def finish(response):
        response.headers.update(SECURITY_HEADERS)
        elapsed = (time.perf_counter() - g.get("start", time.perf_counter())) * 1000
        log.info("%s %s %d %.1fms", printable(request.method), printable(request.path), response.status_code, elapsed)
        return response

    @app.get("/")
    def index():
        return render_template("index.html", model=model_info)

    @app.post("/")
    def upload_page():
        try:
            if (clip := _uploaded_video()) is not None:
                video = _video_page(_score_video(clip, thumbnail_width=240))
                return render_template("index.html", model=model_info, video=video)
            result, image, analysis = score(read_upload(), explain_allowance())
        except ServerBusyError as error:
            headers = {"Retry-After": str(error.retry_after_seconds)}
            return render_template("index.html", model=model_info, error=str(error)), error.http_status, headers
        except (UploadError, ImageError, VideoError) as error:
            return render_template("index.html", model=model_info, error=str(error)), error.http_status
        preview = _preview_data_url(image, analysis)
        return render_template("index.html", model=model_info, result=result, preview=preview)

    @app.post("/api/predict")
    def api_predict():
        many = request.files.getlist("files")
        explain_left = explain_allowance()
        if many:
            _check_image_body(limits)
            results = []
            deadline = g.start + limits.files_seconds
            for index, upload in enumerate(many):
                entry = {"index": index, "filename": upload.filename or ""}
                if time.perf_counter() > deadline:
                    results.append({**entry, "error": f"not scored: the request took over {limits.files_seconds:g} s; "
                                    "send this file again", "status": 503})  # fmt: skip
                    continue
                try:
                    result, _, analysis = score(upload.read(), explain_left)
                    entry.update(result)
                    explain_left -= analysis.heatmap_count  # the allowance is for the whole request
                except (UploadError, ImageError) as error:
                    entry.update(error=str(error), status=error.http_status)
                results.append(entry)
            return jsonify(results=results, model=model_info["model"], elapsed_ms=_elapsed_ms())
        try:
            if (clip := _uploaded_video()) is not None:
                return jsonify(**_score_video(clip).to_dict(), model=model_info["model"], elapsed_ms=_elapsed_ms())
            result = score(read_upload(), explain_left)[0]
        except ServerBusyError as error:
            return *_json_error(str(error), error.http_status), {"Retry-After": str(error.retry_after_seconds)}
        except (UploadError, ImageError, VideoError) as error:
            return _json_error(str(error), error.http_status)
        return jsonify(**result, model=model_info["model"], elapsed_ms=_elapsed_ms())

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", **model_info)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error: RequestEntityTooLarge):
        if request.content_length is None or request.content_length > app.config["MAX_CONTENT_LENGTH"]:
            message = too_large_message(limits, video_limits)
        elif error.description != RequestEntityTooLarge.description:
            message = error.description  # InMemoryRequest's: too many files
        else:  # Werkzeug's form limits
            message = (
                f"the form has more than {limits.files + limits.form_fields} parts "
                f"or a text field over {limits.field_bytes // 1024} KB"
            )
        if request.path.startswith("/api/"):
            return _json_error(message, 413)
        return render_template("index.html", model=model_info, error=message), 413

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if request.path.startswith("/api/") or request.path == "/healthz":
            return _json_error(error.description or error.name, error.code or 400)
        return error

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unexpected error on %s", printable(request.path))
        if request.path.startswith("/api/"):
            return _json_error("internal error while scoring the image", 500)
        return render_template("index.html", model=model_info, error="Something went wrong on our side."), 500

    return app


def too_large_message(limits: RequestLimits, video_limits: VideoLimits) -> str:
    """What an upload over both caps is told (the server's own 413 says the same)."""
    return (f"the upload is larger than {video_limits.upload_bytes // (1024 * 1024)} MB for a video "
            f"or {limits.upload_bytes // (1024 * 1024)} MB for images")  # fmt: skip


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
        return score_video(extensions["detector"], stream, extensions["face_finder"], frames, video_limits,
                           thumbnails=thumbnail_width)  # fmt: skip
    finally:
        worker.release()


def _video_page(analysis: VideoScore) -> dict:
    """What the page shows for a video: the answer, each track's face (its highest-scoring
    crop), the sampled frames with the tracks' boxes, and the plot's data (drawn by video.js)."""
    result = analysis.to_dict()
    track_of = {id(face.face): index for index, track in enumerate(analysis.tracks) for face in track.faces}
    for entry, track in zip(result["tracks"], analysis.tracks):
        best = max(track.faces, key=lambda face: face.face.prediction.fake_probability)
        entry["face_image"] = data_url(best.face.crop)
    frames = []
    for frame in analysis.frames:
        picture = frame.thumbnail.copy()
        if frame.analysis.faces:
            numbers = [track_of.get(id(face), 0) + 1 for face in frame.analysis.faces]
            _draw_faces(picture, frame.analysis.faces, picture.width / frame.image_width, numbers)
        frames.append({"time_s": round(frame.sampled.time_s, 2), "image": data_url(picture)})
    plot = {"threshold": analysis.prediction.threshold, "duration_s": analysis.facts.duration_s,
            "tracks": [{"times": [f["time_s"] for f in t["frames"]], "scores": [f["fake_probability"] for f in t["frames"]]}
                       for t in result["tracks"]]}  # fmt: skip
    return {"result": result, "frames": frames, "plot": plot}


def _elapsed_ms() -> float:
    return round((time.perf_counter() - g.start) * 1000.0, 1)


def _json_error(message: str, status: int):
    return jsonify(error=message), status


def _preview_data_url(image: Image.Image, analysis: ImageScore | None = None, side: int = 384) -> str:
    """A re-encoded JPEG of the upload, for the page to show (never the client's bytes), with
    each face's box, number, label and percentage drawn on it."""
    preview = image.copy()
    preview.thumbnail((side, side))
    if analysis is not None and analysis.faces:
        _draw_faces(preview, analysis.faces, preview.width / image.width)
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_faces(preview: Image.Image, face_scores: list[FaceScore], scale: float, numbers: list[int] | None = None) -> None:
    draw = ImageDraw.Draw(preview)
    font = ImageFont.load_default(size=max(12, round(preview.width / 24)))
    line = max(2, round(preview.width / 160))
    for number, face in zip(numbers or range(1, len(face_scores) + 1), face_scores):
        colour = LABEL_COLOURS[face.prediction.label]
        x, y, width, height = (value * scale for value in face.box.as_list())
        draw.rectangle((x, y, x + width, y + height), outline=colour, width=line)
        word = labels.FOLDER_NAMES[face.prediction.label]  # "Fake" or "Real"
        text = f"{number} {word} {face.prediction.fake_probability * 100:.1f}%"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_width, text_height = right - left + 6, bottom - top + 4
        label_y = y - text_height if y - text_height >= 0 else y + height  # above, else below the box
        label_x = min(max(0, x), max(0, preview.width - text_width))
        draw.rectangle((label_x, label_y, label_x + text_width, label_y + text_height), fill=colour)
        draw.text((label_x + 3 - left, label_y + 2 - top), text, fill=(255, 255, 255), font=font)

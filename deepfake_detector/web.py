"""The Flask upload page and JSON API: ``create_app(detector)``.

Uploads are read into memory, decoded by content and never written to disk, so a client's
file name never reaches the file system. Every failure a client can cause is a 4xx with a
readable message (JSON ``{"error": ...}`` for the API); nothing leaks a stack trace.

Each face in an upload is scored on its own (:mod:`deepfake_detector.faces`); the page draws
the boxes onto the preview server-side, so the strict Content-Security-Policy stays intact.
"""

from __future__ import annotations

import base64
import io
import logging
import time

from flask import Flask, g, jsonify, render_template, request
from PIL import Image, ImageDraw, ImageFont
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from deepfake_detector import faces
from deepfake_detector.detector import Detector
from deepfake_detector.preprocessing import ImageError, open_image

log = logging.getLogger(__name__)

#: Largest request body accepted (all files together).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Most files one API request may carry in ``files``.
MAX_FILES_PER_REQUEST = 16
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


class UploadError(ValueError):
    """A request without a usable file."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


#: Box colours on the preview, as in style.css.
LABEL_COLOURS = {"fake": (179, 38, 30), "real": (27, 110, 58)}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def create_app(
    detector: Detector, max_upload_bytes: int = MAX_UPLOAD_BYTES, face_finder: faces.FaceFinder | None = None
) -> Flask:
    """Build the app around an already loaded detector (tests hand in a tiny one).

    ``face_finder`` defaults to :func:`deepfake_detector.faces.default_finder`, loaded here,
    at start-up, not on the first request.
    """
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=max_upload_bytes, JSON_SORT_KEYS=False)
    app.extensions["detector"] = detector
    finder = face_finder or faces.default_finder()
    app.extensions["face_finder"] = finder
    model_info = detector.describe()

    @app.context_processor
    def page_facts():
        return {"face_finder": finder.name}

    def score(data: bytes, explain: bool = False) -> tuple[dict, Image.Image, faces.ImageScore]:
        if not data:
            raise UploadError("the file is empty")
        image = open_image(data)
        analysis = faces.score_image(detector, image, finder, explain=explain)
        return analysis.to_dict(), image, analysis

    def wants_explanation() -> bool:
        """``?explain=1`` on the API, or the page's ``explain`` checkbox."""
        value = request.args.get("explain") or request.form.get("explain") or ""
        return value.lower() in TRUE_WORDS

    def read_upload(field: str = "file") -> bytes:
        upload = request.files.get(field)
        if upload is None:
            raise UploadError(f"no file in the request: send it as multipart form field '{field}'")
        return upload.read()

    @app.before_request
    def start_timer():
        g.start = time.perf_counter()

    @app.after_request
    def finish(response):
        response.headers.update(SECURITY_HEADERS)
        elapsed = (time.perf_counter() - g.get("start", time.perf_counter())) * 1000
        log.info("%s %s %d %.1fms", request.method, request.path, response.status_code, elapsed)
        return response

    @app.get("/")
    def index():
        return render_template("index.html", model=model_info)

    @app.post("/")
    def upload_page():
        try:
            result, image, analysis = score(read_upload(), explain=wants_explanation())
        except (UploadError, ImageError) as error:
            return render_template("index.html", model=model_info, error=str(error)), error.status
        preview = _preview_data_url(image, analysis)
        return render_template("index.html", model=model_info, result=result, preview=preview)

    @app.post("/api/predict")
    def api_predict():
        many = request.files.getlist("files")
        explain = wants_explanation()
        if many:
            if len(many) > MAX_FILES_PER_REQUEST:
                return _json_error(f"at most {MAX_FILES_PER_REQUEST} files per request", 413)
            results = []
            for index, upload in enumerate(many):
                entry = {"index": index, "filename": upload.filename or ""}
                try:
                    entry.update(score(upload.read(), explain)[0])
                except (UploadError, ImageError) as error:
                    entry.update(error=str(error), status=error.status)
                results.append(entry)
            return jsonify(results=results, model=model_info["model"], elapsed_ms=_elapsed_ms())
        try:
            result = score(read_upload(), explain)[0]
        except (UploadError, ImageError) as error:
            return _json_error(str(error), error.status)
        return jsonify(**result, model=model_info["model"], elapsed_ms=_elapsed_ms())

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", **model_info)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error):
        message = f"the upload is larger than {max_upload_bytes // (1024 * 1024)} MB"
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
        log.exception("unexpected error on %s", request.path)
        if request.path.startswith("/api/"):
            return _json_error("internal error while scoring the image", 500)
        return render_template("index.html", model=model_info, error="Something went wrong on our side."), 500

    return app


def _elapsed_ms() -> float:
    return round((time.perf_counter() - g.start) * 1000.0, 1)


def _json_error(message: str, status: int):
    return jsonify(error=message), status


def _preview_data_url(image: Image.Image, analysis: faces.ImageScore | None = None, side: int = 384) -> str:
    """A re-encoded JPEG of the upload, for the page to show (never the client's bytes), with
    each face's box, number, label and percentage drawn on it."""
    preview = image.copy()
    preview.thumbnail((side, side))
    if analysis is not None and analysis.faces:
        _draw_faces(preview, analysis.faces, preview.width / image.width)
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_faces(preview: Image.Image, face_scores: list[faces.FaceScore], scale: float) -> None:
    draw = ImageDraw.Draw(preview)
    font = ImageFont.load_default(size=max(12, round(preview.width / 24)))
    line = max(2, round(preview.width / 160))
    for number, face in enumerate(face_scores, start=1):
        colour = LABEL_COLOURS[face.prediction.label]
        x, y, width, height = (value * scale for value in face.box.as_list())
        draw.rectangle((x, y, x + width, y + height), outline=colour, width=line)
        word = "Fake" if face.prediction.label == "fake" else "Real"
        text = f"{number} {word} {face.prediction.fake_probability * 100:.1f}%"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_width, text_height = right - left + 6, bottom - top + 4
        label_y = y - text_height if y - text_height >= 0 else y + height  # above, else below the box
        label_x = min(max(0, x), max(0, preview.width - text_width))
        draw.rectangle((label_x, label_y, label_x + text_width, label_y + text_height), fill=colour)
        draw.text((label_x + 3 - left, label_y + 2 - top), text, fill=(255, 255, 255), font=font)

"""The Flask upload page and JSON API: ``create_app(detector)``.

Uploads are read into memory, decoded by content and never written to disk, so a client's
file name never reaches the file system. Every failure a client can cause is a 4xx with a
readable message (JSON ``{"error": ...}`` for the API); nothing leaks a stack trace.
"""

from __future__ import annotations

import base64
import io
import logging
import time

from flask import Flask, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

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


def create_app(detector: Detector, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Flask:
    """Build the app around an already loaded detector (tests hand in a tiny one)."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=max_upload_bytes, JSON_SORT_KEYS=False)
    app.extensions["detector"] = detector
    model_info = detector.describe()

    def score(data: bytes) -> tuple[dict, object]:
        if not data:
            raise UploadError("the file is empty")
        image = open_image(data)
        prediction = detector.predict(image)
        return prediction.to_dict(), image

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
            result, image = score(read_upload())
        except (UploadError, ImageError) as error:
            return render_template("index.html", model=model_info, error=str(error)), error.status
        return render_template("index.html", model=model_info, result=result, preview=_preview_data_url(image))

    @app.post("/api/predict")
    def api_predict():
        many = request.files.getlist("files")
        if many:
            if len(many) > MAX_FILES_PER_REQUEST:
                return _json_error(f"at most {MAX_FILES_PER_REQUEST} files per request", 413)
            results = []
            for index, upload in enumerate(many):
                entry = {"index": index, "filename": upload.filename or ""}
                try:
                    entry.update(score(upload.read())[0])
                except (UploadError, ImageError) as error:
                    entry.update(error=str(error), status=error.status)
                results.append(entry)
            return jsonify(results=results, model=model_info["model"], elapsed_ms=_elapsed_ms())
        try:
            result, _ = score(read_upload())
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


def _preview_data_url(image, side: int = 384) -> str:
    """A re-encoded JPEG of the upload, for the page to show (never the client's bytes)."""
    preview = image.copy()
    preview.thumbnail((side, side))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

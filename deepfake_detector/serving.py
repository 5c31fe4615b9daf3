"""The production server: waitress, set up so that one client cannot cost everyone else.

:func:`create_server` serves the Flask app of :func:`deepfake_detector.web.create_app`, as
:class:`~deepfake_detector.inference_model.InferenceModel` runs it, with these departures from
waitress's defaults (``benchmarks/hostile_load.py`` measures each one):

* Request bodies up to the app's cap, and answers, are buffered in memory. waitress spools
  anything over 512 KB (bodies) or 1 MB (answers) to a temporary file, which would put
  uploads on disk.
* More connections (1000, not 100) and a shorter idle timeout: a hundred clients that each
  trickle a byte a second no longer fill every connection slot. Per-address limits and body
  timeouts belong to the reverse proxy in front (``docs/deployment.md``).
* waitress's own answers (400 malformed request, 413 body over the cap, 431 headers too large,
  500) are JSON, like the app's, and carry the same security headers. A request refused from its
  headers is never sent "100 Continue": its body is not invited, nor read.
* After each request with a body, freed memory is handed back to the operating system
  (glibc's ``malloc_trim``, in a thread of its own so that no client waits for it); glibc
  otherwise keeps it in its per-thread arenas, and the process stays as large as its largest
  request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from dataclasses import dataclass

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask
from werkzeug.wsgi import ClosingIterator

from deepfake_detector.web import SECURITY_HEADERS, RequestLimits, too_large_message


@dataclass(frozen=True)
class ServerConfig:
    """waitress's settings; the defaults are what ``python inference.py`` runs with."""

    threads: int = 4  # request threads; each model call already uses every core
    connection_limit: int = 1000  # open connections (waitress: 100, which 100 slow clients fill)
    channel_timeout: int = 30  # seconds a connection may stay silent before it is closed (waitress: 120)
    cleanup_interval: int = 5  # how often silent connections are looked for, in seconds (waitress: 30)
    ident: str = "deepfake-detector"  # the Server header
    return_memory: bool = True  # malloc_trim after each request with a body


class _ErrorTask(ErrorTask):
    """An answer waitress makes itself, before the app sees the request: JSON, with the app's headers."""

    def execute(self):
        error = self.request.error
        messages = getattr(self.channel.server, "messages", {})
        message = messages.get(error.code) or f"{error.reason.lower()}: {error.body}"
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), *SECURITY_HEADERS.items()])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _ErrorTask

    def send_continue(self):
        """Invite the body of an ``Expect: 100-continue`` request, unless its headers were refused
        (a Content-Length over the cap): waitress sent "100 Continue" then, and read 21 MB of the
        body before answering 413."""
        if self.request is not None and self.request.error is not None:
            self.request.expect_continue = False
            return
        super().send_continue()


class _Server(TcpWSGIServer):
    channel_class = _Channel
    messages: dict[int, str] = {}


def create_server(app: Flask, host: str, port: int, config: ServerConfig = ServerConfig()) -> _Server:
    """A waitress server for ``app`` on one address, not yet running (call ``.run()``)."""
    limits: RequestLimits = app.extensions["request_limits"]
    # waitress refuses a larger Content-Length unread; up to it, the app answers with its own
    # message. Every buffer holds at least that much, so nothing spills to a temporary file.
    body_cap = (
        app.config["MAX_CONTENT_LENGTH"] + 1024 * 1024
    )  # the video cap: images have a smaller one, checked by the app
    application = _returning_memory(app) if config.return_memory else app
    server = _Server(
        application,
        host=host,
        port=port,
        threads=config.threads,
        ident=config.ident,
        connection_limit=config.connection_limit,
        channel_timeout=config.channel_timeout,
        cleanup_interval=config.cleanup_interval,
        asyncore_use_poll=True,  # select() stops at 1024 sockets
        max_request_body_size=body_cap,
        inbuf_overflow=body_cap + 1,
        outbuf_overflow=body_cap + 1,
    )
    server.messages = {
        413: too_large_message(limits, app.extensions["video_limits"]),
        431: "the request's headers are too large",
        500: "internal error",
    }
    return server


def _load_malloc_trim():
    """glibc's ``malloc_trim``, or None on another C library."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def return_memory() -> None:
    """Hand freed heap memory back to the operating system (no-op without glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _returning_memory(wsgi_app):
    """Have :func:`return_memory` called once each request with a body has been answered."""
    due = threading.Event()

    def trim_when_due():
        while True:
            due.wait()
            due.clear()
            return_memory()  # about 10 ms in the server: off the request's path

    threading.Thread(target=trim_when_due, name="return-memory", daemon=True).start()

    def application(environ, start_response):
        body = wsgi_app(environ, start_response)
        if environ.get("CONTENT_LENGTH") in (None, "", "0"):
            return body
        return ClosingIterator(body, [due.set])

    return application

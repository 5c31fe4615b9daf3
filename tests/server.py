"""Start ``inference.py`` as a real server process on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(model_path: Path, *extra: str, timeout: float = 120.0, script: Path = REPO / "inference.py"):
    """Yield ``(base URL)`` of ``python SCRIPT --model MODEL --port P`` once /healthz answers."""
    with running_process(model_path, *extra, timeout=timeout, script=script) as (url, _):
        yield url


@contextmanager
def running_process(model_path: Path, *extra: str, timeout: float = 120.0, script: Path = REPO / "inference.py"):
    """Like :func:`running_server`, yielding ``(base URL, subprocess.Popen)``."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{port}.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(script), "--model", str(model_path), "--port", str(port), *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {log.name}")
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not answer /healthz within {timeout} s; see {log.name}")
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()

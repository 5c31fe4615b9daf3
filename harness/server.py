"""Start ``inference.py`` as a real server process on 127.0.0.1; read its memory and CPU time.

The end-to-end tests and the serving benchmarks start servers the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
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
def running_process(
    model_path: Path,
    *extra: str,
    timeout: float = 120.0,
    script: Path = REPO / "inference.py",
    env: dict[str, str] | None = None,
    root: Path = REPO,
):
    """Like :func:`running_server`, yielding ``(base URL, subprocess.Popen)``; ``env`` adds to
    or overrides the environment; ``root`` is the checkout whose package the server imports."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    log = open(Path(tempfile.gettempdir()) / f"server-{port}.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(script), "--model", str(model_path), "--port", str(port), *extra],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a running process, in MB: VmRSS and VmHWM."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["VmHWM"].split()[0]) / 1024.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, window: float = 1.0, busy_share: float = 0.05, timeout: float = 300.0) -> float:
    """Wait until a process has used under ``busy_share`` of a core for one ``window`` of seconds
    (a server answers /healthz while it still traces in the background); the seconds waited."""
    start = time.time()
    while time.time() - start < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < busy_share * window:
            break
    return time.time() - start


class _FromAddress(requests.adapters.HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str) -> requests.Session:
    """A requests session whose connections come from ``address`` (any 127.x.y.z on Linux),
    so a test can be two clients at once."""
    session = requests.Session()
    session.mount("http://", _FromAddress(address))
    return session

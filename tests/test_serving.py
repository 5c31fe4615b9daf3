"""The production server (``deepfake_detector/serving.py``) as ``python inference.py`` runs it:
uploads kept in memory, slow clients, memory handed back, telemetry off, and nginx in front
with the configuration of docs/deployment.md."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from PIL import Image

from harness.hostile import encode, noise
from harness.server import REPO, free_port, memory_mb, running_process, session_from
from tests.helpers import open_files

pytestmark = pytest.mark.slow  # every test starts inference.py (and nginx) as real processes

OTHER_ADDRESS = "127.0.0.2"  # Linux routes all of 127/8 to the loopback interface


def multipart(files: list[tuple[str, tuple[str, bytes]]]) -> tuple[bytes, str]:
    prepared = requests.Request("POST", "http://x/", files=files).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def test_a_16_file_upload_never_touches_the_disk(trained_model_path, tmp_path):
    """waitress spools bodies over 512 KB to temporary files and Werkzeug each file over 500 KB:
    the server's open files are watched while a 16 MB body arrives and is parsed."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    photo = encode(noise(640, seed=1, block=1), "JPEG", quality=95, subsampling=0)
    assert len(photo) > 600 * 1024
    body, content_type = multipart([("files", (f"{i}.jpg", photo)) for i in range(16)])
    with running_process(trained_model_path, env={"TMPDIR": str(scratch)}) as (url, process):
        before = open_files(process.pid)
        address = urlparse(url)
        seen: set[str] = set()
        with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
            sock.sendall(
                f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            sock.sendall(body[: len(body) // 2])
            time.sleep(0.5)  # half the body is in the server's buffer now
            seen |= open_files(process.pid)
            sock.sendall(body[len(body) // 2 :])
            sock.setblocking(False)
            reply, deadline = b"", time.time() + 60
            while time.time() < deadline:  # until the server closes the connection
                seen |= open_files(process.pid)  # the app parses and scores the 16 files meanwhile
                try:
                    chunk = sock.recv(1 << 16)
                except BlockingIOError:
                    time.sleep(0.005)
                    continue
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        # Every file is answered: scored, or (past the request's time budget on a loaded machine) "send again".
        assert reply.count(b'"index"') == 16 and b'"fake_probability"' in reply
        # TensorFlow's autograph writes the code it generates for traced functions here (Grad-CAM
        # is traced in the background after start-up); nothing else may appear.
        assert [path.name for path in scratch.iterdir() if not path.name.startswith("__autograph_generated_file")] == []
    new_files = {target for target in seen - before if target.startswith("/") or "(deleted)" in target}
    assert not new_files, f"the server opened files for writing while handling the upload: {sorted(new_files)}"


def test_a_hundred_slow_clients_do_not_lock_others_out(trained_model_path):
    """100 connections that each send a byte a second (16 KB of traffic filled waitress's
    default connection limit); a normal upload from another address is answered while they still hold
    their connections (how fast, benchmarks.hostile_load's slow-clients case measures)."""
    photo = encode(noise(256, seed=2), "JPEG")
    with running_process(trained_model_path) as (url, _):
        address = urlparse(url)
        request = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        slow = [socket.create_connection((address.hostname, address.port), timeout=10) for _ in range(100)]
        stop = threading.Event()

        def trickle():
            for byte in range(len(request)):
                for sock in slow:
                    try:
                        sock.send(request[byte : byte + 1])
                    except OSError:
                        pass
                if stop.wait(1.0):
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            time.sleep(3)  # every slow connection is open and has sent a few bytes
            response = session_from(OTHER_ADDRESS).post(
                f"{url}/api/predict", files={"file": ("a.jpg", photo)}, timeout=10
            )
            still_sending = sender.is_alive()  # their requests take a minute to send, a byte a second
        finally:
            stop.set()
            sender.join()
            for sock in slow:
                sock.close()
    assert response.status_code == 200 and "fake_probability" in response.json()
    assert still_sending, "the upload was answered only once the slow clients had sent their requests"


def test_memory_is_handed_back_after_a_large_image(trained_model_path):
    """A 40-megapixel RGBA PNG takes about 800 MB to decode; glibc kept it after the request."""
    flat = encode(Image.new("RGBA", (6324, 6324), (10, 200, 30, 128)), "PNG")  # 170 KB
    with running_process(trained_model_path) as (url, process):
        requests.get(f"{url}/", timeout=10)
        resident_before, _ = memory_mb(process.pid)
        for _ in range(2):  # the second one lands in memory glibc kept from the first
            response = requests.post(f"{url}/api/predict", files={"file": ("big.png", flat)}, timeout=60)
            assert response.status_code == 200
        time.sleep(0.5)
        resident_after, peak = memory_mb(process.pid)
    assert peak - resident_before > 500, "the image should have cost memory while it was scored"
    assert resident_after - resident_before < 250, (resident_before, resident_after, peak)


def test_onnxruntime_writes_no_telemetry(trained_model_path, tmp_path):
    """onnxruntime 1.32 records the OS, Python path and CPU under ~/.cache/Microsoft at import."""
    home = tmp_path / "home"
    home.mkdir()
    with running_process(trained_model_path, env={"HOME": str(home), "XDG_CACHE_HOME": ""}) as (url, _):
        assert requests.get(f"{url}/healthz", timeout=10).ok
    assert not (home / ".cache" / "Microsoft").exists()


# ----------------------------------------------------------------------------- nginx in front


NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def documented_nginx_config() -> str:
    text = (REPO / "docs" / "deployment.md").read_text()
    return re.search(r"```nginx\n(.*?)```", text, re.DOTALL).group(1)


@pytest.mark.skipif(
    NGINX is None, reason="Debian's nginx is not installed here (scripts/install-test-tools.sh installs it; CI has it)"
)
def test_nginx_with_the_documented_config_limits_one_address_and_serves_another(trained_model_path, tmp_path):
    site = documented_nginx_config()
    assert "listen 80;" in site and "server 127.0.0.1:5000;" in site
    photo = encode(noise(256, seed=3), "JPEG")
    with running_process(trained_model_path) as (app_url, _):
        port = free_port()
        site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
        site = site.replace("server 127.0.0.1:5000;", f"server 127.0.0.1:{urlparse(app_url).port};")
        with running_nginx(site, tmp_path):
            url = f"http://127.0.0.1:{port}"
            assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
            # One address starts 10 uploads and sends a little of each body: nginx holds them.
            held = []
            for _ in range(10):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(OTHER_ADDRESS, 0))
                sock.sendall(
                    b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 1000000\r\n\r\n--b\r\n"
                )
                held.append(sock)
            time.sleep(0.5)
            try:
                refused = session_from(OTHER_ADDRESS).post(
                    f"{url}/api/predict", files={"file": ("a.jpg", photo)}, timeout=10
                )
                served = session_from("127.0.0.1").post(
                    f"{url}/api/predict", files={"file": ("a.jpg", photo)}, timeout=10
                )
            finally:
                for sock in held:
                    sock.close()
    assert refused.status_code == 429, refused.text[:200]
    assert served.status_code == 200 and "fake_probability" in served.json()


class running_nginx:
    """Debian's nginx in the foreground with ``site`` as its only server, all its files under ``folder``."""

    def __init__(self, site: str, folder: Path):
        self.folder = folder / "nginx"
        self.folder.mkdir()
        (self.folder / "site.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""  # its workers must read the test's private folders
        (self.folder / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.folder}/nginx.pid;\n"
            f"error_log {self.folder}/error.log warn;\nevents {{ worker_connections 256; }}\n"
            "http {\n    access_log off;\n"
            + "".join(
                f"    {kind}_temp_path {self.folder}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"    include {self.folder}/site.conf;\n}}\n"
        )
        self.port = int(re.search(r"listen 127\.0\.0\.1:(\d+);", site).group(1))

    def __enter__(self):
        command = [
            NGINX,
            "-p",
            str(self.folder),
            "-e",
            str(self.folder / "error.log"),
            "-c",
            str(self.folder / "nginx.conf"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError as error:
                if self.process.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError(
                        f"nginx did not start: {(self.folder / 'error.log').read_text()[-2000:]}"
                    ) from error
                time.sleep(0.1)

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

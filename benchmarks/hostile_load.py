"""Hostile load: the attacks of the security review against the real server on 127.0.0.1.

    python -m benchmarks.hostile_load [--model PATH] [--checkout DIR] [--repeats 3] [--cases crowd,scans]

Each case gets a fresh ``python inference.py`` (``--checkout`` runs another copy of the repository,
e.g. ``git worktree add ../before HEAD``, with this one's payloads). Printed per case: the
answers' status codes; wall time and the server's CPU time (user + system, all threads), medians
of ``--repeats`` runs; the server's resident memory before, at its peak and 2 s after the last
run; the size of the answer; and how long a normal upload (a 256x256 face JPEG) from another
address took while the attack ran. A server over ``--rss-limit-mb`` is stopped, and a run that
has no answer after ``--timeout`` seconds is given up on; both are printed as such.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image

from benchmarks.common import face_files, jpegs_256
from deepfake_detector.detector import DEFAULT_MODEL_PATH
from harness import hostile
from harness.server import REPO, cpu_seconds, memory_mb, running_process, session_from
from harness.videos import HOSTILE_STATUS

OTHER_ADDRESS = "127.0.0.2"


@dataclass
class Payloads:
    crowd: bytes  # 1024x1024, tiled with 40 px LFW faces
    many_scans: bytes  # progressive, 40 MP of grey, 10,000 scans
    one_row_png: bytes  # says 6324x6324, holds one row
    cut_jpeg: bytes  # a 2048x2048 photo's first 2 KB, closed with EOI
    flat_png: bytes  # a real 40 MP RGBA PNG (one colour, so it is small)
    normal: bytes  # a 256x256 face JPEG
    wide_png: bytes  # 39,999,999 x 1 grey (39 KB)
    tall_png: bytes  # 1 x 39,999,999 grey
    mistyped_exif: bytes  # Orientation 6 and XResolution stored as ASCII
    rle_bmp: bytes  # 6000x6666, RLE8, one pixel per row (27 KB)
    gif_comments: bytes  # a comment of 9.5 million one-byte sub-blocks (19 MB)
    sixteen_bit: bytes  # 40 MP 16-bit grey PNG
    tiff_scans: bytes  # a TIFF whose strip is a 40 MP JPEG of 99 scans
    videos: dict[str, tuple[bytes, int]]  # harness.videos.hostile_videos: name -> (container, status it must get)


@dataclass
class Case:
    name: str
    what: str
    run: Callable[[str, Payloads, float], list[tuple[int | str, int]]]  # (url, payloads, timeout) -> [(status, bytes)]


def post(
    url: str, files, query: str = "", timeout: float = 180.0, headers: dict | None = None
) -> tuple[int | str, int]:
    """(status, answer size); status 0: no answer. A ``files`` answer's status is how many of
    its files were scored, written "200: 9/16 scored"."""
    try:
        response = requests.post(f"{url}/api/predict{query}", files=files, timeout=timeout, headers=headers)
    except requests.RequestException:
        return 0, 0
    status = response.status_code
    results = response.json().get("results") if status == 200 else None
    if results is not None:
        status = f"200: {sum('label' in entry for entry in results)}/{len(results)} scored"
    return status, len(response.content)


def concurrently(count: int, job: Callable[[], tuple[int, int]]) -> list[tuple[int, int]]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: job(), range(count)))


def slow_clients(url: str, payloads: Payloads, timeout: float) -> list[tuple[int, int]]:
    """100 connections trickling a request one byte a second for 10 s."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(url)
    request = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    sockets = []
    for _ in range(100):
        try:
            sockets.append(socket.create_connection((address.hostname, address.port), timeout=5))
        except OSError:
            break
    for byte in range(10):
        for sock in sockets:
            try:
                sock.send(request[byte : byte + 1])
            except OSError:
                pass
        time.sleep(1)
    for sock in sockets:
        sock.close()
    return [(0, 0)] * (100 - len(sockets)) + [(-1, 0)] * len(sockets)  # -1: held open, no answer expected


def many_parts(url: str, payloads: Payloads, timeout: float) -> list[tuple[int, int]]:
    body = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n' * 3000 + b"--b--\r\n"
    try:
        response = requests.post(
            f"{url}/api/predict",
            data=body,
            timeout=timeout,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        return [(response.status_code, len(response.content))]
    except requests.RequestException:
        return [(0, 0)]


def expect_continue(url: str, payloads: Payloads, timeout: float) -> list[tuple[str, int]]:
    """``Expect: 100-continue`` and a 30 MB Content-Length; the body is sent, as curl does, once invited.
    The status is written with how much of the body was sent: "413, 21 MB sent"."""
    import socket
    from urllib.parse import urlparse

    address, length, sent = urlparse(url), 30 * 2**20, 0
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % length
        )
        reply = _head(sock)
        if reply.startswith(b"HTTP/1.1 100"):
            try:
                while sent < length:
                    sent += sock.send(bytes(min(1 << 20, length - sent)))
            except OSError:
                pass
            reply = _head(sock)
    status = reply.split(b" ")[1].decode() if reply else "0"
    return [(f"{status}, {sent / 2**20:.0f} MB sent", len(reply))]


def _head(sock) -> bytes:
    reply = b""
    try:
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    except OSError:
        pass
    return reply


CROSS_SITE = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


def one(filename: str, payload: str) -> Callable:
    """A case that posts the payload once, as ``filename``."""
    return lambda u, p, t: [post(u, {"file": (filename, getattr(p, payload))}, timeout=t)]


def four(filename: str, payload: str) -> Callable:
    """A case that posts the payload in 4 requests at once."""
    return lambda u, p, t: concurrently(4, lambda: post(u, {"file": (filename, getattr(p, payload))}, timeout=t))


CASES = [
    Case("normal", "one 256x256 face JPEG", one("a.jpg", "normal")),
    Case("crowd", "1024x1024 JPEG tiled with 40 px faces", one("c.jpg", "crowd")),
    Case(
        "crowd-explain",
        "the same with ?explain=1",
        lambda u, p, t: [post(u, {"file": ("c.jpg", p.crowd)}, "?explain=1", t)],
    ),
    Case(
        "crowd-explain-x16",
        "16 of them in one request, ?explain=1",
        lambda u, p, t: [post(u, [("files", ("c.jpg", p.crowd))] * 16, "?explain=1", t)],
    ),
    Case(
        "crowd-explain-4-at-once",
        "4 such single requests at once",
        lambda u, p, t: concurrently(4, lambda: post(u, {"file": ("c.jpg", p.crowd)}, "?explain=1", t)),
    ),
    Case("scans", "progressive JPEG, 10,000 scans of 40 MP (1.1 MB)", one("s.jpg", "many_scans")),
    Case("scans-4-at-once", "4 of them at once", four("s.jpg", "many_scans")),
    Case("one-row-png", "PNG: header 6324x6324, one row of data", one("r.png", "one_row_png")),
    Case("cut-jpeg", "2048x2048 JPEG cut after 2 KB, EOI added", one("j.jpg", "cut_jpeg")),
    Case("flat-40mp-png", "a real 40 MP RGBA PNG (170 KB)", one("f.png", "flat_png")),
    Case("flat-40mp-png-4-at-once", "4 of them at once", four("f.png", "flat_png")),
    Case("parts", "3,000 form fields in one request", many_parts),
    Case("wide-png", "PNG of 39,999,999 x 1 grey pixels (39 KB)", one("w.png", "wide_png")),
    Case("wide-png-4-at-once", "4 of them at once", four("w.png", "wide_png")),
    Case("tall-png", "PNG of 1 x 39,999,999 grey pixels", one("t.png", "tall_png")),
    Case(
        "mistyped-exif",
        "files request: a JPEG with a mistyped EXIF tag, and a normal one",
        lambda u, p, t: [post(u, [("files", ("m.jpg", p.mistyped_exif)), ("files", ("a.jpg", p.normal))], timeout=t)],
    ),
    Case("rle-bmp", "RLE8 BMP, 6000x6666, one pixel per row (27 KB)", one("r.bmp", "rle_bmp")),
    Case("gif-comments", "GIF with 9.5 M one-byte comment sub-blocks (19 MB)", one("g.gif", "gif_comments")),
    Case("16-bit-40mp-png", "a 40 MP 16-bit grey PNG", one("s.png", "sixteen_bit")),
    Case("tiff-scans", "TIFF holding a 40 MP JPEG of 99 scans (libtiff stops at 100)", one("s.tif", "tiff_scans")),
    Case("expect-30mb", "Expect: 100-continue, Content-Length 30 MB", expect_continue),
    Case(
        "cross-site",
        "a normal upload with Origin and Sec-Fetch-Site of another site",
        lambda u, p, t: [post(u, {"file": ("a.jpg", p.normal)}, timeout=t, headers=CROSS_SITE)],
    ),
    Case("slow-clients", "100 connections sending 1 byte/s for 10 s", slow_clients),
]


def _video_case(name: str) -> Case:
    what = f"hostile video {name} (must get {HOSTILE_STATUS[name]})"
    return Case(f"video-{name}", what, lambda u, p, t: [post(u, {"file": (name, p.videos[name][0])}, timeout=t)])


CASES += [_video_case(name) for name in HOSTILE_STATUS]


def make_payloads() -> Payloads:
    faces = [Image.open(path) for path in face_files("Test")[:64]]
    return Payloads(
        crowd=hostile.crowd_jpeg(faces, side=1024, face_px=40),
        many_scans=hostile.many_scans_jpeg(6324, 10_000),
        one_row_png=hostile.lying_png(6324),
        cut_jpeg=hostile.cut_jpeg(hostile.encode(hostile.noise(2048), "JPEG"), 2048),
        flat_png=hostile.encode(Image.new("RGBA", (6324, 6324), (10, 200, 30, 128)), "PNG"),
        normal=jpegs_256(1)[0],
        wide_png=hostile.grey_png(39_999_999, 1),
        tall_png=hostile.grey_png(1, 39_999_999),
        mistyped_exif=hostile.mistyped_exif_jpeg(),
        rle_bmp=hostile.rle_bmp(6000, 6666),
        gif_comments=hostile.commented_gif(9_500_000),
        sixteen_bit=hostile.grey_png(6324, 6324, depth=16),
        tiff_scans=hostile.jpeg_in_tiff(6324, 99),
        videos=hostile_video_payloads(),
    )


def hostile_video_payloads() -> dict[str, tuple[bytes, int]]:
    """The hostile containers the tests post (tests/test_video.py), cut and falsified from short clips."""
    import numpy as np

    from harness import videos

    frames = [np.full((120, 160, 3), value, np.uint8) for value in range(0, 200, 10)]
    return videos.hostile_videos(
        videos.encode(frames, container="matroska"), videos.encode(frames, container="avi", codec="mpeg4")
    )


class MemoryWatch:
    """Samples the server's resident memory every 50 ms; stops the server over a limit."""

    def __init__(self, process, limit_mb: float):
        self.process, self.limit_mb = process, limit_mb
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.wait(0.05):
            try:
                if memory_mb(self.process.pid)[0] > self.limit_mb:
                    self.killed = True
                    self.process.kill()
                    return
            except (FileNotFoundError, ProcessLookupError):
                return

    def stop(self):
        self._stop.set()
        self._thread.join()


def settle(pid: int, idle_cpu: float = 0.05, limit: float = 60.0) -> None:
    """Wait until the process uses less than ``idle_cpu`` CPU seconds in half a second."""
    deadline = time.time() + limit
    while time.time() < deadline:
        start = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - start < idle_cpu:
            return


def run_case(case: Case, payloads: Payloads, args) -> dict:
    root = Path(args.checkout).resolve()
    with running_process(args.model, script=root / "inference.py", root=root) as (url, process):
        post(url, {"file": ("a.jpg", payloads.normal)})  # first request: lazy imports, pools
        settle(process.pid)  # the server traces Grad-CAM in the background after it starts
        resident_before, _ = memory_mb(process.pid)
        open(f"/proc/{process.pid}/clear_refs", "w").write("5")  # the peak counts from here
        watch = MemoryWatch(process, args.rss_limit_mb)
        walls, cpus, answers, normal_ms = [], [], [], []
        for _ in range(args.repeats):
            cpu_start = cpu_seconds(process.pid)
            result: list = []
            elapsed: list = []

            def attack_once(result=result, elapsed=elapsed):
                start = time.perf_counter()
                result.extend(case.run(url, payloads, args.timeout))
                elapsed.append(time.perf_counter() - start)

            attack = threading.Thread(target=attack_once)
            attack.start()
            time.sleep(0.5)
            if case.name != "normal":  # a normal client of another address, while the attack runs
                probe_start = time.perf_counter()
                try:
                    ok = (
                        session_from(OTHER_ADDRESS)
                        .post(f"{url}/api/predict", timeout=args.timeout, files={"file": ("a.jpg", payloads.normal)})
                        .ok
                    )
                except requests.RequestException:
                    ok = False
                normal_ms.append((time.perf_counter() - probe_start) * 1000 if ok else float("inf"))
            attack.join()
            walls.append(elapsed[0])
            if watch.killed:
                break
            cpus.append(cpu_seconds(process.pid) - cpu_start)
            answers = result
        watch.stop()
        if not watch.killed:
            time.sleep(2)
            resident_after, peak = memory_mb(process.pid)
    if watch.killed:
        return dict(case=case, killed=True, wall=max(walls))
    return dict(
        case=case,
        killed=False,
        answers=answers,
        wall=statistics.median(walls),
        cpu=statistics.median(cpus),
        before=resident_before,
        peak=peak,
        after=resident_after,
        normal_ms=statistics.median(normal_ms) if normal_ms else None,
    )


def describe(result: dict, args) -> str:
    case = result["case"]
    if result["killed"]:
        return f"| {case.name} | {case.what} | stopped: resident memory passed {args.rss_limit_mb:.0f} MB after {result['wall']:.1f} s | | | | |"
    statuses = sorted({status for status, _ in result["answers"]}, key=str)
    words = {0: "no answer", -1: "held open"}
    answers = ", ".join(
        f"{sum(s == status for s, _ in result['answers'])}x {words.get(status, status)}" for status in statuses
    )
    size = max(size for _, size in result["answers"])
    size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"
    normal = result["normal_ms"]
    normal_text = "" if normal is None else ("no answer" if normal == float("inf") else f"{normal / 1000:.2f} s")
    return (
        f"| {case.name} | {case.what} | {answers} | {result['wall']:.2f} s | {result['cpu']:.1f} s | "
        f"{result['before']:.0f} / {result['peak']:.0f} / {result['after']:.0f} | {size_text} | {normal_text} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument(
        "--checkout", default=str(REPO), help="the repository copy whose inference.py is served (default: this one)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; times are medians")
    parser.add_argument("--cases", help=f"comma-separated, of: {', '.join(case.name for case in CASES)} (default: all)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for one answer")
    parser.add_argument(
        "--rss-limit-mb", type=float, default=8000.0, help="stop a server whose resident memory passes this"
    )
    args = parser.parse_args()
    chosen = [case for case in CASES if not args.cases or case.name in args.cases.split(",")]
    payloads = make_payloads()
    print(
        f"server: {Path(args.checkout).resolve()}/inference.py, model {args.model}, {args.repeats} runs per case (medians)"
    )
    print(
        "| case | attack | answers | wall | server CPU | server RSS MB before / peak / 2 s after | answer | a normal upload meanwhile |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in chosen:
        print(describe(run_case(case, payloads, args), args), flush=True)


if __name__ == "__main__":
    main()

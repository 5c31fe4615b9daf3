"""The real server (waitress, started as ``python inference.py``) against hostile uploads."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from harness import hostile
from harness.server import memory_mb, running_process
from harness.videos import encode as encode_video
from harness.videos import hostile_videos
from tests.helpers import image_bytes, synthetic_image

pytestmark = pytest.mark.slow  # inference.py as a real server process, and the corpus to post to it


@pytest.fixture(scope="module")
def server(trained_model_path):
    with running_process(trained_model_path) as (url, process):
        yield url, process


@pytest.fixture(scope="module")
def server_url(server):
    return server[0]


def astronaut_face() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((140, 20, 320, 200))


def crowd() -> bytes:
    """512x512 tiled with the astronaut's face at 64 px: RetinaFace finds 64 faces."""
    return hostile.crowd_jpeg([astronaut_face()], side=512, face_px=64)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png(width: int = 50000, height: int = 50000) -> bytes:
    """A valid PNG header declaring a huge image, with almost no data (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def huge_gif() -> bytes:
    """A 1-pixel GIF whose logical screen claims 65000 x 65000."""
    data = bytearray(image_bytes(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65000, 65000)
    return bytes(data)


def valid_images() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    face = synthetic_image(True, rng, size=96)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    palette_alpha = face.convert("P", palette=Image.Palette.ADAPTIVE)
    palette_alpha.info["transparency"] = 0
    frames = [synthetic_image(i % 2 == 0, rng, size=64) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    sixteen = Image.fromarray((np.asarray(face.convert("L"), np.uint16) * 257).astype(np.uint16))
    return {
        "baseline.jpg": image_bytes(face, "JPEG", quality=90),
        "progressive.jpg": image_bytes(face, "JPEG", quality=80, progressive=True),
        "cmyk.jpg": image_bytes(face.convert("CMYK"), "JPEG"),
        "rotated.jpg": image_bytes(face.resize((96, 64)), "JPEG", exif=exif.tobytes()),
        "rgb.png": image_bytes(face, "PNG"),
        "gray16.png": image_bytes(sixteen, "PNG"),
        "palette.png": image_bytes(face.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_alpha.png": image_bytes(palette_alpha, "PNG"),
        "alpha.png": image_bytes(face.convert("RGBA"), "PNG"),
        "image.webp": image_bytes(face, "WEBP"),
        "image.bmp": image_bytes(face, "BMP"),
        "animated.gif": gif.getvalue(),
        "image.tiff": image_bytes(face, "TIFF"),
        "gray.png": image_bytes(face.convert("L"), "PNG"),
    }


#: The answer a case of the corpus may get when no one status is its by design (a random
#: mutation): a 200 with a verdict or a 4xx with a JSON error, whichever.
ANY_ANSWER = None


def hostile_corpus() -> dict[str, tuple[bytes, int | None]]:
    """At least 200 odd and hostile files, deterministic, by name, each with the status the server
    must answer it with (:data:`ANY_ANSWER` for random mutations)."""
    rng = np.random.default_rng(11)
    corpus: dict[str, tuple[bytes, int | None]] = {}

    def add(name: str, data: bytes, status: int | None = ANY_ANSWER) -> None:
        assert name not in corpus, f"two cases named {name!r}"
        corpus[name] = (data, status)

    valid = valid_images()
    for name, data in valid.items():
        add(name, data, 200)
    jpeg, png = valid["baseline.jpg"], valid["rgb.png"]
    for i in range(60):  # random byte flips
        for name, source in (("flip.jpg", jpeg), ("flip.png", png)):
            data = bytearray(source)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
                data[position] = int(rng.integers(0, 256))
            add(f"{i}-{name}", bytes(data))
    for fraction in np.linspace(0.05, 0.95, 20):  # truncations: never a grey or black image
        add(f"cut{fraction:.2f}.jpg", jpeg[: int(len(jpeg) * fraction)], 400)
        add(f"cut{fraction:.2f}.png", png[: int(len(png) * fraction)], 400)
    for name, data, status in [
        ("empty.jpg", b"", 400),
        ("zero.png", b"\x00" * 1000, 400),
        ("text.jpg", b"just some text, not an image\n" * 20, 400),
        ("page.png", b"<html><script>alert(1)</script></html>", 400),
        ("doc.pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 400),
        ("archive.zip", b"PK\x03\x04" + bytes(100), 400),
        ("polyglot.jpg", jpeg + b"PK\x03\x04" + bytes(200), 200),
        ("gifjs.gif", b"GIF89a/*\x00\x00\x00\x00*/=alert(1)//;", 400),
        ("wrong_ext.txt", png, 200),  # the content decides, not the name
        ("wrong_ext.gif", jpeg, 200),
        ("bomb.png", huge_png(), 413),
        ("bomb_wide.png", huge_png(1_000_000, 1), 413),
        ("bomb.gif", huge_gif(), 413),
        ("icon.ico", image_bytes(Image.new("RGB", (32, 32), "red"), "ICO"), 415),
        ("image.ppm", image_bytes(Image.new("RGB", (32, 32), "blue"), "PPM"), 415),
        ("one_pixel.png", image_bytes(Image.new("RGB", (1, 1)), "PNG"), 200),
        ("random.bin", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), 400),
        ("../../etc/passwd", png, 200),
        ("name\x00with\nnewline.png", png, ANY_ANSWER),  # how the client encodes the name decides
        ("crowd.jpg", crowd(), 200),
        ("many_scans.jpg", hostile.many_scans_jpeg(), 413),  # 40 MP, 10,000 scans: 30 s of CPU if decoded
        ("one_row.png", hostile.lying_png(), 400),  # says 6324x6324, holds one row
        ("cut_after_2kb.jpg", hostile.cut_jpeg(hostile.encode(hostile.noise(2048), "JPEG")), 400),
        ("flat_40mp.png", hostile.encode(Image.new("RGBA", (6324, 6324), (10, 200, 30, 128)), "PNG"), 200),
        *((f"short_{name}", data, 400) for name, data in hostile.short_images(hostile.noise(256, seed=5)).items()),
        # issue 29's review
        ("wide.png", hostile.grey_png(39_999_999, 1), 413),  # Lanczos built a kernel as wide as the image: 2 GB, 10 s
        ("tall.png", hostile.grey_png(1, 39_999_999), 413),
        ("wide16.png", hostile.grey_png(19_999_999, 1, depth=16), 413),
        ("mistyped_exif.jpg", hostile.mistyped_exif_jpeg(), 200),  # exif_transpose raised TypeError: a 500
        ("rle.bmp", hostile.rle_bmp(6000, 6666), 413),  # 27 KB, 5-9 s in PIL's Python decoder
        ("comments.gif", hostile.commented_gif(9_500_000), 413),  # 19 MB of one-byte sub-blocks: 2 s and 1 GB
        ("scans.tiff", hostile.jpeg_in_tiff(1024, 99), 413),  # a JPEG inside a TIFF escaped the scan limit
        ("sixteen_40mp.png", hostile.grey_png(6324, 6324, depth=16), 200),
    ]:
        add(name, data, status)
    seeds = {
        name: data
        for name, (data, _) in corpus.items()
        if name
        in ("baseline.jpg", "rotated.jpg", "image.webp", "image.tiff", "image.bmp", "animated.gif", "gray16.png")
    }
    for name, data in hostile.mutants({**seeds, "mistyped_exif.jpg": hostile.mistyped_exif_jpeg()}, count=8, seed=29):
        add(name, data)
    for i in range(40):
        add(f"hostile.noise{i}.jpg", rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes())
    for name, (data, status) in video_corpus().items():
        add(name, data, status)
    return corpus


def video_corpus() -> dict[str, tuple[bytes, int]]:
    """Hostile containers (harness/videos.py) and the status each must get."""
    frames = [np.full((120, 160, 3), value, np.uint8) for value in range(0, 200, 10)]
    return hostile_videos(
        encode_video(frames, container="matroska"), encode_video(frames, container="avi", codec="mpeg4")
    )


def test_every_hostile_case_gets_its_answer_and_the_server_stays_up(server):
    """Each of 200+ hostile files: its status where one is its by design, and always a JSON answer,
    a verdict or a 4xx with an error (never a 5xx or a trace); memory stays bounded throughout."""
    server_url, process = server
    corpus = hostile_corpus()
    assert len(corpus) >= 200
    wrong = {}
    for name, (data, status) in corpus.items():  # how long each takes is benchmarks.hostile_load's to measure
        response = requests.post(f"{server_url}/api/predict", files={"file": (name, data)}, timeout=30)
        assert response.status_code < 500, (name, response.status_code, response.text[:200])
        assert response.headers["Content-Type"].startswith("application/json"), name
        body = response.json()
        if response.ok:
            assert body["label"] in ("fake", "real") and 0 <= body["fake_probability"] <= 1, name
        else:
            assert 400 <= response.status_code < 500 and isinstance(body["error"], str) and body["error"], name
            assert "Traceback" not in response.text and "/work" not in response.text
        if status is not ANY_ANSWER and response.status_code != status:
            wrong[name] = f"{response.status_code}, not {status}: {body.get('error', '')}"
    assert wrong == {}
    assert memory_mb(process.pid)[1] < 2048, "peak resident memory over 2 GB"
    assert requests.get(f"{server_url}/healthz", timeout=10).json()["status"] == "ok"


def test_a_crowd_has_its_largest_faces_scored_and_says_how_many_it_found(server_url):
    body = requests.post(f"{server_url}/api/predict", files={"file": ("crowd.jpg", crowd())}, timeout=30).json()
    assert body["faces_found"] == 64 and body["faces_scored"] == len(body["faces"]) == 20
    assert [face["box"][0] for face in body["faces"]] == sorted(face["box"][0] for face in body["faces"])
    assert all("heatmap" not in face for face in body["faces"])


def test_explained_faces_are_capped_per_request(server_url):
    """``?explain=1`` costs a backward pass per face: 8 per request, the highest scores first."""
    one = requests.post(f"{server_url}/api/predict?explain=1", files={"file": ("c.jpg", crowd())}, timeout=30).json()
    explained = [face for face in one["faces"] if "heatmap" in face]
    assert len(explained) == 8
    lowest_explained = min(face["fake_probability"] for face in explained)
    assert all(face["fake_probability"] <= lowest_explained for face in one["faces"] if "heatmap" not in face)
    many = requests.post(
        f"{server_url}/api/predict?explain=1", files=[("files", ("c.jpg", crowd()))] * 3, timeout=60
    ).json()
    counts = [sum("heatmap" in face for face in entry["faces"]) for entry in many["results"]]
    assert counts == [8, 0, 0]


def test_waitress_own_errors_are_json_with_the_security_headers(server_url):
    """Answers waitress makes before the app sees the request: headers too large, a body over
    the cap (refused from its Content-Length), a malformed request line."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(server_url)
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
    requests_and_statuses = [
        # exactly waitress's header limit, unterminated: it answers on the last byte, with none left unread
        (start + b"a" * (262_144 - len(start)), 431),
        (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 199999999\r\n\r\n", 413),
        (b"GET /\x00 HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400),
    ]
    for raw, status in requests_and_statuses:
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            sock.sendall(raw)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == str(status).encode(), head[:100]
        for header in (b"Content-Security-Policy", b"X-Content-Type-Options", b"Referrer-Policy", b"X-Frame-Options"):
            assert header in head, (status, header)
        assert b"application/json" in head and json.loads(body)["error"]
        if status == 413:
            assert json.loads(body)["error"] == "the upload is larger than 100 MB for a video or 20 MB for images"


@pytest.mark.parametrize("field, message", [("files", "at most 16 files per request"), ("note", "more than 24 parts")])
def test_thousands_of_parts_get_their_own_message(server_url, field, message):
    filename = '; filename="a.png"' if field == "files" else ""
    part = f'--b\r\nContent-Disposition: form-data; name="{field}"{filename}\r\n\r\nx\r\n'.encode()
    body = part * 3000 + b"--b--\r\n"
    response = requests.post(
        f"{server_url}/api/predict", data=body, timeout=30, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413
    assert message in response.json()["error"] and "larger than" not in response.json()["error"]


def test_many_files_in_one_request(server_url):
    valid = valid_images()
    files = [
        ("files", ("a.png", valid["rgb.png"])),
        ("files", ("bad.txt", b"nope")),
        ("files", ("b.jpg", valid["baseline.jpg"])),
    ]
    body = requests.post(f"{server_url}/api/predict", files=files, timeout=30).json()
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert "fake_probability" in results[0] and "fake_probability" in results[2]
    assert results[1]["error"] and results[1]["status"] == 400


def test_too_many_files_is_413(server_url):
    files = [("files", (f"{i}.png", b"x")) for i in range(17)]
    response = requests.post(f"{server_url}/api/predict", files=files, timeout=30)
    assert response.status_code == 413 and "at most" in response.json()["error"]


def test_oversized_body_is_refused_with_json(server_url):
    big = bytes(21 * 1024 * 1024)  # over the 20 MB cap
    response = requests.post(f"{server_url}/api/predict", files={"file": ("big.png", big)}, timeout=60)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_huge_declared_body_is_refused_unread(server_url):
    """A Content-Length of 10 GB is refused from the header; the server does not wait for it."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(server_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10737418240\r\n\r\n--b\r\n"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413") or reply.startswith(b"HTTP/1.0 413"), reply[:100]


def _reply_head(sock) -> bytes:
    reply = b""
    while b"\r\n\r\n" not in reply and (chunk := sock.recv(4096)):
        reply += chunk
    return reply


def test_a_body_over_the_cap_is_not_invited_by_100_continue(server_url):
    """``Expect: 100-continue`` with a Content-Length over the cap (30 MB when it was 20 MB; 150 MB since videos raised it to 100 MB): waitress answered "100 Continue" and
    read 21 MB of the body before its 413. The first answer is the 413 now; a body within the cap
    is still invited."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(server_url)
    upload = requests.Request("POST", "http://x/", files={"file": ("a.png", valid_images()["rgb.png"])}).prepare()

    def head(length: int) -> bytes:
        return (
            f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {upload.headers['Content-Type']}\r\n"
            f"Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head(150 * 1024 * 1024))
        reply = _reply_head(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head(len(upload.body)))
        assert _reply_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(upload.body)
        assert _reply_head(sock).startswith(b"HTTP/1.1 200"), "the invited body is scored"


def test_security_headers_from_the_real_server(server_url):
    response = requests.get(server_url, timeout=10)
    assert response.ok
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"):
        assert header in response.headers
    assert "Werkzeug" not in response.headers.get("Server", "")


def test_wait_until_idle_waits_out_a_busy_start_and_not_an_idle_process():
    """The benchmarks measure a server only once its start-up work (a background trace) is done."""
    import subprocess
    import sys

    from harness.server import wait_until_idle

    busy_then_idle = "import time\nend = time.time() + 1.2\nwhile time.time() < end: pass\ntime.sleep(30)"
    for code, least, most in ((busy_then_idle, 1.0, 4.0), ("import time; time.sleep(30)", 0.0, 1.0)):
        process = subprocess.Popen([sys.executable, "-c", code])
        try:
            waited = wait_until_idle(process.pid, window=0.3, timeout=10)
        finally:
            process.kill()
            process.wait()
        assert least <= waited <= most, (code, waited)

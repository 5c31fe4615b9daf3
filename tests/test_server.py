"""The real server (waitress, started as ``python inference.py``) against hostile uploads."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import image_bytes, synthetic_image
from tests.server import running_server


@pytest.fixture(scope="module")
def server_url(trained_model_path):
    with running_server(trained_model_path) as url:
        yield url


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


def hostile_corpus() -> list[tuple[str, bytes]]:
    """At least 200 odd and hostile files, deterministic."""
    rng = np.random.default_rng(11)
    valid = valid_images()
    corpus = list(valid.items())
    jpeg, png = valid["baseline.jpg"], valid["rgb.png"]
    for i in range(60):  # random byte flips
        for name, source in (("flip.jpg", jpeg), ("flip.png", png)):
            data = bytearray(source)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
                data[position] = int(rng.integers(0, 256))
            corpus.append((f"{i}-{name}", bytes(data)))
    for fraction in np.linspace(0.05, 0.95, 20):  # truncations
        corpus.append((f"cut{fraction:.2f}.jpg", jpeg[: int(len(jpeg) * fraction)]))
        corpus.append((f"cut{fraction:.2f}.png", png[: int(len(png) * fraction)]))
    corpus += [
        ("empty.jpg", b""),
        ("zero.png", b"\x00" * 1000),
        ("text.jpg", b"just some text, not an image\n" * 20),
        ("page.png", b"<html><script>alert(1)</script></html>"),
        ("doc.pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
        ("archive.zip", b"PK\x03\x04" + bytes(100)),
        ("polyglot.jpg", jpeg + b"PK\x03\x04" + bytes(200)),
        ("gifjs.gif", b"GIF89a/*\x00\x00\x00\x00*/=alert(1)//;"),
        ("wrong_ext.txt", png),
        ("wrong_ext.gif", jpeg),
        ("bomb.png", huge_png()),
        ("bomb_wide.png", huge_png(1_000_000, 1)),
        ("bomb.gif", huge_gif()),
        ("icon.ico", image_bytes(Image.new("RGB", (32, 32), "red"), "ICO")),
        ("image.ppm", image_bytes(Image.new("RGB", (32, 32), "blue"), "PPM")),
        ("one_pixel.png", image_bytes(Image.new("RGB", (1, 1)), "PNG")),
        ("random.bin", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()),
        ("../../etc/passwd", png),
        ("name\x00with\nnewline.png", png),
    ]
    corpus += [(f"noise{i}.jpg", rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()) for i in range(40)]
    return corpus


def test_corpus_is_big_enough():
    assert len(hostile_corpus()) >= 200


def test_hostile_corpus_never_breaks_the_server(server_url):
    outcomes = {}
    for name, data in hostile_corpus():
        response = requests.post(f"{server_url}/api/predict", files={"file": (name, data)}, timeout=30)
        assert response.status_code < 500, (name, response.status_code, response.text[:200])
        body = response.json()
        if response.ok:
            assert body["label"] in ("fake", "real") and 0 <= body["fake_probability"] <= 1, name
        else:
            assert 400 <= response.status_code < 500 and body["error"], name
            assert "Traceback" not in response.text and "/work" not in response.text
        outcomes[name] = response.status_code
    for name in valid_images():
        assert outcomes[name] == 200, (name, outcomes[name])
    assert outcomes["bomb.png"] == 413 and outcomes["bomb.gif"] == 413
    assert outcomes["icon.ico"] == 415
    assert outcomes["empty.jpg"] == 400
    assert requests.get(f"{server_url}/healthz", timeout=10).json()["status"] == "ok"


def test_many_files_in_one_request(server_url):
    valid = valid_images()
    files = [("files", ("a.png", valid["rgb.png"])), ("files", ("bad.txt", b"nope")), ("files", ("b.jpg", valid["baseline.jpg"]))]
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


def test_security_headers_from_the_real_server(server_url):
    response = requests.get(server_url, timeout=10)
    assert response.ok
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"):
        assert header in response.headers
    assert "Werkzeug" not in response.headers.get("Server", "")

"""Tests for the dataset modules (download, data, labels, decoding): download (against a real
local HTTP server), extraction, dataset folders, image listing and decoding."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector import data, labels
from deepfake_detector.decoding import decode_images
from deepfake_detector.download import download, extract
from deepfake_detector.errors import DatasetError
from deepfake_detector.recipes import DataConfig

BODY = os.urandom(200_001)  # odd size: "half" is not a round number


# ----------------------------------------------------------------------------- HTTP server


class FileServer:
    """Serves ``files`` (name -> bytes) from memory on 127.0.0.1 and records every request.

    ``mode``: ``"normal"``; ``"cut"`` announces the whole length but closes the connection
    after half of it; ``"no-range"`` ignores Range headers (answers 200 with everything).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_GET(self):
                server.requests.append(dict(self.headers.items()))
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = 0, 200
                requested = self.headers.get("Range")
                if requested and server.mode != "no-range":
                    match = re.fullmatch(r"bytes=(\d+)-", requested)
                    assert match, requested
                    start = int(match[1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                payload = body[start:]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.mode == "cut":
                    payload = payload[: len(payload) // 2]
                    self.close_connection = True
                self.wfile.write(payload)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    @property
    def ranges(self) -> list[str | None]:
        return [headers.get("Range") for headers in self.requests]


@pytest.fixture
def server():
    srv = FileServer()
    srv.files["f.zip"] = BODY
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- download


def test_download_complete(server, tmp_path):
    destination = tmp_path / "dl" / "f.zip"
    assert download(server.url("f.zip"), destination) == destination
    assert destination.read_bytes() == BODY
    assert names(destination.parent) == ["f.zip"]  # no .part left
    assert server.ranges == [None]


def test_download_resumes_after_cut_connection(server, tmp_path):
    destination = tmp_path / "dl" / "f.zip"
    half = len(BODY) // 2
    server.mode = "cut"
    with pytest.raises(DatasetError, match="run again to resume"):
        download(server.url("f.zip"), destination)
    assert not destination.exists()
    assert names(destination.parent) == ["f.zip.part"]
    assert (destination.parent / "f.zip.part").read_bytes() == BODY[:half]  # nothing received is lost

    server.mode = "normal"
    download(server.url("f.zip"), destination)
    assert server.ranges == [None, f"bytes={half}-"]
    assert destination.read_bytes() == BODY
    assert names(destination.parent) == ["f.zip"]


def test_download_starts_over_when_server_ignores_range(server, tmp_path):
    destination = tmp_path / "f.zip"
    (tmp_path / "f.zip.part").write_bytes(b"x" * 1000)
    server.mode = "no-range"
    download(server.url("f.zip"), destination)
    assert server.ranges == ["bytes=1000-"]
    assert destination.read_bytes() == BODY
    assert names(tmp_path) == ["f.zip"]


def test_download_whole_part_file_is_finished_by_416(server, tmp_path):
    destination = tmp_path / "f.zip"
    (tmp_path / "f.zip.part").write_bytes(BODY)
    download(server.url("f.zip"), destination, sha256=hashlib.sha256(BODY).hexdigest())
    assert server.ranges == [f"bytes={len(BODY)}-"]
    assert destination.read_bytes() == BODY
    assert names(tmp_path) == ["f.zip"]


def test_download_part_file_longer_than_remote_is_removed(server, tmp_path):
    destination = tmp_path / "f.zip"
    (tmp_path / "f.zip.part").write_bytes(BODY + b"junk")
    with pytest.raises(DatasetError, match="run again"):
        download(server.url("f.zip"), destination)
    assert names(tmp_path) == []  # neither a destination that looks finished nor the bad .part


def test_download_wrong_checksum_leaves_nothing(server, tmp_path):
    destination = tmp_path / "f.zip"
    with pytest.raises(DatasetError, match="SHA-256"):
        download(server.url("f.zip"), destination, sha256="0" * 64)
    assert names(tmp_path) == []


def test_download_right_checksum(server, tmp_path):
    destination = tmp_path / "f.zip"
    download(server.url("f.zip"), destination, sha256=hashlib.sha256(BODY).hexdigest().upper())
    assert destination.read_bytes() == BODY
    assert names(tmp_path) == ["f.zip"]


def test_download_existing_file_is_checked_not_fetched(server, tmp_path):
    destination = tmp_path / "f.zip"
    destination.write_bytes(b"something else")
    with pytest.raises(DatasetError, match="SHA-256"):
        download(server.url("f.zip"), destination, sha256=hashlib.sha256(BODY).hexdigest())
    assert destination.read_bytes() == b"something else"  # an existing file is never deleted
    assert server.requests == []


def test_download_http_404(server, tmp_path):
    destination = tmp_path / "missing.zip"
    with pytest.raises(DatasetError, match="404"):
        download(server.url("missing.zip"), destination)
    assert names(tmp_path) == []


def test_download_connection_refused_is_dataset_error(tmp_path):
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatasetError, match="failed"):
        download(f"http://127.0.0.1:{port}/f.zip", tmp_path / "f.zip", timeout=5)
    assert names(tmp_path) == []


# ----------------------------------------------------------------------------- extract


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name), content)
    return path


def test_extract_normal_zip(tmp_path):
    archive = make_zip(tmp_path / "in" / "a.zip", {"Dataset/Train/Real/a.txt": b"aaa", "b.txt": b"bb"})
    target = tmp_path / "out" / "extracted"
    assert extract(archive, target) == target
    assert (target / "Dataset" / "Train" / "Real" / "a.txt").read_bytes() == b"aaa"
    assert (target / "b.txt").read_bytes() == b"bb"
    assert names(target.parent) == ["extracted"]  # no temporary folder left behind


@pytest.mark.parametrize("evil", ["../evil.txt", "sub/../../evil.txt", "ABSOLUTE"])
def test_extract_refuses_paths_outside_target(tmp_path, evil):
    if evil == "ABSOLUTE":
        evil = str(tmp_path / "abs_evil.txt")
    archive = make_zip(tmp_path / "in" / "a.zip", {"ok.txt": b"fine", evil: b"pwned"})
    target = tmp_path / "out" / "extracted"
    with pytest.raises(DatasetError, match="outside the target"):
        extract(archive, target)
    assert not target.exists()
    assert names(target.parent) == []  # no half-extracted temp folder
    assert names(tmp_path) == ["in", "out"]  # nothing written next to the target's folder
    assert names(tmp_path / "in") == ["a.zip"]
    assert not (tmp_path / "abs_evil.txt").exists()


def test_extract_refuses_symlink_member(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_not_a_zip(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(DatasetError, match="not a readable zip"):
        extract(archive, tmp_path / "out")
    with pytest.raises(DatasetError, match="not a readable zip"):
        extract(tmp_path / "missing.zip", tmp_path / "out")
    assert names(tmp_path) == ["a.zip"]


def test_extract_corrupt_member_is_dataset_error(tmp_path):
    content = b"A" * 5000
    raw = make_zip(tmp_path / "good.zip", {"a.txt": content}, zipfile.ZIP_STORED).read_bytes()
    start = raw.index(content)
    archive = tmp_path / "bad.zip"
    archive.write_bytes(raw[: start + 10] + b"B" + raw[start + 11 :])  # fails the CRC check
    target = tmp_path / "out" / "extracted"
    with pytest.raises(DatasetError, match="corrupt"):
        extract(archive, target)
    assert names(target.parent) == []


def test_extract_refuses_a_zip_bomb_before_writing(tmp_path):
    """A small zip with a member that inflates a thousandfold (the review's: 3 GiB in 3.2 MB) was
    extracted until the disk was full, then a traceback."""
    archive = tmp_path / "in" / "bomb.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        bomb.writestr("Dataset/a.jpg", b"jpeg" * 1000)
        bomb.writestr("Dataset/b.bin", bytes(50 * 2**20))
    assert archive.stat().st_size < 100_000
    target = tmp_path / "out" / "extracted"
    with pytest.raises(DatasetError, match="times its size") as info:
        extract(archive, target)
    assert "\n" not in str(info.value)
    assert names(target.parent) == []


def test_extract_refuses_more_than_the_free_space_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from deepfake_detector import download

    archive = make_zip(
        tmp_path / "in" / "a.zip", {f"Dataset/{i}.bin": np.random.default_rng(i).bytes(20_000) for i in range(5)}
    )
    target = tmp_path / "out" / "extracted"
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 50_000})())
    with pytest.raises(DatasetError, match="needs 0.00 GB .* free"):
        extract(archive, target)
    monkeypatch.undo()

    written = []

    def fill_up(self, member, path=None, pwd=None):
        written.append(member)
        if len(written) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return extract_member(self, member, path, pwd)

    extract_member = zipfile.ZipFile.extract
    monkeypatch.setattr(zipfile.ZipFile, "extract", fill_up)
    with pytest.raises(DatasetError, match="filled up while extracting") as info:
        extract(archive, target)
    assert "\n" not in str(info.value) and names(target.parent) == []  # the scratch folder is gone


# ----------------------------------------------------------------------------- folders


def make_splits(root: Path, splits=data.SPLITS) -> Path:
    for split in splits:
        (root / split).mkdir(parents=True)
    return root


def test_find_dataset_root_here(tmp_path):
    assert data.find_dataset_root(make_splits(tmp_path / "root")) == tmp_path / "root"


def test_find_dataset_root_in_dataset_folder(tmp_path):
    make_splits(tmp_path / "root" / "Archive")  # sorts before Dataset/, but Dataset/ is preferred
    make_splits(tmp_path / "root" / "Dataset")
    assert data.find_dataset_root(tmp_path / "root") == tmp_path / "root" / "Dataset"


def test_find_dataset_root_after_extract_into_extracted(tmp_path):
    # what training does: the archive is extracted into DATA/extracted and holds Dataset/
    make_splits(tmp_path / "root" / "extracted" / "Dataset")
    (tmp_path / "root" / "deepfake-and-real-images.zip").write_bytes(b"zip")
    assert data.find_dataset_root(tmp_path / "root") == tmp_path / "root" / "extracted" / "Dataset"


def test_find_dataset_root_missing_split_is_named(tmp_path):
    make_splits(tmp_path / "root", ("Train", "Validation"))
    with pytest.raises(DatasetError) as caught:
        data.find_dataset_root(tmp_path / "root")
    message = str(caught.value)
    assert "Test/" in message and "no Test/" in message
    assert "no Train/" not in message


def test_find_dataset_root_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="Train/.*Validation/.*Test/"):
        data.find_dataset_root(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such folder"):
        data.find_dataset_root(tmp_path / "nope")


# ----------------------------------------------------------------------------- images


def make_image(path: Path, color=(255, 0, 0), size=(8, 6), fmt="PNG", noise=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if noise:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    else:
        image = Image.new("RGB", size, color)
    image.save(path, fmt)
    return path


def class_dir(folder: Path, class_name: str) -> Path:
    return folder / labels.FOLDER_NAMES[class_name]


def expected_label(class_name: str) -> int:
    return labels.TRAINING_CLASS_ORDER.index(class_name)


def test_training_class_order_is_real_then_fake():
    assert expected_label(labels.REAL) == 0 and expected_label(labels.FAKE) == 1


@pytest.mark.parametrize("missing", labels.TRAINING_CLASS_ORDER)
def test_labelled_files_missing_class_folder(tmp_path, missing):
    for class_name in labels.TRAINING_CLASS_ORDER:
        if class_name != missing:
            make_image(class_dir(tmp_path, class_name) / "a.png")
    with pytest.raises(DatasetError, match=f"no {labels.FOLDER_NAMES[missing]}/ folder"):
        labels.labelled_files(tmp_path)


@pytest.mark.parametrize("empty", labels.TRAINING_CLASS_ORDER)
def test_labelled_files_empty_class_folder(tmp_path, empty):
    for class_name in labels.TRAINING_CLASS_ORDER:
        if class_name == empty:
            class_dir(tmp_path, class_name).mkdir(parents=True)
            (class_dir(tmp_path, class_name) / "notes.txt").write_text("not an image")
        else:
            make_image(class_dir(tmp_path, class_name) / "a.png")
    with pytest.raises(DatasetError, match=f"{labels.FOLDER_NAMES[empty]} has no images"):
        labels.labelled_files(tmp_path)


def test_split_cache_labels_and_unreadable_files(tmp_path):
    from deepfake_detector.cache import open_split

    real, fake = class_dir(tmp_path, labels.REAL), class_dir(tmp_path, labels.FAKE)
    make_image(real / "r1.png")
    make_image(real / "nested" / "r2.jpg", fmt="JPEG")
    (real / "x.jpg").write_bytes(b"\x00garbage, not a jpeg" * 20)
    (real / "readme.txt").write_text("ignored: not an image suffix")
    make_image(fake / "f1.PNG")
    make_image(fake / "f2.webp", fmt="WEBP")
    make_image(fake / "f3.bmp", fmt="BMP")

    split = open_split(tmp_path, tmp_path / ".cache", DataConfig(image_size=16))
    assert split.info["skipped"] == 1 and str(real / "x.jpg") in split.meta["skipped"]
    assert len(split) == 5 and split.labels.dtype == np.int32
    paths = [p for p in labels.labelled_files(tmp_path)[0] if not p.endswith("x.jpg")]
    for path, label in zip(paths, split.labels):
        class_name = labels.REAL if Path(path).is_relative_to(real) else labels.FAKE
        assert label == expected_label(class_name), path
    assert (split.info["n_real"], split.info["n_fake"]) == (2, 3)


def test_split_cache_class_with_only_unreadable_files(tmp_path):
    from deepfake_detector.cache import open_split

    make_image(class_dir(tmp_path, labels.REAL) / "a.png")
    class_dir(tmp_path, labels.FAKE).mkdir(parents=True)
    (class_dir(tmp_path, labels.FAKE) / "x.jpg").write_bytes(b"garbage" * 10)
    with pytest.raises(DatasetError, match=f"{labels.FOLDER_NAMES[labels.FAKE]} has no readable images"):
        open_split(tmp_path, tmp_path / ".cache", DataConfig(image_size=16))


def test_labelled_files_one_class_allowed_without_require_both(tmp_path):
    make_image(class_dir(tmp_path, labels.FAKE) / "a.png")
    paths, targets = labels.labelled_files(tmp_path, require_both=False)
    assert targets == [expected_label(labels.FAKE)]


def test_decode_images_sizes_order_and_failures(tmp_path):
    red = make_image(tmp_path / "red.png", (255, 0, 0), size=(10, 6))
    blue = make_image(tmp_path / "blue.jpg", (0, 0, 255), size=(5, 9), fmt="JPEG")
    green = make_image(tmp_path / "green.bmp", (0, 255, 0), size=(16, 16), fmt="BMP")
    jpeg = make_image(tmp_path / "full.jpg", size=(64, 64), fmt="JPEG", noise=True).read_bytes()
    png = make_image(tmp_path / "full.png", size=(64, 64), noise=True).read_bytes()
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png[: len(png) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"nope" * 50)
    paths = [str(p) for p in (red, cut_jpeg, blue, garbage, cut_png, green, tmp_path / "missing.png")]

    images, kept, failures = decode_images(paths, 16, workers=2)
    assert images.dtype == np.uint8
    assert images.shape == (3, 16, 16, 3)
    assert kept.tolist() == [0, 2, 5]
    assert set(failures) == {paths[1], paths[3], paths[4], paths[6]}
    assert all(isinstance(reason, str) and reason for reason in failures.values())
    # images are in the order of ``kept``: red, blue, green
    means = images.reshape(3, -1, 3).mean(axis=1)
    assert means.argmax(axis=1).tolist() == [0, 2, 1]
    assert (means.max(axis=1) > 200).all()


def test_decode_images_nothing(tmp_path):
    images, kept, failures = decode_images([], 12)
    assert images.shape == (0, 12, 12, 3) and images.dtype == np.uint8
    assert kept.tolist() == [] and failures == {}


def test_unzip_puts_the_dataset_where_the_caller_said(tmp_path):
    from deepfake_detector.data import DatasetHandler

    make_zip(
        tmp_path / "data" / "dataset.zip",
        {f"Dataset/{split}/{cls}/x.jpg": b"x" for split in ("Train", "Validation", "Test") for cls in ("Real", "Fake")}
        | {"readme.txt": b"hi"},
    )
    handler = DatasetHandler(dataset_download_dir=tmp_path / "data", dataset_dir=tmp_path / "data" / "Dataset")
    assert handler.unzip_dataset()
    assert (tmp_path / "data" / "Dataset" / "Test" / "Fake" / "x.jpg").read_bytes() == b"x"
    assert not (tmp_path / "data" / "extracted").exists() and handler.find() == tmp_path / "data" / "Dataset"
    assert handler.unzip_dataset()  # found there: nothing extracted again
    without = DatasetHandler(
        dataset_download_dir=tmp_path / "other", config=DataConfig(archive=str(tmp_path / "data" / "dataset.zip"))
    )
    assert without.unzip_dataset() and without.find() == tmp_path / "other" / "extracted" / "Dataset"


def test_the_tutorials_split_loaders_stream_labelled_batches(tmp_path):
    """DatasetHandler.load_split_data and get_image_dataset_from_directory, the tutorial's public methods."""
    from deepfake_detector.data import DatasetHandler
    from tests.helpers import make_dataset

    data = make_dataset(tmp_path / "data", {"Train": 6, "Validation": 3, "Test": 4})
    handler = DatasetHandler(
        dataset_download_dir=data, config=DataConfig(image_size=24, batch_size=4, cache_dir=str(tmp_path / "cache"))
    )
    train, test, val = handler.load_split_data()  # the tutorial's order
    for dataset, count in ((train, 12), (test, 8), (val, 6)):
        assert dataset.class_names == ["Real", "Fake"]
        images, targets = (np.concatenate(part) for part in zip(*((x.numpy(), y.numpy()) for x, y in dataset)))
        assert images.shape == (count, 24, 24, 3) and images.dtype == np.uint8 and targets.shape == (count, 1)
        assert sorted(targets[:, 0].tolist()) == [0.0] * (count // 2) + [1.0] * (count // 2)
        # Fakes carry the bright square (tests/helpers.py): the label follows the image.
        assert all((image.max() == 255) == bool(target[0]) for image, target in zip(images, targets))
    first, second = ([y.numpy()[:, 0].tolist() for _, y in train] for _ in range(2))
    assert first != second  # a fresh shuffle every epoch; Test and Validation keep the files' order
    assert [y.numpy()[:, 0].tolist() for _, y in test] == [[0.0] * 4, [1.0] * 4]
    with pytest.raises(DatasetError, match="not one of this dataset's split folders"):
        handler.get_image_dataset_from_directory("Dataset")

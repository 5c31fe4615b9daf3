"""Kept uploads (``deepfake_detector/uploads.py`` through ``create_app(upload_store=...)``):
names made by the server, the size cap, disk errors, many request threads at once."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import image_bytes, synthetic_image

REPO = Path(__file__).resolve().parent.parent
IMAGE_NAME = re.compile(r"[0-9a-f]{64}\.(jpg|png|webp|bmp|gif|tiff)")
SIDECAR_NAME = re.compile(r"[0-9a-f]{64}\.json")
HOSTILE_NAMES = [
    "../../etc/passwd",
    "../../../../tmp/escape.png",
    "/etc/passwd",
    "/tmp/absolute.png",
    "a\x00b.png",
    "x" * 300 + ".png",
    "ünïcødé 顔 😀.png",
    ".htaccess",
    "..\\..\\windows.png",
    "",
    ".",
    "..",
    "uploads/../../x.png",
    "%2e%2e%2fencoded.png",
    "COM1",
    "a.json",
]


def distinct_images(count: int, fmt: str = "PNG", size: int = 48) -> list[bytes]:
    images = [synthetic_image(i % 2 == 0, np.random.default_rng(1000 + i), size=size) for i in range(count)]
    return [image_bytes(image, fmt) for image in images]


def make_app(detector, store, **limits):
    from deepfake_detector.web import RequestLimits, create_app

    return create_app(detector, RequestLimits(**limits), upload_store=store)


def post_api(client, data: bytes, name="x.png"):
    return client.post("/api/predict", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def stored(folder: Path) -> tuple[set[str], set[str]]:
    """(image names, sidecar names) in ``folder``; fails on anything else there."""
    names = {path.name for path in folder.iterdir()}
    images = {name for name in names if IMAGE_NAME.fullmatch(name)}
    sidecars = {name for name in names if SIDECAR_NAME.fullmatch(name)}
    assert names == images | sidecars, f"unexpected files: {names - images - sidecars}"
    assert {name.split(".")[0] for name in images} == {name.split(".")[0] for name in sidecars}
    return images, sidecars


def on_disk(folder: Path) -> int:
    """What the files in ``folder`` take on disk (allocated 512-byte units), not their lengths."""
    return sum(path.stat().st_blocks * 512 for path in folder.iterdir())


@pytest.fixture()
def store_dir(tmp_path) -> Path:
    return tmp_path / "kept"


@pytest.fixture()
def store(store_dir):
    from deepfake_detector.uploads import UploadStore

    return UploadStore(store_dir, max_bytes=50 * 1024 * 1024)


@pytest.fixture()
def slow_writes(monkeypatch):
    """Each write takes 50 ms, so that racing threads overlap inside the store."""
    from deepfake_detector import uploads

    write = uploads.write_atomically

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return write(*args, **kwargs)

    monkeypatch.setattr(uploads, "write_atomically", slow)


def test_every_decoded_format_has_a_plain_suffix():
    from deepfake_detector.preprocessing import SUPPORTED_FORMATS
    from deepfake_detector.uploads import suffix_for

    assert suffix_for("JPEG") == ".jpg" and suffix_for("PNG") == ".png"
    for image_format in SUPPORTED_FORMATS:
        assert re.fullmatch(r"\.[a-z]+", suffix_for(image_format))
    with pytest.raises(ValueError):
        suffix_for("../x")


def test_an_upload_is_kept_under_its_hash_with_the_answer_it_got(detector, store, store_dir):
    jpeg = image_bytes(synthetic_image(True, np.random.default_rng(4), size=64), "JPEG", quality=90)
    before = datetime.now(UTC)
    body = post_api(make_app(detector, store).test_client(), jpeg, "holiday.PNG").get_json()
    digest = hashlib.sha256(jpeg).hexdigest()
    assert stored(store_dir) == ({f"{digest}.jpg"}, {f"{digest}.json"})  # the bytes decide the suffix, not the name
    assert (store_dir / f"{digest}.jpg").read_bytes() == jpeg
    record = json.loads((store_dir / f"{digest}.json").read_text())
    for field in ("label", "fake_probability", "threshold", "verdict", "face_detection", "faces", "model"):
        assert record[field] == body[field], field
    assert record["format"] == "JPEG" and record["bytes"] == len(jpeg) and record["sha256"] == digest
    received = datetime.fromisoformat(record["received"])
    assert received.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)
    assert "holiday" not in (store_dir / f"{digest}.json").read_text()
    assert store.stored_bytes == on_disk(store_dir)


@pytest.mark.parametrize("route", ["api", "page", "files"])
def test_hostile_file_names_never_choose_where_or_what_is_written(
    detector, store, store_dir, tmp_path, monkeypatch, route
):
    workdir = tmp_path / "workdir" / "deeper"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)  # where a relative ../ would land
    client = make_app(detector, store, files=len(HOSTILE_NAMES), files_seconds=600.0).test_client()
    images = distinct_images(len(HOSTILE_NAMES))
    if route == "files":
        files = [(io.BytesIO(data), name) for data, name in zip(images, HOSTILE_NAMES)]
        response = client.post("/api/predict", data={"files": files}, content_type="multipart/form-data")
        assert response.status_code == 200
        assert all("error" not in entry for entry in response.get_json()["results"])
    for data, name in zip(images, HOSTILE_NAMES) if route != "files" else ():
        path = "/api/predict" if route == "api" else "/"
        response = client.post(path, data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")
        assert response.status_code == 200, name
    image_names, sidecars = stored(store_dir)
    assert image_names == {hashlib.sha256(data).hexdigest() + ".png" for data in images}
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    expected = ["kept", "workdir", "workdir/deeper"] + [f"kept/{name}" for name in image_names | sidecars]
    assert written == sorted(expected)
    assert not Path("/etc/passwd.json").exists() and not Path("/tmp/absolute.png").exists()
    for sidecar in sidecars:
        text = (store_dir / sidecar).read_text()
        assert "filename" not in json.loads(text)
        assert not [name for name in HOSTILE_NAMES if len(name) > 4 and name in text]


def test_identical_content_is_stored_once(detector, store, store_dir):
    client = make_app(detector, store).test_client()
    first, second = distinct_images(2)
    for name in ("a.png", "b.png", "c.png"):
        assert post_api(client, first, name).status_code == 200
    files = [(io.BytesIO(data), "x.png") for data in (first, second, second, b"not an image")]
    body = client.post("/api/predict", data={"files": files}, content_type="multipart/form-data").get_json()
    assert [("error" in entry) for entry in body["results"]] == [False, False, False, True]
    images, _ = stored(store_dir)
    assert images == {hashlib.sha256(data).hexdigest() + ".png" for data in (first, second)}


def test_refused_uploads_are_not_kept(detector, store, store_dir):
    client = make_app(detector, store).test_client()
    truncated = image_bytes(synthetic_image(True, np.random.default_rng(5), size=64), "JPEG", quality=90)
    for data in (b"", b"plain text", truncated[: len(truncated) // 2]):
        assert post_api(client, data).status_code == 400
        assert client.post("/", data={"file": (io.BytesIO(data), "x.png")}).status_code == 400
    assert not store_dir.exists() or list(store_dir.iterdir()) == []


def test_heatmaps_are_left_out_of_the_sidecar(detector, store, store_dir):
    client = make_app(detector, store).test_client()
    (data,) = distinct_images(1)
    body = client.post("/api/predict?explain=1", data={"file": (io.BytesIO(data), "x.png")}).get_json()
    assert "heatmap" in body or any("heatmap" in face for face in body["faces"])
    record = (store_dir / (hashlib.sha256(data).hexdigest() + ".json")).read_text()
    assert "heatmap" not in record and "data:image" not in record


def test_past_the_cap_uploads_are_answered_but_not_stored(detector, store_dir, caplog):
    from deepfake_detector.uploads import UploadStore

    images = distinct_images(4, "BMP")  # all the same size
    block = os.statvfs(store_dir.parent).f_bsize
    store = UploadStore(store_dir, max_bytes=-(-len(images[0]) // block) * block + block)  # one image and its sidecar
    client = make_app(detector, store).test_client()
    reference = make_app(detector, None).test_client()
    with caplog.at_level(logging.WARNING, logger="deepfake_detector.uploads"):
        bodies = [post_api(client, data) for data in images]
    assert [response.status_code for response in bodies] == [200] * 4
    for response, data in zip(bodies[1:], images[1:]):
        expected = post_api(reference, data).get_json()
        assert {k: v for k, v in response.get_json().items() if k != "elapsed_ms"} == {
            k: v for k, v in expected.items() if k != "elapsed_ms"
        }
    assert stored(store_dir)[0] == {hashlib.sha256(images[0]).hexdigest() + ".bmp"}
    assert store.stored_bytes <= store.max_bytes
    assert len([record for record in caplog.records if "no longer kept" in record.getMessage()]) == 1


def test_the_cap_counts_what_is_already_in_the_folder(detector, store_dir):
    from deepfake_detector.uploads import UploadStore

    store_dir.mkdir()
    earlier = store_dir / ("ab" * 32 + ".png")
    earlier.write_bytes(b"\0" * 100_000)
    (store_dir / "README.md").write_text("not counted: the store did not write it")
    store = UploadStore(store_dir, max_bytes=on_disk(store_dir) - 512 + 1000)  # README.md is not counted
    assert store.stored_bytes == earlier.stat().st_blocks * 512 >= 100_000 and store.stored_files == 1
    (data,) = distinct_images(1)
    assert post_api(make_app(detector, store).test_client(), data).status_code == 200
    assert sorted(path.name for path in store_dir.iterdir()) == sorted([earlier.name, "README.md"])


def test_a_store_whose_parent_is_a_file_still_answers(detector, tmp_path, caplog):
    from deepfake_detector.uploads import UploadStore

    (tmp_path / "a-file").write_text("in the way")
    store = UploadStore(tmp_path / "a-file" / "kept", max_bytes=10**9)
    client = make_app(detector, store).test_client()
    (data,) = distinct_images(1)
    with caplog.at_level(logging.ERROR, logger="deepfake_detector.uploads"):
        assert post_api(client, data).status_code == 200
        assert client.post("/", data={"file": (io.BytesIO(data), "x.png")}).status_code == 200
    assert any("not kept" in record.getMessage() for record in caplog.records)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"] and store.stored_bytes == 0


@pytest.mark.parametrize("failing_write", [1, 2])  # the image's write, then the sidecar's
def test_a_full_disk_still_answers_and_leaves_nothing_half_written(
    detector, store, store_dir, monkeypatch, failing_write
):
    import deepfake_detector.files as files

    writes = []
    real_replace = files.os.replace

    def replace(source, target):
        writes.append(target)
        if len(writes) == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace)
    client = make_app(detector, store).test_client()
    first, second = distinct_images(2)
    assert post_api(client, first).status_code == 200
    assert list(store_dir.iterdir()) == []  # no temporary file, no image without its sidecar
    assert store.stored_bytes == 0
    assert post_api(client, second).status_code == 200  # the disk has room again
    assert len(stored(store_dir)[0]) == 1
    assert post_api(client, first).status_code == 200  # the failed one is not taken as already stored
    assert len(stored(store_dir)[0]) == 2


def test_a_bug_in_keeping_never_costs_the_answer(detector, store, monkeypatch):
    from deepfake_detector import uploads

    monkeypatch.setattr(uploads, "sha256", None)  # TypeError inside keep()
    (data,) = distinct_images(1)
    assert post_api(make_app(detector, store).test_client(), data).status_code == 200


def test_many_request_threads_store_each_content_once(detector, store, store_dir, slow_writes):
    app = make_app(detector, store)
    contents = distinct_images(4, "JPEG", size=160)
    start = threading.Barrier(16)
    statuses = []

    def upload(index: int):
        client = app.test_client()
        start.wait()
        statuses.append(post_api(client, contents[index % len(contents)], f"{index}.jpg").status_code)

    threads = [threading.Thread(target=upload, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 16
    images, sidecars = stored(store_dir)  # no temporary file left
    assert images == {hashlib.sha256(data).hexdigest() + ".jpg" for data in contents} and len(sidecars) == 4
    assert store.stored_bytes == on_disk(store_dir)


def test_the_store_alone_under_contention(store, store_dir, slow_writes):
    contents = distinct_images(3)
    start = threading.Barrier(16)
    kept = []

    def keep(index: int):
        start.wait()
        kept.append(store.keep(contents[index % 3], "PNG", {"label": "real", "fake_probability": 0.1}))

    threads = [threading.Thread(target=keep, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([path for path in kept if path is not None]) == 3
    assert len(stored(store_dir)[0]) == 3
    assert store.stored_bytes == on_disk(store_dir)


def test_the_default_app_writes_nothing(client, fake_png, tmp_path, monkeypatch):
    repo_uploads = sorted((REPO / "uploads").iterdir())
    monkeypatch.chdir(tmp_path)
    assert post_api(client, fake_png, "../uploads/x.png").status_code == 200
    assert client.post("/", data={"file": (io.BytesIO(fake_png), "x.png")}).status_code == 200
    assert sorted((REPO / "uploads").iterdir()) == repo_uploads
    assert list(tmp_path.iterdir()) == []
    assert "not stored" in client.get("/").get_data(as_text=True)


def test_the_page_says_when_uploads_are_kept(detector, store):
    assert "kept on this server" in make_app(detector, store).test_client().get("/").get_data(as_text=True)


def test_repo_uploads_folder_commits_only_its_readme():
    import subprocess

    assert (REPO / "uploads" / "README.md").is_file()
    probe = "uploads/" + "ab" * 32 + ".png"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO).returncode
    readme = subprocess.run(["git", "check-ignore", "-q", "uploads/README.md"], cwd=REPO).returncode
    assert (ignored, readme) == (0, 1)


def test_the_caps_count_disk_blocks_and_files_not_bytes(store_dir, caplog):
    """1,200 tiny PNGs under a 0.5 MB cap took 7.7 MB on disk: every file, a 300-byte sidecar
    too, takes whole blocks. The store counts those, and stops at a number of files as well."""
    from deepfake_detector.uploads import UploadStore

    images = distinct_images(40, size=8)  # about 100 bytes each
    store = UploadStore(store_dir, max_bytes=64 * 1024)
    for data in images:
        store.keep(data, "PNG", {"label": "real"})
    assert 0 < on_disk(store_dir) <= 64 * 1024 and store.stored_bytes == on_disk(store_dir)
    assert sum(path.stat().st_size for path in store_dir.iterdir()) < 64 * 1024 / 4  # the bytes alone were far under

    by_files = UploadStore(store_dir.parent / "by-files", max_bytes=10**9, max_files=10)
    with caplog.at_level(logging.WARNING, logger="deepfake_detector.uploads"):
        for data in images:
            by_files.keep(data, "PNG", {"label": "real"})
    assert len(list(by_files.directory.iterdir())) == by_files.stored_files == 10
    assert "10 files" in caplog.text
    assert UploadStore(by_files.directory, max_bytes=10**9, max_files=12).stored_files == 10  # counted at start-up

"""The on-disk cache of decoded splits and the streamed pipeline over it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector import cache, labels
from deepfake_detector.errors import DatasetError
from deepfake_detector.preprocessing import load_image
from deepfake_detector.recipes import DataConfig
from tests.helpers import make_dataset, synthetic_image

REPO = Path(__file__).resolve().parent.parent
SIZE = 24


@pytest.fixture()
def split_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", {"Train": 6}) / "Train"


def _no_decoding(*args, **kwargs):
    raise AssertionError("the cache was built again")


def test_rows_are_the_shared_preprocessing_of_each_file_with_its_label(split_dir, tmp_path):
    split = cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE))
    paths, targets = labels.labelled_files(split_dir)
    assert len(split) == len(paths) == 12
    images = split.read(np.arange(len(split)))
    assert images.dtype == np.uint8 and images.shape == (12, SIZE, SIZE, 3)
    for image, path in zip(images, paths):
        np.testing.assert_array_equal(image, load_image(path, SIZE))
    assert split.labels.tolist() == targets
    real, fake = labels.TRAINING_CLASS_ORDER.index(labels.REAL), labels.TRAINING_CLASS_ORDER.index(labels.FAKE)
    assert (real, fake) == (0, 1)
    assert [split.labels[i] for i, p in enumerate(paths) if "/Fake/" in p] == [fake] * 6
    np.testing.assert_array_equal(split.read(np.array([5, 0, 5])), images[[5, 0, 5]])  # any order, repeats


def test_reused_by_a_later_run_and_rebuilt_when_files_or_preprocessing_change(split_dir, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = cache.open_split(split_dir, cache_dir, DataConfig(image_size=SIZE))
    monkeypatch.setattr(cache, "decode_rows", _no_decoding)
    assert cache.open_split(split_dir, cache_dir, DataConfig(image_size=SIZE)).directory == first.directory  # reused
    monkeypatch.undo()

    changed = split_dir / "Real" / "real_0.png"
    synthetic_image(False, np.random.default_rng(99)).save(changed)
    os.utime(changed, ns=(1, 1_000_000_000))  # a different modification time, whatever the clock
    second = cache.open_split(split_dir, cache_dir, DataConfig(image_size=SIZE))
    assert second.directory != first.directory and not first.directory.exists()  # the outdated one is gone
    np.testing.assert_array_equal(second.read(np.array([0]))[0], load_image(changed, SIZE))

    synthetic_image(True, np.random.default_rng(5)).save(split_dir / "Fake" / "fake_new.png")
    third = cache.open_split(split_dir, cache_dir, DataConfig(image_size=SIZE))
    assert len(third) == 13 and third.directory != second.directory

    other_size = cache.open_split(split_dir, cache_dir, DataConfig(image_size=SIZE + 8))
    assert other_size.read(np.array([0])).shape == (1, SIZE + 8, SIZE + 8, 3)
    assert third.directory.exists()  # each input size keeps its own
    assert sorted(p.name.split("-")[1] for p in cache_dir.iterdir() if p.is_dir()) == ["24px", "32px"]


def test_unreadable_files_are_skipped_and_counted_and_one_class_refused(split_dir, tmp_path):
    (split_dir / "Fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    split = cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE))
    assert len(split) == 12 and split.info["skipped"] == 1 and split.info["n_fake"] == 6
    assert str(split_dir / "Fake" / "broken.jpg") in split.meta["skipped"]

    for path in (split_dir / "Real").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="Real has no readable images"):
        cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE))


@pytest.mark.slow
def test_worker_processes_write_the_same_rows_as_threads(split_dir, tmp_path):
    threads = cache.open_split(split_dir, tmp_path / "a", DataConfig(image_size=SIZE), processes=False)
    processes = cache.open_split(split_dir, tmp_path / "b", DataConfig(image_size=SIZE), processes=True, workers=2)
    np.testing.assert_array_equal(processes.read(np.arange(12)), threads.read(np.arange(12)))


def test_too_little_disk_is_refused_before_decoding(split_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    monkeypatch.setattr(cache, "decode_rows", _no_decoding)
    with pytest.raises(DatasetError, match="--cache-dir"):
        cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE))


def test_a_failed_build_leaves_nothing_that_looks_finished(split_dir, tmp_path, monkeypatch):
    def crash(*args):
        raise KeyboardInterrupt  # what a killed run does mid-build

    monkeypatch.setattr(cache, "decode_rows", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE), processes=False)
    assert list((tmp_path / "cache").iterdir()) == []  # no scratch folder, and no lock file either
    monkeypatch.undo()
    assert len(cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE))) == 12


def test_a_file_that_broke_the_decoder_is_read_and_the_build_finishes(split_dir, tmp_path):
    """A JPEG whose mistyped EXIF tag made exif_transpose raise TypeError aborted the whole build
    (one such file in 190,000 was enough) and left the build's lock behind."""
    from harness.hostile import mistyped_exif_jpeg, mutants

    (split_dir / "Fake" / "mistyped_exif.jpg").write_bytes(mistyped_exif_jpeg())
    for name, data in mutants({"m.jpg": mistyped_exif_jpeg()}, count=20, seed=3):
        (split_dir / "Real" / name).write_bytes(data)
    split = cache.open_split(split_dir, tmp_path / "cache", DataConfig(image_size=SIZE), processes=False)
    assert str(split_dir / "Fake" / "mistyped_exif.jpg") not in split.meta["skipped"]
    assert len(split) + split.info["skipped"] == 12 + 21 and split.info["skipped"] > 0
    assert not list((tmp_path / "cache").glob(".*"))


def test_scratch_left_by_a_killed_build_is_removed_and_a_running_build_keeps_its_own(split_dir, tmp_path):
    import fcntl

    cache_dir = tmp_path / "cache"
    key = cache.cache_key(split_dir, *labels.labelled_files(split_dir), SIZE)
    killed = [cache_dir / f".Train-{SIZE}px-{key[:16]}.x1y2z3", cache_dir / f".Train-{SIZE}px-0123456789abcdef.q7w8e9"]
    running = cache_dir / f".Train-{SIZE}px-fedcba9876543210.a1b2c3"
    for folder in (*killed, running):
        folder.mkdir(parents=True)
        with open(folder / cache.IMAGES_FILE, "wb") as file:
            file.truncate(1 << 30)  # sparse, as a build's rows file is until written
    with open(cache_dir / f".Train-{SIZE}px-fedcba9876543210.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held, as by another run building that cache now
        split = cache.open_split(split_dir, cache_dir, DataConfig(image_size=SIZE), processes=False)
        assert [folder.exists() for folder in (*killed, running)] == [False, False, True]
    assert len(split) == 12


def test_default_cache_dir_is_the_users_cache_never_the_data_folder(tmp_path, monkeypatch):
    data_dir, other = tmp_path / "data", tmp_path / "other"
    monkeypatch.delenv("DEEPFAKE_DETECTOR_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = cache.default_cache_dir(data_dir)
    assert default.parent == tmp_path / "home" / ".cache" / "deepfake-detector" / "datasets"
    assert default == cache.default_cache_dir(tmp_path / "." / "data") != cache.default_cache_dir(other)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir(data_dir).is_relative_to(tmp_path / "xdg" / "deepfake-detector" / "datasets")


def test_a_run_without_cache_dir_writes_nothing_into_the_data_folder(tmp_path, monkeypatch):
    from deepfake_detector.data import DatasetHandler
    from tests.helpers import make_dataset

    data = make_dataset(tmp_path / "data", {"Train": 2, "Validation": 2, "Test": 2})
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    monkeypatch.setenv("DEEPFAKE_DETECTOR_CACHE", str(tmp_path / "user-cache"))
    handler = DatasetHandler(dataset_download_dir=data, config=DataConfig(image_size=16))
    handler.splits()
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert handler.cache_dir.is_relative_to(tmp_path / "user-cache") and any(handler.cache_dir.iterdir())


# ----------------------------------------------------------------------------- the pipeline


def _numbered(count: int) -> cache.ArraySource:
    """Images whose first pixel holds their own position, labelled by parity."""
    images = np.zeros((count, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(count) // 256, np.arange(count) % 256
    return cache.ArraySource(images, np.arange(count) % 2)


def _positions(dataset) -> list[list[int]]:
    batches = []
    for images, targets in dataset:
        images = images.numpy()
        found = (images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]).tolist()
        assert targets.numpy()[:, 0].tolist() == [p % 2 for p in found]  # each image keeps its label
        batches.append(found)
    return batches


def test_training_draws_a_full_permutation_of_positions_every_epoch():
    from deepfake_detector.pipeline import make_dataset

    dataset = make_dataset(_numbered(300), 32, training=True, config=DataConfig(seed=4))
    first, second = _positions(dataset), _positions(dataset)
    for epoch in (first, second):
        assert sorted(p for batch in epoch for p in batch) == list(range(300))
        assert [len(b) for b in epoch] == [32] * 9 + [12]
    assert first != second  # reshuffled
    assert (
        _positions(make_dataset(_numbered(300), 32, training=True, config=DataConfig(seed=4))) == first
    )  # reproducible from the seed
    assert _positions(make_dataset(_numbered(300), 32, training=False)) == [
        list(range(i, min(i + 32, 300))) for i in range(0, 300, 32)
    ]


def test_each_worker_reads_its_own_equal_share():
    from deepfake_detector.pipeline import make_dataset

    shares = [
        [
            p
            for batch in _positions(
                make_dataset(_numbered(301), 16, training=True, config=DataConfig(seed=2), shard=(3, i))
            )
            for p in batch
        ]
        for i in range(3)
    ]
    assert [len(share) for share in shares] == [100, 100, 100]
    assert len(set(shares[0]) | set(shares[1]) | set(shares[2])) == 300  # disjoint


# ----------------------------------------------------------------------------- the synthetic archive


@pytest.mark.slow
def test_synthetic_archive_has_the_kaggle_layout_and_train_py_caches_it_once(tmp_path):
    from harness.archive import KAGGLE_COUNTS, write_archive

    assert sum(count for *_, count in KAGGLE_COUNTS) == 190_335
    archive = tmp_path / "archive.zip"
    written = write_archive(
        archive, scale=0.0001, corrupt=1, workers=1
    )  # 2-7 images per class folder, 1 broken per split
    names = zipfile.ZipFile(archive).namelist()
    assert written["images"] == len(names)
    assert "Dataset/Train/Real/real_0.jpg" in names and "Dataset/Validation/Fake/fake_1.jpg" in names
    assert {name.split("/")[1] for name in names} == {"Train", "Validation", "Test"}

    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--archive",
        str(archive),
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "model.keras"),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--verbose",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "INFO extracted" in done.stderr and done.stderr.count("INFO cached ") == 3

    from deepfake_detector.model import read_metadata

    splits = read_metadata(tmp_path / "model.keras").train_config["splits"]
    assert {split: info["skipped"] for split, info in splits.items()} == {"Train": 1, "Validation": 1, "Test": 1}
    assert splits["Train"]["n_images"] == 14

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "INFO extracted" not in again.stderr and "INFO cached " not in again.stderr  # everything reused


@pytest.mark.slow
def test_train_py_refuses_a_split_without_a_class_before_decoding_anything(tmp_path):
    root = make_dataset(tmp_path / "data", {"Train": 3, "Validation": 2, "Test": 2})
    for path in (root / "Test" / "Fake").iterdir():
        path.unlink()
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data-dir", str(root), "--output", str(tmp_path / "m.keras")],
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: ") and "Test/Fake has no images" in done.stderr
    assert not (root / ".cache").exists() or not any(p.is_dir() for p in (root / ".cache").iterdir())

"""Each split decoded once into an on-disk cache of model inputs, read back by row.

Training reads every image once per epoch, and the Kaggle archive (190,335 images) does not
fit in memory decoded. So each split goes through the shared preprocessing
(:func:`deepfake_detector.preprocessing.load_image`) once, in parallel worker processes,
into one flat file of uint8 rows at the model's input size; every epoch then reads the rows
it needs with ``pread``, in a fresh random order. Reads go through the page cache rather than
a memory map, so the training process's resident memory does not grow with the dataset; the
file is read ahead into the page cache when it is opened, since a disk serves random reads far
slower than sequential ones.

A cache is keyed by its files (path within the split, size, modification time, label) and the
preprocessing config: change either and it is built again; otherwise every later run and
every epoch reuse it. It is built in a temporary folder and renamed into place, so a killed
build leaves nothing that looks finished; a lock file lets concurrent runs (two workers on
one machine) build it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepfake_detector.decoding import default_workers
from deepfake_detector.errors import DatasetError, ImageError
from deepfake_detector.files import staged_directory, user_cache_dir
from deepfake_detector.labels import FOLDER_NAMES, TRAINING_CLASS_ORDER, labelled_files
from deepfake_detector.preprocessing import PreprocessingConfig, load_image, open_image
from deepfake_detector.recipes import FRAMINGS, DataConfig

log = logging.getLogger(__name__)

#: Bumped when the file layout or the way images are written changes.
CACHE_VERSION = 1
IMAGES_FILE = "images.u8"
META_FILE = "meta.json"
#: Files decoded per task handed to a worker.
CHUNK = 256
#: Below this many files a split is decoded on threads: starting processes costs more.
PROCESS_THRESHOLD = 4096


class SplitCache:
    """One split's preprocessed images on disk, with their labels in memory.

    ``read(positions)`` returns the images at those positions (0..len-1) as one uint8 array;
    it is safe to call from several threads at once.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta = json.loads((self.directory / META_FILE).read_text())
        self.meta = meta
        self.image_size = int(meta["image_size"])
        self.labels = np.load(self.directory / "labels.npy")
        self.rows = np.load(self.directory / "rows.npy")  # row in the images file of each kept image
        self._row_bytes = self.image_size * self.image_size * 3
        self._fd: int | None = None
        self._fd_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def info(self) -> dict:
        """Counts for logs and the saved model's training record."""
        return {
            "n_images": len(self),
            "skipped": self.meta["n_skipped"],
            **{f"n_{name}": int((self.labels == i).sum()) for i, name in enumerate(TRAINING_CLASS_ORDER)},
        }

    def _descriptor(self) -> int:
        with self._fd_lock:
            if self._fd is None:
                self._fd = os.open(self.directory / IMAGES_FILE, os.O_RDONLY)
                # Random reads from a disk are slow and sequential ones fast: have the kernel read
                # the whole file ahead into the page cache (as far as memory allows), in the background.
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_WILLNEED)
            return self._fd

    def read(self, positions: np.ndarray) -> np.ndarray:
        fd, size = self._descriptor(), self.image_size
        out = np.empty((len(positions), size, size, 3), np.uint8)
        for i, row in enumerate(self.rows[np.asarray(positions, np.int64)]):
            if os.preadv(fd, [out[i]], int(row) * self._row_bytes) != self._row_bytes:
                raise OSError(f"{self.directory / IMAGES_FILE} is shorter than its index says; delete the folder")
        return out

    def close(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit ``os`` may be gone already
            self.close()


@dataclass
class ArraySource:
    """Images already in memory, read the same way as a :class:`SplitCache` (tests, small tools)."""

    images: np.ndarray
    labels: np.ndarray
    image_size: int = field(init=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32)
        self.image_size = int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def read(self, positions: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(positions, np.int64)]


class Subset:
    """Some positions of another source, read the same way (the real images of a split)."""

    def __init__(self, source, positions: np.ndarray):
        self.source, self.positions = source, np.asarray(positions, np.int64)
        self.labels = source.labels[self.positions]
        self.image_size = source.image_size

    def __len__(self) -> int:
        return len(self.positions)

    def read(self, positions: np.ndarray) -> np.ndarray:
        return self.source.read(self.positions[np.asarray(positions, np.int64)])


#: Where caches were kept beside the images before they moved to the user's cache folder
#: (``DatasetHandler.download_dataset`` still counts such a folder as its own).
CACHE_FOLDER = ".cache"


def default_cache_dir(data_dir: str | Path) -> Path:
    """The user's cache folder (:func:`deepfake_detector.files.user_cache_dir`), ``datasets/``,
    one folder per data folder (named by a hash of its full path), as Keras and other dataset
    tools keep theirs: never inside the data, which may be shared, read-only or backed up."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return user_cache_dir() / "datasets" / digest


#: The framing of the caches made before framing existed (``recipes.FRAMINGS``): their keys and
#: folder names stay as they were.
WHOLE = "whole"


def cache_key(split_dir: Path, paths: list[str], targets: list[int], image_size: int, framing: str = WHOLE) -> str:
    """SHA-256 over the preprocessing config, the framing and every file's relative path, size, mtime and label."""
    files = []
    for path, target in zip(paths, targets):
        stat = os.stat(path)
        files.append([os.path.relpath(path, split_dir), stat.st_size, stat.st_mtime_ns, int(target)])
    described = {
        "version": CACHE_VERSION,
        "preprocessing": PreprocessingConfig(image_size=image_size).to_dict(),
        "files": files,
    }
    if framing != WHOLE:  # whole-image caches keep the keys they had before framing existed
        described["framing"] = framing
    return hashlib.sha256(json.dumps(described, separators=(",", ":")).encode()).hexdigest()


def open_split(
    split_dir: str | Path,
    cache_dir: str | Path,
    config: DataConfig,
    workers: int | None = None,
    processes: bool | None = None,
    files: tuple[list[str], list[int]] | None = None,
) -> SplitCache:
    """The cache of one split folder (``Real/`` and ``Fake/``) as ``config`` makes it, built first if needed.

    Each image is decoded at ``config.image_size`` and framed by ``config.framing``: whole
    (:func:`whole_image`), or its largest face (:func:`largest_face`, as the page crops it).
    ``config.max_images_per_split`` keeps a random subset of that many files (chosen by
    ``config.seed``). Files that cannot be decoded are skipped and counted. ``processes`` forces
    worker processes (True) or threads (False); by default processes are used from
    :data:`PROCESS_THRESHOLD` files up. ``files`` is ``labels.labelled_files(split_dir)`` when the
    caller has listed it already.

    Raises:
        deepfake_detector.errors.DatasetError: no images, one class only, nothing decodable, or
            too little disk space for the cache (said before anything is decoded).
    """
    split_dir, image_size, limit, framing = (
        Path(split_dir),
        config.image_size,
        config.max_images_per_split,
        config.framing,
    )
    paths, targets = files if files is not None else labelled_files(split_dir)
    if limit is not None and limit < len(paths):
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(paths))[:limit])
        paths, targets = [paths[i] for i in keep], [targets[i] for i in keep]
    FRAMINGS.check(framing)
    key = cache_key(split_dir, paths, targets, image_size, framing)
    cache_dir = Path(cache_dir)
    prefix = f"{split_dir.name}-{image_size}px-{'' if framing == WHOLE else 'faces-'}"
    target = cache_dir / f"{prefix}{key[:16]}"
    if not (target / META_FILE).exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(target):  # a concurrent run builds it once; the other waits
            if not (target / META_FILE).exists():
                _remove_stale_scratch(cache_dir, prefix, target)
                _build(target, split_dir, paths, targets, image_size, workers, processes, framing)
                for stale in cache_dir.glob(f"{prefix}*"):  # the same split's older contents
                    if stale != target and stale.is_dir():
                        log.info("removing the outdated cache %s", stale)
                        shutil.rmtree(stale, ignore_errors=True)
    cache = SplitCache(target)
    if not len(cache):
        raise DatasetError(f"none of the {len(paths)} image file(s) under {split_dir} can be read")
    for index, name in enumerate(TRAINING_CLASS_ORDER):
        if not (cache.labels == index).any():
            raise DatasetError(f"{split_dir / FOLDER_NAMES[name]} has no readable images")
    return cache


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def _build_lock(target: Path):
    """Hold ``target``'s lock file, and remove it before letting go, even when the build failed.
    A run that was waiting on the removed file locks the new one instead: one holder at a time."""
    path = _lock_path(target)
    while True:
        lock = open(path, "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
                break
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        lock.close()


def _remove_stale_scratch(cache_dir: Path, prefix: str, target: Path) -> None:
    """Remove the scratch folders (``.NAME.random``, as large as the cache) that killed builds of
    this split left: a build holds its cache's lock for as long as its scratch folder exists, and
    the caller holds ``target``'s."""
    for scratch in cache_dir.glob(f".{prefix}*"):
        name = scratch.name[1:].rsplit(".", 1)[0]
        if not scratch.is_dir() or (name != target.name and _locked(_lock_path(cache_dir / name))):
            continue
        log.info("removing %s, left by a cache build that was stopped", scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _locked(path: Path) -> bool:
    """Whether another open file holds ``path``'s lock (a build in progress)."""
    try:
        with open(path) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def _build(
    target: Path,
    split_dir: Path,
    paths: list[str],
    targets: list[int],
    image_size: int,
    workers: int | None,
    processes: bool | None,
    framing: str = WHOLE,
) -> None:
    row_bytes = image_size * image_size * 3
    needed = len(paths) * row_bytes
    free = shutil.disk_usage(target.parent).free
    if needed > free * 0.95:
        raise DatasetError(
            f"caching {split_dir} at {image_size} px needs {needed / 1e9:.1f} GB and {target.parent} has "
            f"{free / 1e9:.1f} GB free; pass --cache-dir on a larger disk"
        )
    start = time.perf_counter()
    with staged_directory(target) as scratch:
        images_file = scratch / IMAGES_FILE
        with open(images_file, "wb") as file:
            file.truncate(needed)  # sparse until written; every row is written once
        use_processes = len(paths) >= PROCESS_THRESHOLD if processes is None else processes
        workers = workers or default_workers(processes=use_processes)
        executor: Executor = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if use_processes
            else ThreadPoolExecutor(workers)
        )
        failures: dict[int, str] = {}
        no_face = 0
        desc = f"caching {split_dir.name} at {image_size} px" + ("" if framing == WHOLE else ", faces framed")
        with executor, tqdm(total=len(paths), desc=desc, unit="img") as bar:
            futures = [
                executor.submit(decode_rows, str(images_file), image_size, start, paths[start : start + CHUNK], framing)
                for start in range(0, len(paths), CHUNK)
            ]
            for future in as_completed(futures):
                done, failed, faceless = future.result()
                failures.update(failed)
                no_face += faceless
                bar.update(done)
        if failures:
            log.warning("%s: %d image(s) could not be decoded and were skipped", split_dir, len(failures))
        if framing != WHOLE:
            log.info(
                "%s: no face found in %d of %d image(s); those are used whole",
                split_dir,
                no_face,
                len(paths) - len(failures),
            )
        rows = np.asarray([i for i in range(len(paths)) if i not in failures], np.int64)
        np.save(scratch / "rows.npy", rows)
        np.save(scratch / "labels.npy", np.asarray(targets, np.int32)[rows])
        meta = {
            "version": CACHE_VERSION,
            "split_dir": str(split_dir),
            "image_size": image_size,
            "preprocessing": PreprocessingConfig(image_size=image_size).to_dict(),
            "framing": framing,
            "n_no_face": no_face,
            "n_files": len(paths),
            "n_skipped": len(failures),
            "skipped": {paths[i]: reason for i, reason in sorted(failures.items())},
        }
        (scratch / META_FILE).write_text(json.dumps(meta, indent=1))
    log.info(
        "cached %s: %d images at %d px, %.2f GB, in %.1f s, in %s",
        split_dir,
        len(rows),
        image_size,
        needed / 1e9,
        time.perf_counter() - start,
        target,
    )


def decode_rows(
    images_file: str, image_size: int, start: int, paths: list[str], framing: str = WHOLE
) -> tuple[int, dict[int, str], int]:
    """Decode ``paths`` into rows ``start...`` of ``images_file``, framed by ``framing`` (a name in
    ``recipes.FRAMINGS``); returns (count, {row: reason} of failures, how many had no face).

    Runs in a worker process (PIL holds the GIL for part of each decode), so it imports
    nothing heavier than the preprocessing, and the face finder only to frame faces.
    """
    row_bytes = image_size * image_size * 3
    failures, no_face = {}, 0
    frame = FRAMINGS.load(framing)
    fd = os.open(images_file, os.O_WRONLY)
    try:
        for offset, path in enumerate(paths):
            try:
                image, found = frame(path, image_size)
                no_face += not found
            except (ImageError, OSError) as error:
                failures[start + offset] = str(error)
                continue
            os.pwrite(fd, image.tobytes(), (start + offset) * row_bytes)
    finally:
        os.close(fd)
    return len(paths), failures, no_face


def whole_image(path: str, image_size: int) -> tuple[np.ndarray, bool]:
    """The ``whole`` framing: the image resized whole (:func:`~deepfake_detector.preprocessing.load_image`)."""
    return load_image(path, image_size), True


def largest_face(path: str, image_size: int) -> tuple[np.ndarray, bool]:
    """The ``face`` framing: the image's largest face framed as the page frames it
    (:func:`faces.framed_face`), and whether one was found (else the whole image)."""
    from deepfake_detector import faces  # onnxruntime: only in processes that frame faces

    return faces.framed_face(open_image(path), _cache_finder(), image_size)


@functools.lru_cache(maxsize=1)
def _cache_finder():
    """One RetinaFace per process, on one thread: the build already runs a process per core."""
    from deepfake_detector import faces

    return faces.RetinaFaceFinder(threads=1)

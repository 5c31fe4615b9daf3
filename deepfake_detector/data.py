"""Getting the data: download, extraction, and the tf.data splits.

Every image goes through :func:`deepfake_detector.preprocessing.load_image`, the same
function inference uses, so training never sees an image differently from a served one.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from tqdm.auto import tqdm

from deepfake_detector import labels
from deepfake_detector.preprocessing import ImageError, load_image

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

KAGGLE_URL = "https://www.kaggle.com/api/v1/datasets/download/manjilkarki/deepfake-and-real-images"
SPLITS = ("Train", "Validation", "Test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class DatasetError(RuntimeError):
    """A dataset problem a user can fix; the message says what and where."""


# ----------------------------------------------------------------------------- download


def download(url: str, destination: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` with TLS verification, resume and an optional checksum.

    Bytes go to ``destination.part`` and are renamed only when complete (and, with
    ``sha256``, verified), so a cut download never leaves a file that looks finished. A
    later call resumes the ``.part`` file with an HTTP Range request.

    Raises:
        DatasetError: HTTP error, network failure (the ``.part`` file keeps every byte
            received, so running again resumes), wrong size or wrong checksum.
    """
    import requests
    import urllib3

    destination = Path(destination)
    if destination.exists():
        if sha256:
            check_sha256(destination, sha256, remove=False)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    # Ask for the bytes as stored: Range offsets and Content-Length must count file bytes.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    # requests verifies TLS certificates by default; never pass verify=False.
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as error:
        raise DatasetError(f"download of {url} failed: {error}") from error
    with response:
        if offset and response.status_code == 416:  # the .part file is already whole
            size = _content_range(response.headers.get("Content-Range"))[2]
            if size is not None and size != offset:
                part.unlink()
                raise DatasetError(
                    f"{part} had {offset} bytes but {url} has {size}; removed it, run again to download"
                )
        else:
            if response.status_code not in (200, 206):
                raise DatasetError(f"download of {url} failed: HTTP {response.status_code}")
            if offset and response.status_code == 200:
                log.info("server ignored the resume request; starting over")
                offset = 0
            if response.status_code == 206:
                start = _content_range(response.headers.get("Content-Range"))[0]
                if start != offset:
                    raise DatasetError(
                        f"download of {url}: asked to resume at byte {offset}, the server sent "
                        f"{response.headers.get('Content-Range')!r}; delete {part} and run again"
                    )
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            total = response.headers.get("Content-Length")
            # With a content coding, Content-Length counts encoded bytes, not the file's.
            total = int(total) + offset if total is not None and encoding in ("", "identity") else None
            mode = "ab" if offset else "wb"
            try:
                with open(part, mode) as file, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=destination.name
                ) as bar:
                    for chunk in _body_chunks(response, 1 << 20):
                        file.write(chunk)
                        bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
                raise DatasetError(
                    f"download of {url} was interrupted at {part.stat().st_size} bytes ({error}); "
                    "run again to resume"
                ) from error
            received = part.stat().st_size
            if total is not None and received < total:
                raise DatasetError(
                    f"download of {url} stopped at {received} of {total} bytes; run again to resume"
                )
            if total is not None and received > total:
                part.unlink()
                raise DatasetError(
                    f"download of {url} gave {received} bytes, more than the {total} announced; "
                    "removed the partial file, run again"
                )
    if sha256:
        check_sha256(part, sha256, remove=True)
    os.replace(part, destination)
    return destination


def _body_chunks(response, size: int):
    """The response body as it arrives, so a cut connection loses no byte already received.

    ``iter_content`` reads until it has ``size`` bytes and drops what it holds when the
    connection breaks in between; ``read1`` hands over whatever has arrived.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        yield from response.iter_content(chunk_size=size)
        return
    while True:
        chunk = read1(size, decode_content=True)
        if not chunk:
            return
        yield chunk


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first byte, last byte, full size) from a Content-Range header; None where absent or ``*``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    return tuple(None if group in (None, "*") else int(group) for group in match.groups())


def check_sha256(path: Path, expected: str, remove: bool) -> None:
    expected = expected.strip().lower()
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        if remove:
            path.unlink()
        raise DatasetError(f"{path}: SHA-256 is {digest.hexdigest()}, expected {expected}")


def extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a zip into ``target`` safely: into a temp folder first, then renamed into place.

    Refuses members that would land outside ``target`` (zip-slip) or are links.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        zip_file = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{archive}: not a readable zip archive ({error})") from error
    with zip_file:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            root = tmp.resolve()
            for member in zip_file.infolist():
                destination = (root / member.filename).resolve()
                if destination != root and root not in destination.parents:
                    raise DatasetError(f"{archive}: member {member.filename!r} would extract outside the target")
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DatasetError(f"{archive}: member {member.filename!r} is a symbolic link")
            try:
                start = time.perf_counter()
                for member in tqdm(zip_file.infolist(), desc=f"extracting {archive.name}", unit="file"):
                    zip_file.extract(member, tmp)
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # bad CRC, corrupt data
                raise DatasetError(f"{archive}: corrupt zip archive ({error}); download it again") from error
            os.replace(tmp, target)
            log.info("extracted %s in %.1f s", archive, time.perf_counter() - start)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return target


# ----------------------------------------------------------------------------- folders


def find_dataset_root(directory: str | Path, splits: tuple[str, ...] = SPLITS) -> Path:
    """The folder under ``directory`` that holds the ``splits`` folders (``Train/``, ``Validation/`` and ``Test/``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder")
    # Here, one level down, and two (an archive extracted to ``extracted/`` holds ``Dataset/``).
    candidates, level = [directory], [directory]
    for _ in range(2):
        level = [child for folder in level for child in _subfolders(folder)]
        level.sort(key=lambda p: p.name != "Dataset")  # ``Dataset/`` first, then by name
        candidates += level
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in splits):
            return candidate
    best = max(candidates, key=lambda c: sum((c / split).is_dir() for split in splits))
    found = [split for split in splits if (best / split).is_dir()]
    missing = ", ".join(f"{split}/" for split in splits if split not in found)
    where = f"{best} has {', '.join(f'{split}/' for split in found)} but no {missing}" if found else (
        f"{directory}: no {missing} folders"
    )
    raise DatasetError(f"{where} (looked in {directory} and two levels down)")


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(child for child in folder.iterdir() if child.is_dir())
    except OSError:  # unreadable folder: nothing to find there
        return []


def labelled_files(folder: str | Path, require_both: bool = True) -> tuple[list[str], list[int]]:
    """Image files under ``folder/Real`` and ``folder/Fake`` (recursively, sorted) and their
    integer labels in ``labels.TRAINING_CLASS_ORDER``; no file is opened.

    With ``require_both`` a missing or empty class folder is an error; without it either
    may be missing, but not both.
    """
    folder = Path(folder)
    paths, targets = [], []
    for index, class_name in enumerate(labels.TRAINING_CLASS_ORDER):
        class_dir = folder / labels.FOLDER_NAMES[class_name]
        if not class_dir.is_dir():
            if require_both:
                raise DatasetError(f"no {labels.FOLDER_NAMES[class_name]}/ folder under {folder}")
            continue
        found = sorted(
            str(p) for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found and require_both:
            raise DatasetError(f"{class_dir} has no images")
        paths += found
        targets += [index] * len(found)
    if not paths:
        raise DatasetError(f"no images under {folder}/Real or {folder}/Fake")
    return paths, targets


def decode_images(paths: list[str], image_size: int, workers: int | None = None, desc: str = "decoding"):
    """Decode files into a uint8 array with the shared preprocessing; failures are returned.

    Returns:
        (images N'xSxSx3, indices of the decoded files in ``paths``, {path: reason} of failures)
    """
    workers = workers or min(8, (os.cpu_count() or 1) * 2)

    def one(path):
        try:
            return load_image(path, image_size), None
        except (ImageError, OSError) as error:
            return None, str(error)

    # Filled in place: collecting a list and stacking it would need twice the memory.
    array = np.empty((len(paths), image_size, image_size, 3), np.uint8)
    kept, failures = [], {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (image, error) in enumerate(
            tqdm(pool.map(one, paths), total=len(paths), desc=desc, unit="img", leave=False)
        ):
            if image is None:
                failures[paths[i]] = error
            else:
                array[len(kept)] = image
                kept.append(i)
    return array[: len(kept)], np.asarray(kept, np.int64), failures


def decoded_batches(items: Iterable[T], decode: Callable[[T], R], batch_size: int,
                    workers: int | None = None) -> Iterator[list[tuple[T, R]]]:  # fmt: skip
    """Batches of ``(item, decode(item))`` in order, decoded on a thread pool one batch ahead.

    While the caller scores one batch the next one decodes (PIL releases the GIL), so decoding
    overlaps with the model and at most two batches are alive at once, however many items.
    ``decode`` should return its failures rather than raise them.
    """
    items = iter(items)
    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:

        def submit() -> list[tuple[T, Future]]:
            return [(item, pool.submit(decode, item)) for item in itertools.islice(items, batch_size)]

        pending = submit()
        while pending:
            current, pending = pending, submit()
            yield [(item, future.result()) for item, future in current]

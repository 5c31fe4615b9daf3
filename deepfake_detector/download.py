"""Fetching a dataset archive: a verified, resumable download and a safe extraction.

:func:`download` verifies TLS, resumes a cut download from its ``.part`` file and checks an
optional SHA-256 before the file takes its final name; :func:`extract` refuses members that
would land outside the target folder or are links, and archives that would inflate past the
free disk space or by more than :data:`MAX_INFLATION` (a zip bomb), and renames the folder into
place only when every member is out.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from deepfake_detector.errors import DatasetError
from deepfake_detector.files import sha256_of, staged_directory

log = logging.getLogger(__name__)

#: Most the members of a zip may inflate to, as a multiple of the archive's size. Images barely
#: compress (the Kaggle archive: about 1x); a 3 GiB member in a 3.2 MB zip (1000x) is a bomb.
MAX_INFLATION = 100
#: Share of the target disk's free space that extracting may fill.
FREE_SHARE = 0.95


def download(url: str, destination: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` with TLS verification, resume and an optional checksum.

    Bytes go to ``destination.part`` and are renamed only when complete (and, with
    ``sha256``, verified), so a cut download never leaves a file that looks finished. A
    later call resumes the ``.part`` file with an HTTP Range request.

    Raises:
        DatasetError: HTTP error, network failure (the ``.part`` file keeps every byte
            received, so running again resumes), wrong size or wrong checksum.
    """
    destination = Path(destination)
    if destination.exists():
        if sha256:
            check_sha256(destination, sha256, remove=False)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    with _request(url, offset, timeout) as response:
        if offset and response.status_code == 416:  # the .part file is already whole
            _check_whole_part(response, url, part, offset)
        else:
            offset = _resume_offset(response, url, part, offset)
            _receive(response, url, part, offset)
    if sha256:
        check_sha256(part, sha256, remove=True)
    # Not files.replacing: the .part file must outlive a failure, for the next run to resume.
    os.replace(part, destination)
    return destination


def _request(url: str, offset: int, timeout: float):
    """The streamed response to a GET of ``url``, from byte ``offset`` on."""
    import requests

    # Ask for the bytes as stored: Range offsets and Content-Length must count file bytes.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    # requests verifies TLS certificates by default; never pass verify=False.
    try:
        return requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as error:
        raise DatasetError(f"download of {url} failed: {error}") from error


def _check_whole_part(response, url: str, part: Path, offset: int) -> None:
    """A 416 to a resume: the ``.part`` file is whole, unless the server's size says otherwise."""
    size = _content_range(response.headers.get("Content-Range"))[2]
    if size is not None and size != offset:
        part.unlink()
        raise DatasetError(f"{part} had {offset} bytes but {url} has {size}; removed it, run again to download")


def _resume_offset(response, url: str, part: Path, offset: int) -> int:
    """Where the response's body goes in the ``.part`` file: ``offset``, or 0 when the server
    sent the whole file."""
    if response.status_code not in (200, 206):
        raise DatasetError(f"download of {url} failed: HTTP {response.status_code}")
    if offset and response.status_code == 200:
        log.info("server ignored the resume request; starting over")
        return 0
    if response.status_code == 206:
        start = _content_range(response.headers.get("Content-Range"))[0]
        if start != offset:
            raise DatasetError(
                f"download of {url}: asked to resume at byte {offset}, the server sent "
                f"{response.headers.get('Content-Range')!r}; delete {part} and run again"
            )
    return offset


def _receive(response, url: str, part: Path, offset: int) -> None:
    """Write the response's body into ``part`` from ``offset`` on, then check its size against
    the one announced (a cut connection keeps what arrived, for the next run to resume)."""
    import requests
    import urllib3

    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    total = response.headers.get("Content-Length")
    # With a content coding, Content-Length counts encoded bytes, not the file's.
    total = int(total) + offset if total is not None and encoding in ("", "identity") else None
    mode = "ab" if offset else "wb"
    try:
        with (
            open(part, mode) as file,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.stem) as bar,
        ):
            for chunk in _body_chunks(response, 1 << 20):
                file.write(chunk)
                bar.update(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        raise DatasetError(
            f"download of {url} was interrupted at {part.stat().st_size} bytes ({error}); run again to resume"
        ) from error
    received = part.stat().st_size
    if total is not None and received < total:
        raise DatasetError(f"download of {url} stopped at {received} of {total} bytes; run again to resume")
    if total is not None and received > total:
        part.unlink()
        raise DatasetError(
            f"download of {url} gave {received} bytes, more than the {total} announced; "
            "removed the partial file, run again"
        )


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
    """Refuse a file whose SHA-256 is not ``expected`` (any case), deleting it first if ``remove``.

    Raises:
        DatasetError: the checksums differ.
    """
    expected, actual = expected.strip().lower(), sha256_of(path)
    if actual != expected:
        if remove:
            path.unlink()
        raise DatasetError(f"{path}: SHA-256 is {actual}, expected {expected}")


def extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a zip into ``target`` safely: into a scratch folder first, then renamed into place.

    Refuses members that would land outside ``target`` (zip-slip) or are links, and archives
    whose members inflate past the free space or by more than :data:`MAX_INFLATION`, all before
    writing a byte (the sizes are the members' declared ones, which ``zipfile`` does not read past).

    Raises:
        DatasetError: not a readable zip, an unsafe or oversized member, corrupt data, or a full disk.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        return target
    try:
        zip_file = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{archive}: not a readable zip archive ({error})") from error
    with zip_file, staged_directory(target) as scratch:
        root = scratch.resolve()
        for member in zip_file.infolist():
            destination = (root / member.filename).resolve()
            if destination != root and root not in destination.parents:
                raise DatasetError(f"{archive}: member {member.filename!r} would extract outside the target")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise DatasetError(f"{archive}: member {member.filename!r} is a symbolic link")
        _check_inflated_size(archive, zip_file, target.parent)
        start = time.perf_counter()
        try:
            for member in tqdm(zip_file.infolist(), desc=f"extracting {archive.name}", unit="file"):
                zip_file.extract(member, scratch)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # bad CRC, corrupt data
            raise DatasetError(f"{archive}: corrupt zip archive ({error}); download it again") from error
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DatasetError(
                f"{archive}: the disk of {target.parent} filled up while extracting; nothing was "
                "kept: free some space, or extract it elsewhere"
            ) from None
    log.info("extracted %s in %.1f s", archive, time.perf_counter() - start)
    return target


def _check_inflated_size(archive: Path, zip_file: zipfile.ZipFile, folder: Path) -> None:
    """Refuse a zip whose members inflate past ``folder``'s free space or :data:`MAX_INFLATION` times its size."""
    inflated = sum(member.file_size for member in zip_file.infolist())
    packed = archive.stat().st_size
    if inflated > MAX_INFLATION * packed:
        raise DatasetError(
            f"{archive}: its members inflate to {inflated / 1e9:.2f} GB, {inflated / packed:,.0f} "
            f"times its size (at most {MAX_INFLATION}x); not a dataset archive"
        )
    free = shutil.disk_usage(folder).free
    if inflated > free * FREE_SHARE:
        raise DatasetError(
            f"{archive}: extracting needs {inflated / 1e9:.2f} GB and {folder} has {free / 1e9:.2f} GB "
            "free; free some space, or extract it elsewhere"
        )

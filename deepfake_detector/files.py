"""Writing files and folders so that readers see the old content or the new, never half of it.

Everything is written to a scratch name beside its target and renamed over it when complete:
a rename within a folder is atomic, so a crash, a kill or a full disk leaves the previous
content (or none) and no scratch file. New files and folders get the permissions ``open()``
and ``mkdir()`` would give them (the scratch ones are made private, 0600 and 0700).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A scratch file beside ``path`` for the block to write; renamed over ``path`` if the block succeeds.

    ``suffix`` ends the scratch name, for writers that go by it (Keras saves only ``.keras``
    files). The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    scratch = Path(name)
    try:
        yield scratch
        os.chmod(scratch, 0o666 & ~_umask())
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def write_atomically(path: str | Path, content: bytes | str) -> Path:
    """Write ``content`` (text is UTF-8 encoded) to ``path`` through :func:`replacing`."""
    with replacing(path) as scratch:
        scratch.write_bytes(content.encode() if isinstance(content, str) else content)
    return Path(path)


@contextlib.contextmanager
def staged_directory(path: str | Path) -> Iterator[Path]:
    """A scratch folder beside ``path`` for the block to fill; renamed to ``path`` if the block succeeds.

    A reader (a server watching for new versions, a later run looking for a cache) never sees
    a half-filled folder. ``path`` must not exist, or be an empty folder, which is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield scratch
        os.chmod(scratch, 0o777 & ~_umask())
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(scratch, path)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as lower-case hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """This tool's folder in the user's cache, as Keras and other dataset tools keep theirs:
    ``$DEEPFAKE_DETECTOR_CACHE``, else ``$XDG_CACHE_HOME/deepfake-detector``, else
    ``~/.cache/deepfake-detector``. Decoded datasets and converted models go there."""
    if os.environ.get("DEEPFAKE_DETECTOR_CACHE"):
        return Path(os.environ["DEEPFAKE_DETECTOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfake-detector"

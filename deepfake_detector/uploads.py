"""Uploads kept for review or retraining (``python inference.py --keep-uploads``); off by default.

Each image is stored under a name the server makes: the SHA-256 of its bytes and the suffix of
the format decoded from those bytes (``<sha256>.jpg``), beside a sidecar ``<sha256>.json`` with
the answer the client got. The client's file name is never used, not even in the sidecar, so
``../../etc/passwd`` or ``.htaccess`` cannot choose where anything lands. Identical content is
stored once. Files are written atomically (a temporary file in the folder, then a rename).

Keeping an upload never changes or fails its answer: past the size cap or the file cap nothing
more is stored (one warning), and a disk error (full disk, permissions) is logged and the request
goes on. The size counted is what the files take on disk (whole blocks: a 300-byte sidecar takes
4 KB), not their lengths, so a stream of tiny uploads cannot fill a disk under a small cap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

from deepfake_detector.files import write_atomically
from deepfake_detector.preprocessing import SUPPORTED_FORMATS

log = logging.getLogger(__name__)

#: Suffixes that differ from the lower-cased PIL format name. MPO is a JPEG with extra frames
#: after the first: JPEG viewers show it as one.
SUFFIX_EXCEPTIONS = {"JPEG": ".jpg", "MPO": ".jpg"}
#: What the store itself writes; the only files it counts at start-up.
STORED_NAME = re.compile(r"(?P<digest>[0-9a-f]{64})\.(?P<suffix>[a-z]+)")
#: Most files (images and sidecars) kept by default: 10,000 uploads.
MAX_FILES = 20_000
#: The allocation unit assumed where the file system does not say.
DEFAULT_BLOCK = 4096


def suffix_for(image_format: str) -> str:
    """The file suffix for a format :mod:`deepfake_detector.preprocessing` accepts (``JPEG`` -> ``.jpg``)."""
    if image_format not in SUPPORTED_FORMATS:
        raise ValueError(f"not a format the server decodes: {image_format!r}")
    return SUFFIX_EXCEPTIONS.get(image_format, "." + image_format.lower())


class UploadStore:
    """Keeps scored uploads in ``directory`` until they take ``max_bytes`` of disk or ``max_files``
    files (images and sidecars, two per upload).

    The blocks and files already there are counted when the store is made, so the caps hold across
    restarts. Thread-safe: request threads reserve their bytes under a lock and write outside
    it. Two servers sharing a folder each count only what they found at start-up and wrote.
    """

    def __init__(self, directory: str | Path, max_bytes: int, max_files: int = MAX_FILES):
        if max_bytes < 0 or max_files < 0:
            raise ValueError(f"max_bytes and max_files must be 0 or more, not {max_bytes} and {max_files}")
        self.directory = Path(directory)
        self.max_bytes, self.max_files = max_bytes, max_files
        self._lock = threading.Lock()
        self._kept: set[str] = set()  # digests stored or being stored
        self._bytes = 0  # allocated on disk, in whole blocks
        self._files = 0
        self._block = DEFAULT_BLOCK
        self._full_warned = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._block = os.statvfs(self.directory).f_bsize or DEFAULT_BLOCK
            self._count_existing()
        except OSError as error:  # the server still starts; each upload retries and logs
            log.warning("uploads will not be kept until %s can be written: %s", self.directory, error)
        log.info(
            "keeping uploads in %s: %.1f of %.1f MB and %d of %d files used",
            self.directory,
            self._bytes / 2**20,
            max_bytes / 2**20,
            self._files,
            max_files,
        )

    @property
    def stored_bytes(self) -> int:
        """Disk the folder's images and sidecars take (whole blocks), as counted at start-up plus those written since."""
        return self._bytes

    @property
    def stored_files(self) -> int:
        return self._files

    def _allocated(self, size: int) -> int:
        return -(-size // self._block) * self._block

    def keep(self, data: bytes, image_format: str, answer: dict) -> Path | None:
        """Store an upload and the answer it got (heatmap images left out); never raises.

        Args:
            data: the upload's bytes, exactly as received.
            image_format: the PIL format decoded from ``data`` (``"JPEG"``, ``"PNG"``, ...).
            answer: the API's answer for it (``label``, ``fake_probability``, ``faces``, ``model``...).

        Returns:
            The stored image's path, or None when it was already there, the cap is reached or
            the write failed.
        """
        try:
            return self._keep(data, image_format, answer)
        except OSError as error:
            log.error("upload not kept: %s", error)
        except Exception:  # a bug here must not cost the client its answer
            log.exception("upload not kept")
        return None

    def _keep(self, data: bytes, image_format: str, answer: dict) -> Path | None:
        digest = sha256(data).hexdigest()
        image_path = self.directory / f"{digest}{suffix_for(image_format)}"
        sidecar_path = self.directory / f"{digest}.json"
        record = {
            **_without_heatmaps(answer),
            "sha256": digest,
            "format": image_format,
            "bytes": len(data),
            "received": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        sidecar = (json.dumps(record, indent=1, allow_nan=False) + "\n").encode()
        size = self._allocated(len(data)) + self._allocated(len(sidecar))
        with self._lock:
            if digest in self._kept or image_path.exists():
                return None
            if self._bytes + size > self.max_bytes or self._files + 2 > self.max_files:
                if not self._full_warned:
                    log.warning(
                        "uploads no longer kept: %s holds %.1f MB in %d files, the caps are %.1f MB and %d files",
                        self.directory,
                        self._bytes / 2**20,
                        self._files,
                        self.max_bytes / 2**20,
                        self.max_files,
                    )
                    self._full_warned = True
                return None
            self._kept.add(digest)
            self._bytes += size
            self._files += 2
        try:
            self.directory.mkdir(parents=True, exist_ok=True)  # it may have been missing at start-up
            write_atomically(image_path, data)
            try:
                write_atomically(sidecar_path, sidecar)
            except BaseException:
                image_path.unlink(missing_ok=True)  # no image without its answer
                raise
        except BaseException:
            with self._lock:
                self._kept.discard(digest)
                self._bytes -= size
                self._files -= 2
            raise
        with self._lock:  # what the file system allocated, where it differs from whole blocks
            self._bytes += _disk_bytes(image_path) + _disk_bytes(sidecar_path) - size
        return image_path

    def _count_existing(self) -> None:
        with os.scandir(self.directory) as entries:
            for entry in entries:
                match = STORED_NAME.fullmatch(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    self._bytes += entry.stat(follow_symlinks=False).st_blocks * 512
                    self._files += 1
                    if match["suffix"] != "json":
                        self._kept.add(match["digest"])


def _disk_bytes(path: Path) -> int:
    """What ``path`` takes on disk: its allocated 512-byte units (0 once it is gone)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _without_heatmaps(answer: dict) -> dict:
    """The answer less its Grad-CAM images (data URLs of a few KB each, made on request)."""
    kept = {key: value for key, value in answer.items() if key != "heatmap"}
    if "faces" in kept:
        kept["faces"] = [{key: value for key, value in face.items() if key != "heatmap"} for face in kept["faces"]]
    return kept

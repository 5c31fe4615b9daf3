"""A synthetic stand-in for the Kaggle "deepfake-and-real-images" zip: same layout, counts and image size.

It has the archive's ``Dataset/Train|Validation|Test/Real|Fake`` layout, its file names and,
at ``scale=1``, its 190,335 JPEGs of 256x256. The images are smooth colour noise with some
grain (no faces): they cost what real ones cost to store, extract and decode. The full-archive
benchmark measures that; the tests check that train.py extracts and caches such an archive.
"""

from __future__ import annotations

import io
import multiprocessing
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

#: (split, class folder, file prefix, count) of the Kaggle archive.
KAGGLE_COUNTS = (
    ("Train", "Real", "real", 70_001),
    ("Train", "Fake", "fake", 70_001),
    ("Validation", "Real", "real", 19_787),
    ("Validation", "Fake", "fake", 19_641),
    ("Test", "Real", "real", 5_413),
    ("Test", "Fake", "fake", 5_492),
)
SIDE = 256


def synthetic_jpeg(index: int, fake: bool, side: int = SIDE) -> bytes:
    """One reproducible smooth-noise JPEG; fakes get a sharp-edged patch so a model can tell them apart."""
    rng = np.random.default_rng([index, int(fake)])
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC
    )
    pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (side, side, 3), dtype=np.int16)
    if fake:
        y, x = rng.integers(side // 4, side // 2, 2)
        pixels[y : y + side // 3, x : x + side // 3] += 40
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _member(task: tuple[str, int, bool]) -> tuple[str, bytes]:
    name, index, fake = task
    return name, synthetic_jpeg(index, fake)


def archive_counts(scale: float) -> list[tuple[str, str, str, int]]:
    """The Kaggle counts times ``scale``, at least 2 images per class folder."""
    return [(split, folder, prefix, max(2, round(count * scale))) for split, folder, prefix, count in KAGGLE_COUNTS]


def write_archive(path: str | Path, scale: float = 1.0, corrupt: int = 0, workers: int | None = None) -> dict:
    """Write the zip; returns {"images": N, "bytes": size}. JPEGs are stored, not deflated, as Kaggle's are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = [
        (f"Dataset/{split}/{folder}/{prefix}_{i}.jpg", i, folder == "Fake")
        for split, folder, prefix, count in archive_counts(scale)
        for i in range(count)
    ]
    part = path.with_name(path.name + ".part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as archive:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for name, payload in tqdm(
                pool.imap(_member, tasks, chunksize=256), total=len(tasks), desc=f"writing {path.name}", unit="img"
            ):
                archive.writestr(name, payload)
        for split in ("Train", "Validation", "Test"):
            for i in range(corrupt):
                archive.writestr(f"Dataset/{split}/Fake/corrupt_{i}.jpg", synthetic_jpeg(i, True)[:700])
    part.replace(path)
    return {"images": len(tasks) + 3 * corrupt, "bytes": path.stat().st_size}

"""Shared helpers for the benchmark scripts: test images from the shared data, percentiles.

Servers, hostile uploads and synthetic archives come from ``harness/``, which the tests use too;
nothing here imports ``tests/``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from harness.server import memory_mb

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "lfw-faceswap"


def face_files(split: str = "Test", limit: int | None = None) -> list[Path]:
    """Real and fake face files from the shared data, interleaved, sorted."""
    real = sorted((SHARED_DATA / split / "Real").glob("*.jpg"))
    fake = sorted((SHARED_DATA / split / "Fake").glob("*.jpg"))
    if not real or not fake:
        raise SystemExit(f"no face images under {SHARED_DATA / split}; see ../shared/data/README.md")
    files = [f for pair in zip(real, fake) for f in pair]
    return files[:limit] if limit else files


def jpegs_256(count: int) -> list[bytes]:
    """Shared-data faces upscaled to 256x256 JPEGs (the Kaggle archive's size)."""
    out = []
    for path in face_files(limit=count):
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def percentiles(milliseconds, points=(50, 90, 99)) -> dict[str, float]:
    values = np.asarray(milliseconds, dtype=np.float64)
    return {f"p{p}": float(np.percentile(values, p)) for p in points}


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running process, in MB."""
    return memory_mb(pid)[1]

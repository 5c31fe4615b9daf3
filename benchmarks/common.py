"""Shared helpers for the benchmark scripts: test images from the lfw-faceswap data set, percentiles.

Servers, hostile uploads and synthetic archives come from ``harness/``, which the tests use too;
nothing here imports ``tests/``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from harness.server import memory_mb

REPO = Path(__file__).resolve().parent.parent


def lfw_faceswap_dir() -> Path:
    """The lfw-faceswap folder the benchmarks read faces from: ``$LFW_FACESWAP_DIR``; else ``data/lfw-faceswap``
    (what ``python -m scripts.rebuild_data lfw-faceswap`` writes) where it exists; else the reference copy
    beside the repository, the one the published figures were measured on."""
    if os.environ.get("LFW_FACESWAP_DIR"):
        return Path(os.environ["LFW_FACESWAP_DIR"])
    rebuilt = REPO / "data" / "lfw-faceswap"
    return rebuilt if rebuilt.is_dir() else REPO.parent / "shared" / "data" / "lfw-faceswap"


LFW_FACESWAP = lfw_faceswap_dir()


def face_files(split: str = "Test", limit: int | None = None) -> list[Path]:
    """Real and fake face files from lfw-faceswap, interleaved, sorted."""
    real = sorted((LFW_FACESWAP / split / "Real").glob("*.jpg"))
    fake = sorted((LFW_FACESWAP / split / "Fake").glob("*.jpg"))
    if not real or not fake:
        raise SystemExit(
            f"no face images under {LFW_FACESWAP / split}: run python -m scripts.rebuild_data "
            "lfw-faceswap (docs/data.md), or set LFW_FACESWAP_DIR to an lfw-faceswap folder"
        )
    files = [f for pair in zip(real, fake) for f in pair]
    return files[:limit] if limit else files


def jpegs_256(count: int) -> list[bytes]:
    """lfw-faceswap faces upscaled to 256x256 JPEGs (the Kaggle archive's size)."""
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

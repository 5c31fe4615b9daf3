"""Plain helpers the tests share: synthetic images and datasets, toy features, a stand-in face finder.

Fake images carry a bright square; real ones do not. Any model that learns anything learns
that, so a Fake image scoring below 0.5 means the labels are wired backwards somewhere.
Fixtures live in ``conftest.py``; this module has none, so test modules and the scripts that
tests run in subprocesses can import it without pytest.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 48  # pixels: the size the session's tiny model is trained and served at


def synthetic_image(fake: bool, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Smooth random colours; fakes get a bright white square somewhere in the middle."""
    base = rng.integers(40, 140, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image).copy()
    if fake:
        x, y = rng.integers(size // 6, size // 2, size=2)
        array[y : y + size // 3, x : x + size // 3] = 255
    return Image.fromarray(array)


def toy_features() -> tuple[np.ndarray, np.ndarray]:
    """24 four-number samples with alternating 0/1 targets: enough for a one-layer model's optimizer tests."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(24, 4)).astype("float32"), (np.arange(24) % 2)[:, None].astype("float32")


def image_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """``image`` encoded as ``fmt`` (PIL's format name), as a client would upload it."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<split>/Real|Fake/*.png`` with ``per_class[split]`` synthetic images in each folder."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for folder, fake in (("Real", False), ("Fake", True)):
            directory = root / split / folder
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                synthetic_image(fake, rng).save(directory / f"{folder.lower()}_{i}.png")
    return root


class GridFinder:
    """A stand-in face finder: ``count`` square boxes on a grid, growing from left to right."""

    name = "grid"

    def __init__(self, count: int):
        from deepfake_detector.faces import Framing

        self.count, self.framing = count, Framing(scale=2.35)

    def find(self, image):
        from deepfake_detector.faces import FaceBox

        boxes = [FaceBox(10 + 30 * (i % 10), 10 + 60 * (i // 10), 8 + i % 10, 8 + i % 10) for i in range(self.count)]
        return sorted(boxes, key=lambda box: (box.x, box.y))  # left to right, as finders answer

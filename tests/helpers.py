"""Plain helpers the tests share: synthetic images and datasets, toy features, a stand-in face finder.

Fake images carry a bright square; real ones do not. Any model that learns anything learns
that, so a Fake image scoring below 0.5 means the labels are wired backwards somewhere.
Fixtures live in ``conftest.py``; this module has none, so test modules and the scripts that
tests run in subprocesses can import it without pytest.
"""

from __future__ import annotations

import io
import os
import re
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


# ----------------------------------------------------------------------------- video clips

WIDTH, HEIGHT, SIDE, STEPS = 320, 240, 100, 40  # frames of the clips, pasted face side, frames per clip


def astronaut() -> Image.Image:
    """The astronaut's face, darkened: the tiny model calls her bright white suit fake."""
    from PIL import ImageEnhance
    from skimage import data

    return ImageEnhance.Brightness(Image.fromarray(data.astronaut()).crop((140, 20, 320, 200))).enhance(0.6)


def clip(paths, container: str = "mp4", **options) -> bytes:
    """A 40-frame clip of ``paths`` (:class:`harness.videos.FacePath`) moving over a plain background."""
    from harness import videos

    codec = "mpeg4" if container == "avi" else "libx264"
    return videos.encode(
        videos.frames_with_faces(paths, STEPS, WIDTH, HEIGHT), fps=10, container=container, codec=codec, **options
    )


def moving(mark: bool = False):
    from harness.videos import FacePath

    return FacePath(astronaut(), (10, 60), (210, 60), SIDE, mark)


def crossing() -> list:
    """Two faces that pass each other: one left to right above, one right to left below."""
    from harness.videos import FacePath

    return [FacePath(astronaut(), (10, 20), (210, 20), SIDE), FacePath(astronaut(), (210, 100), (10, 100), SIDE)]


# ----------------------------------------------------------------------------- a server's open files

AUTOGRAPH_SCRATCH = "__autograph_generated_file"  # TensorFlow writes the code it traces to the temp folder


def open_files(pid: int) -> set[str]:
    """What the process's file descriptors open for writing point at, for those still open when
    read. A spooled upload is written; files only read (Python modules imported lazily, autograph
    reading the source it traces) are not uploads touching the disk, nor is the Python source
    autograph writes when a function is first traced (the Grad-CAM explainer, built on first use)."""
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = int(re.search(r"^flags:\s+([0-7]+)", info.read(), re.M).group(1), 8)
        except OSError:
            continue  # closed meanwhile
        if flags & os.O_ACCMODE != os.O_RDONLY and not Path(target).name.startswith(AUTOGRAPH_SCRATCH):
            targets.add(target)
    return targets

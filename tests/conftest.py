"""Shared fixtures: a tiny synthetic dataset and a tiny model trained on it (once per run).

Fake images carry a bright square; real ones do not. Any model that learns anything learns
that, so a Fake image scoring below 0.5 means the labels are wired backwards somewhere.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

IMAGE_SIZE = 48


def synthetic_image(fake: bool, rng: np.random.Generator, size: int = 48) -> Image.Image:
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
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for folder, fake in (("Real", False), ("Fake", True)):
            directory = root / split / folder
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                synthetic_image(fake, rng).save(directory / f"{folder.lower()}_{i}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def tflite_cache(tmp_path_factory) -> Path:
    """Converted TFLite models go to a temporary folder (servers started by tests inherit it),
    never to the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("tflite-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("DEEPFAKE_DETECTOR_CACHE", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), {"Train": 96, "Validation": 16, "Test": 16})


@pytest.fixture(scope="session")
def trained_model_path(tiny_dataset, tmp_path_factory) -> Path:
    """The seed CNN trained end to end through train(), at 32 px, on the synthetic set."""
    from deepfake_detector.training import TrainConfig, train

    output = tmp_path_factory.mktemp("model") / "tiny.keras"
    config = TrainConfig(
        arch="seed", data_dir=str(tiny_dataset), output=str(output), image_size=IMAGE_SIZE,
        epochs=8, batch_size=4, learning_rate=1e-4, early_stopping_patience=0, seed=7,
    )  # fmt: skip
    path, _ = train(config)
    return path


@pytest.fixture(scope="session")
def detector(trained_model_path):
    from deepfake_detector.detector import Detector

    return Detector.from_path(trained_model_path)


@pytest.fixture()
def client(detector):
    from deepfake_detector.web import RequestLimits, create_app

    app = create_app(detector, RequestLimits(upload_bytes=2 * 1024 * 1024))
    return app.test_client()


@pytest.fixture()
def fake_png() -> bytes:
    return image_bytes(synthetic_image(True, np.random.default_rng(123)))


@pytest.fixture()
def real_png() -> bytes:
    return image_bytes(synthetic_image(False, np.random.default_rng(321)))

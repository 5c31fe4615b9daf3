"""Shared fixtures: a tiny synthetic dataset and a tiny model trained on it.

The tiny model is trained once per version of the code: it is kept in pytest's cache
(``.pytest_cache``) under a hash of the package's sources, this file, ``tests/helpers.py`` and the
TensorFlow, Keras and NumPy versions, so any change to what trains it trains it again, and
``pytest --cache-clear`` always does.

The plain helpers they use (synthetic images, datasets) live in ``tests/helpers.py``; test
modules import those from there, never from this file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tests.helpers import IMAGE_SIZE, image_bytes, make_dataset, synthetic_image


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


def tiny_model_key() -> str:
    """What the tiny model depends on: every source that trains it, and the libraries' versions."""
    import keras
    import tensorflow as tf

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(f"{tf.__version__} {keras.__version__} {np.__version__}".encode())
    for path in sorted(root.joinpath("deepfake_detector").rglob("*.py")) + [
        Path(__file__),
        root / "tests" / "helpers.py",
    ]:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_model_path(request, tmp_path_factory) -> Path:
    """The seed CNN trained end to end through train(), at IMAGE_SIZE pixels, on the synthetic set
    (tiny_dataset's recipe, seeded), or the same model from pytest's cache when nothing it depends on changed."""
    output = tmp_path_factory.mktemp("model") / "tiny.keras"
    cached = request.config.cache.mkdir("tiny-model") / f"{tiny_model_key()}.keras"
    if not cached.is_file():
        train_tiny_model(request.getfixturevalue("tiny_dataset"), output)
        for stale in cached.parent.glob("*.keras"):
            stale.unlink()
        shutil.copyfile(output, cached.with_suffix(".partial"))
        os.replace(cached.with_suffix(".partial"), cached)
    else:
        shutil.copyfile(cached, output)
    return output


def train_tiny_model(dataset: Path, output: Path) -> None:
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import train

    config = TrainConfig(
        arch="seed",
        data_dir=str(dataset),
        output=str(output),
        image_size=IMAGE_SIZE,
        epochs=8,
        batch_size=4,
        learning_rate=1e-4,
        early_stopping_patience=0,
        seed=7,
        verbose=0,
    )
    path, _ = train(config)
    assert Path(path) == output


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

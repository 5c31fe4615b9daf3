"""Shared fixtures: a tiny synthetic dataset and a tiny model trained on it (once per run).

The plain helpers they use (synthetic images, datasets) live in ``tests/helpers.py``; test
modules import those from there, never from this file.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def trained_model_path(tiny_dataset, tmp_path_factory) -> Path:
    """The seed CNN trained end to end through train(), at IMAGE_SIZE pixels, on the synthetic set."""
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import train

    output = tmp_path_factory.mktemp("model") / "tiny.keras"
    config = TrainConfig(
        arch="seed",
        data_dir=str(tiny_dataset),
        output=str(output),
        image_size=IMAGE_SIZE,
        epochs=8,
        batch_size=4,
        learning_rate=1e-4,
        early_stopping_patience=0,
        seed=7,
    )
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

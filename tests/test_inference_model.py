"""The tutorial's ``InferenceModel`` (``deepfake_detector/inference_model.py``) used as a library
by a script, in a process of its own; ``tests/test_serving.py`` runs its server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from harness.server import REPO
from tests.helpers import synthetic_image

pytestmark = pytest.mark.slow  # a process of its own, which loads the shipped model

TUTORIAL_SCRIPT = """
import sys
import tensorflow as tf
from deepfake_detector.errors import ModelFileError
from deepfake_detector.inference_model import InferenceModel

model = InferenceModel()  # the shipped model: none was trained in this folder
for path in sys.argv[1:]:
    model.predict_image(path)
small = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(1)])
small.save("small.keras")
try:
    InferenceModel("small.keras")
except ModelFileError as error:
    print("ModelFileError:", error)
print("done", flush=True)
"""


def test_a_script_that_uses_inference_model_exits_cleanly(tmp_path):
    """The review's script (score 40 images, save a small Sequential, catch the ModelFileError of
    loading it), run from a folder outside the repository, died at exit with "FATAL: exception not
    rethrown", status 134, 3 runs of 3: Grad-CAM was still being traced in a daemon thread, which
    pthread_exit unwinds through TensorFlow's C++ code at exit."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        paths.append(str(tmp_path / f"{i}.jpg"))
        synthetic_image(i % 2 == 0, rng, size=160).save(paths[-1])
    (tmp_path / "script.py").write_text(TUTORIAL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "script.py", *paths], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
    assert "terminate called" not in done.stderr and "FATAL" not in done.stderr
    assert "ModelFileError:" in done.stdout and "has no deepfake_detector.json" in done.stdout

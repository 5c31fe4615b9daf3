"""A loaded model that answers ``predict(image) -> Prediction``.

The model is loaded once; single images go through a traced ``tf.function`` rather than
``model.predict`` (whose per-call set-up dominated the original's 113 ms per upload).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf

from deepfake_detector import labels
from deepfake_detector.model import ModelMetadata, load_model
from deepfake_detector.preprocessing import ImageSource, load_image, open_image

log = logging.getLogger(__name__)

#: The model shipped with the repository (see models/README.md).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "deepfake_detector.keras"


@dataclass(frozen=True)
class Prediction:
    """The verdict for one image. ``fake_probability`` is P(fake) whatever the class order."""

    label: str
    fake_probability: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


class Detector:
    """A model plus its metadata, ready to score images."""

    def __init__(self, model, metadata: ModelMetadata, name: str | None = None, warm_up: bool = True):
        self.model = model
        self.metadata = metadata
        self.name = name or metadata.name
        self.image_size = metadata.image_size
        self.threshold = float(metadata.threshold)
        self._explainer = None  # Grad-CAM, built on first use by heatmaps()
        self._finder = None  # the default face detector, built on first use by predict_faces()
        self._explainer_lock = threading.Lock()
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8)
        self._forward = tf.function(self._scores, input_signature=[spec], reduce_retracing=True)
        if warm_up:
            self.scores(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    @classmethod
    def from_path(cls, path: str | Path = DEFAULT_MODEL_PATH, warm_up: bool = True) -> "Detector":
        """Load a saved model; raises :class:`deepfake_detector.model.ModelFileError`."""
        model, metadata = load_model(path)
        log.info("loaded %s (%s, threshold %.3f)", path, metadata.arch, metadata.threshold)
        return cls(model, metadata, name=Path(path).name, warm_up=warm_up)

    def _scores(self, images: tf.Tensor) -> tf.Tensor:
        output = self.model(tf.cast(images, tf.float32), training=False)[:, 0]
        return labels.fake_probability_from_output(output, self.metadata.class_names)

    def scores(self, images: np.ndarray) -> np.ndarray:
        """``fake_probability`` for a batch of preprocessed uint8 images (N x S x S x 3)."""
        return self._forward(tf.convert_to_tensor(images, tf.uint8)).numpy().astype(np.float64)

    def prediction_for(self, fake_probability: float) -> Prediction:
        fake_probability = float(fake_probability)
        return Prediction(labels.label_for(fake_probability, self.threshold), fake_probability, self.threshold)

    def predict(self, source: ImageSource) -> Prediction:
        """Score one image (bytes, path, file object or PIL image).

        Raises:
            deepfake_detector.preprocessing.ImageError: the input is not a usable image.
        """
        return self.prediction_for(self.scores(self.preprocess(source)[None])[0])

    def preprocess(self, source: ImageSource) -> np.ndarray:
        return load_image(source, self.image_size)

    def predict_batch(self, images: Iterable[np.ndarray]) -> list[Prediction]:
        batch = np.stack(list(images))
        return [self.prediction_for(p) for p in self.scores(batch)]

    def predict_faces(self, source: ImageSource, finder=None, explain: bool = False):
        """Score every face in a photo; the verdict is the highest face score.

        Args:
            source: bytes, path, file object or PIL image.
            finder: a :class:`deepfake_detector.faces.FaceFinder` (default: RetinaFace).
            explain: also compute each face's Grad-CAM heatmap.

        Returns:
            :class:`deepfake_detector.faces.ImageScore`.
        """
        from deepfake_detector import faces

        if finder is None:
            with self._explainer_lock:  # load the face detector once, not per call
                if self._finder is None:
                    self._finder = faces.default_finder()
            finder = self._finder
        return faces.score_image(self, open_image(source), finder, explain=explain)

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Where the evidence for each image's label is: N x S x S in 0..1 (see explain.py)."""
        with self._explainer_lock:
            if self._explainer is None:
                from deepfake_detector.explain import Explainer

                self._explainer = Explainer(self.model, self.metadata.class_names, self.threshold, self.image_size)
        return self._explainer.heatmaps(images, self.scores)

    def describe(self) -> dict:
        """What a client may want to know about the model (served by ``/healthz``)."""
        return {
            "model": self.name,
            "arch": self.metadata.arch,
            "version": self.metadata.versions.get("deepfake_detector", "unknown"),
            "created": self.metadata.created,
            "threshold": self.threshold,
            "threshold_rule": self.metadata.threshold_rule,
            "image_size": self.image_size,
        }


def timed(function, *args):
    """(result, elapsed milliseconds)."""
    start = time.perf_counter()
    result = function(*args)
    return result, (time.perf_counter() - start) * 1000.0

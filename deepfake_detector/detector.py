"""A loaded model that scores photos: ``predict(image) -> Prediction``, ``predict_faces(photo) -> ImageScore``.

The model is loaded once and scored through one of two runtimes (``recipes.RUNTIMES``):

* ``"keras"``: a traced ``tf.function`` over the Keras model (not ``model.predict``, whose
  per-call set-up costs more than the network on one image). Best for large batches.
* ``"tflite"``: the same network converted to TFLite at load time and run by LiteRT
  (:mod:`deepfake_detector.tflite`), one image per call: what the web server uses.

Both apply the class order saved with the model, so both return P(fake). A photo is scored
face by face (:func:`deepfake_detector.faces.model_inputs` finds and frames the faces); its
verdict is its highest face score, the rule commercial detectors use: one swapped face makes
the photo fake.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from deepfake_detector import faces, labels
from deepfake_detector.cli import SHIPPED_MODEL
from deepfake_detector.explain import Explainer, overlay_data_url
from deepfake_detector.faces import FaceBox, FaceFinder
from deepfake_detector.model import DeepfakeDetectorModel, ModelMetadata, load_model
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, ImageSource, load_image, open_image
from deepfake_detector.recipes import RUNTIMES

log = logging.getLogger(__name__)

#: The model shipped with the repository (see models/README.md).
DEFAULT_MODEL_PATH = SHIPPED_MODEL
#: How the image verdict is made from the face scores (served as ``verdict``).
VERDICT_HIGHEST_FACE = "highest face score"
VERDICT_WHOLE_IMAGE = "whole image (no face found)"


@dataclass(frozen=True)
class Prediction:
    """The verdict for one image. ``fake_probability`` is P(fake) whatever the class order."""

    label: str
    fake_probability: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FaceScore:
    """One face: where it is, its verdict, and (on request) its Grad-CAM heatmap."""

    box: FaceBox
    prediction: Prediction
    crop: np.ndarray  # the model input it was scored on (S x S x 3 uint8)
    heatmap: np.ndarray | None = None  # S x S in 0..1, where the evidence for its label is

    def to_dict(self) -> dict:
        entry = {
            "box": self.box.as_list(),
            "fake_probability": self.prediction.fake_probability,
            "label": self.prediction.label,
        }
        if self.heatmap is not None:
            entry["heatmap"] = overlay_data_url(self.crop, self.heatmap)
        return entry


@dataclass
class ImageScore:
    """The verdict for a photo (its highest face score) and every face behind it."""

    prediction: Prediction
    faces: list[FaceScore]
    face_detection: str  # faces.FOUND or faces.NONE_FOUND
    verdict: str
    crop: np.ndarray | None = None  # the whole-image input, when no face was found
    heatmap: np.ndarray | None = None  # its heatmap, on request
    faces_found: int = 0  # may exceed len(faces): only the largest are scored

    def to_dict(self) -> dict:
        """The API's fields: ``label``, ``fake_probability``, ``threshold`` are the verdict."""
        result = {
            **self.prediction.to_dict(),
            "verdict": self.verdict,
            "face_detection": self.face_detection,
            "faces_found": self.faces_found,
            "faces_scored": len(self.faces),
            "faces": [face.to_dict() for face in self.faces],
        }
        if self.heatmap is not None:
            result["heatmap"] = overlay_data_url(self.crop, self.heatmap)
        return result

    @property
    def heatmap_count(self) -> int:
        return sum(face.heatmap is not None for face in self.faces) + (self.heatmap is not None)


class Detector:
    """A model plus its metadata, ready to score images."""

    def __init__(
        self,
        model,
        metadata: ModelMetadata,
        name: str | None = None,
        warm_up: bool = True,
        runtime: str = "keras",
        threads: int | None = None,
        model_path: str | Path | None = None,
        origin: str = "",
    ):
        """``threads``: the TFLite runtime's compute threads (default: every CPU). ``model_path``:
        the file the model came from, which lets the TFLite runtime reuse its cached conversion.
        ``origin``: where the model comes from, in words (shown on the page and by ``/healthz``)."""
        scorer = RUNTIMES.check(runtime).load()
        self.model = model
        self.detector_model = DeepfakeDetectorModel(model, metadata)  # applies the class order
        self.runtime = runtime
        self.metadata = metadata
        self.origin = origin
        self.name = name or metadata.name
        self.image_size = metadata.image_size
        self.resample = metadata.preprocessing.get("resample", DEFAULT_RESAMPLE)  # the resize filter it was made for
        self.threshold = float(metadata.threshold)
        self._explainer = None  # Grad-CAM, built on first use by heatmaps()
        self._explainer_lock = threading.Lock()
        self._scorer = scorer(model, metadata, threads, model_path)
        if warm_up:
            self.scores(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    @classmethod
    def from_path(
        cls,
        path: str | Path = DEFAULT_MODEL_PATH,
        warm_up: bool = True,
        runtime: str = "keras",
        threads: int | None = None,
        origin: str = "",
    ) -> Detector:
        """Load a saved model; raises :class:`deepfake_detector.errors.ModelFileError`."""
        model, metadata = load_model(path)
        log.info("loaded %s (%s, threshold %.3f, %s runtime)", path, metadata.arch, metadata.threshold, runtime)
        return cls(
            model,
            metadata,
            name=Path(path).name,
            warm_up=warm_up,
            runtime=runtime,
            threads=threads,
            model_path=path,
            origin=origin,
        )

    def scores(self, images: np.ndarray) -> np.ndarray:
        """``fake_probability`` for a batch of preprocessed uint8 images (N x S x S x 3)."""
        return self._scorer(np.asarray(images, np.uint8))

    def prediction_for(self, fake_probability: float) -> Prediction:
        fake_probability = float(fake_probability)
        return Prediction(labels.label_for(fake_probability, self.threshold), fake_probability, self.threshold)

    def predict(self, source: ImageSource) -> Prediction:
        """Score one image as a whole (bytes, path, file object or PIL image).

        Raises:
            deepfake_detector.errors.ImageError: the input is not a usable image.
        """
        return self.prediction_for(self.scores(self.preprocess(source)[None])[0])

    def preprocess(self, source: ImageSource) -> np.ndarray:
        return load_image(source, self.image_size, self.resample)

    def model_input(self, image: Image.Image, finder: FaceFinder | None = None) -> np.ndarray:
        """What the network was trained on, of a decoded image: its largest face framed as the
        page frames it (:func:`deepfake_detector.faces.framed_face`) when the model was trained on
        faces, else the whole image. ``evaluate.py`` scores this."""
        if self.metadata.framing == "face":
            return faces.framed_face(image, finder or faces.default_finder(), self.image_size, self.resample)[0]
        return load_image(image, self.image_size, self.resample)

    def predict_faces(
        self,
        source: ImageSource,
        finder: FaceFinder | None = None,
        explain: bool = False,
        max_faces: int | None = None,
        max_explained: int | None = None,
    ) -> ImageScore:
        """Score every face in a photo (the whole photo when none is found); the verdict is the
        highest face score.

        Args:
            source: bytes, path, file object or PIL image, decoded and checked by
                :func:`deepfake_detector.preprocessing.open_image` (a PIL image as a file would
                be). For an image that already went through it, :meth:`predict_decoded_faces`.
            finder: a :class:`deepfake_detector.faces.FaceFinder` (default: RetinaFace).
            explain: also compute Grad-CAM heatmaps: for at most ``max_explained`` faces, the
                highest scores first (those the verdict rests on), each one a backward pass.
            max_faces: score only the largest faces (see :func:`deepfake_detector.faces.model_inputs`).

        Raises:
            deepfake_detector.errors.ImageError: the input is not a usable image.
        """
        return self.predict_decoded_faces(open_image(source), finder, explain, max_faces, max_explained)

    def predict_decoded_faces(
        self,
        image: Image.Image,
        finder: FaceFinder | None = None,
        explain: bool = False,
        max_faces: int | None = None,
        max_explained: int | None = None,
    ) -> ImageScore:
        """:meth:`predict_faces` of an image :func:`deepfake_detector.preprocessing.open_image` (or
        ``probe_image`` then ``decode``) already returned: it is used as it is, neither checked
        nor decoded again. The web app decodes each upload once, this way."""
        found = faces.model_inputs(image, finder or faces.default_finder(), self.image_size, max_faces, self.resample)
        scores = self.scores(found.inputs)
        heatmaps = [None] * len(scores)
        if explain:
            chosen = sorted(np.argsort(-scores, kind="stable")[:max_explained])
            for index, heatmap in zip(chosen, self.heatmaps(found.inputs[chosen]) if chosen else []):
                heatmaps[index] = heatmap
        if found.face_detection == faces.NONE_FOUND:
            return ImageScore(
                self.prediction_for(scores[0]),
                [],
                faces.NONE_FOUND,
                VERDICT_WHOLE_IMAGE,
                crop=found.inputs[0],
                heatmap=heatmaps[0],
            )
        face_scores = [
            FaceScore(box, self.prediction_for(score), crop, heatmap)
            for box, score, crop, heatmap in zip(found.boxes, scores, found.inputs, heatmaps)
        ]
        return ImageScore(
            self.prediction_for(max(scores)),
            face_scores,
            faces.FOUND,
            VERDICT_HIGHEST_FACE,
            faces_found=found.faces_found,
        )

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Where the evidence for each image's label is: N x S x S in 0..1 (see explain.py)."""
        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = Explainer(self.detector_model)
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
            "selection_rule": self.metadata.selection_rule,
            "framing": self.metadata.framing,
            "measured_on": self.metadata.measured_on(),
            "image_size": self.image_size,
            "flip_average": bool(self.metadata.flip_average),
            "runtime": self.runtime,
            "precision": self._scorer.precision,
            "int8": self.metadata.int8 or None,
            "origin": self.origin,
        }


class KerasScorer:
    """The ``"keras"`` runtime: a traced ``tf.function`` over the network and the class order
    saved with it, P(fake) for a uint8 batch of any size."""

    precision = "float32"

    def __init__(self, model, metadata: ModelMetadata, threads: int | None = None, model_path=None):
        self.detector_model = DeepfakeDetectorModel(model, metadata)
        size = metadata.image_size
        spec = tf.TensorSpec([None, size, size, 3], tf.uint8)
        self._forward = tf.function(self._scores, input_signature=[spec], reduce_retracing=True)

    def _scores(self, images: tf.Tensor) -> tf.Tensor:
        return self.detector_model.fake_probability(tf.cast(images, tf.float32))[:, 0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._forward(tf.convert_to_tensor(images, tf.uint8)).numpy().astype(np.float64)

"""A loaded model that answers ``predict(image) -> Prediction``.

The model is loaded once and scored through one of two runtimes:

* ``"keras"``: a traced ``tf.function`` over the Keras model (not ``model.predict``, whose
  per-call set-up dominated the original's 113 ms per upload). Best for large batches.
* ``"tflite"``: the same network converted to TFLite at load time and run by LiteRT with
  XNNPACK, one image per call, without TensorFlow's per-call overhead: what the web server
  uses (``benchmarks/latency.py`` measures both).

Both apply the class order saved with the model, so both return P(fake).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf

from deepfake_detector import labels
from deepfake_detector.files import write_atomically
from deepfake_detector.model import DeepfakeDetectorModel, ModelMetadata, load_model
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, ImageSource, load_image, open_image

log = logging.getLogger(__name__)

#: The model shipped with the repository (see models/README.md).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "deepfake_detector.keras"


#: How a Detector runs its network (see the module docstring).
RUNTIMES = ("keras", "tflite")


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

    def __init__(self, model, metadata: ModelMetadata, name: str | None = None, warm_up: bool = True,
                 runtime: str = "keras", threads: int | None = None, model_path: str | Path | None = None,
                 origin: str = ""):  # fmt: skip
        """``threads``: the TFLite runtime's compute threads (default: every CPU). ``model_path``:
        the file the model came from, which lets the TFLite runtime reuse its cached conversion.
        ``origin``: where the model comes from, in words (shown on the page and by ``/healthz``)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
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
        self._finder = None  # the default face detector, built on first use by predict_faces()
        self._explainer_lock = threading.Lock()
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8)
        self._forward = tf.function(self._scores, input_signature=[spec], reduce_retracing=True)
        self._lite = TFLiteScorer(model, metadata, threads, model_path) if runtime == "tflite" else None
        if warm_up:
            self.scores(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    @classmethod
    def from_path(cls, path: str | Path = DEFAULT_MODEL_PATH, warm_up: bool = True, runtime: str = "keras",
                  threads: int | None = None, origin: str = "") -> "Detector":
        """Load a saved model; raises :class:`deepfake_detector.model.ModelFileError`."""
        model, metadata = load_model(path)
        log.info("loaded %s (%s, threshold %.3f, %s runtime)", path, metadata.arch, metadata.threshold, runtime)
        return cls(model, metadata, name=Path(path).name, warm_up=warm_up, runtime=runtime, threads=threads,
                   model_path=path, origin=origin)

    def _scores(self, images: tf.Tensor) -> tf.Tensor:
        return self.detector_model.fake_probability(tf.cast(images, tf.float32))[:, 0]

    def scores(self, images: np.ndarray) -> np.ndarray:
        """``fake_probability`` for a batch of preprocessed uint8 images (N x S x S x 3)."""
        if self._lite is not None:
            return self._lite(np.asarray(images, np.uint8))
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
        return load_image(source, self.image_size, self.resample)

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
            "image_size": self.image_size,
            "flip_average": bool(self.metadata.flip_average),
            "runtime": self.runtime,
            "origin": self.origin,
        }


class TFLiteScorer:
    """The network as TFLite, run by LiteRT (XNNPACK kernels); one image per ``invoke``.

    An interpreter is not thread-safe: calls take turns under a lock, which on a small CPU
    server costs nothing, since each call already uses every core.

    Converting takes tens of seconds on a small CPU, so the flatbuffer of a model file is cached in
    :func:`cache_dir`, keyed by the file's SHA-256 and the TensorFlow version; a later start
    reads it back.
    """

    def __init__(self, model, metadata: ModelMetadata, threads: int | None = None,
                 model_path: str | Path | None = None):  # fmt: skip
        from ai_edge_litert.interpreter import Interpreter

        from deepfake_detector.export import tflite_flatbuffer

        start = time.perf_counter()
        cached = _cache_file(model_path) if model_path is not None else None
        interpreter = None
        if cached is not None and cached.is_file():
            try:
                interpreter = Interpreter(model_content=cached.read_bytes(), num_threads=threads or os.cpu_count())
                log.info("TFLite model read from the cache %s", cached)
            except (OSError, ValueError, RuntimeError) as error:
                log.warning("ignoring the unreadable cached TFLite model %s: %s", cached, error)
        if interpreter is None:
            flatbuffer = tflite_flatbuffer(model, metadata)
            interpreter = Interpreter(model_content=flatbuffer, num_threads=threads or os.cpu_count())
            log.info("converted to TFLite in %.1f s", time.perf_counter() - start)
            if cached is not None:
                _write_atomically(cached, flatbuffer)
        self._interpreter = interpreter
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        scores = np.empty(len(images), np.float64)
        with self._lock:
            for index, image in enumerate(images):
                self._interpreter.set_tensor(self._input, image[None])
                self._interpreter.invoke()
                scores[index] = self._interpreter.get_tensor(self._output)[0]
        return scores


def timed(function, *args):
    """(result, elapsed milliseconds)."""
    start = time.perf_counter()
    result = function(*args)
    return result, (time.perf_counter() - start) * 1000.0


def cache_dir() -> Path:
    """Where converted models are kept: ``$DEEPFAKE_DETECTOR_CACHE``, else
    ``$XDG_CACHE_HOME/deepfake-detector``, else ``~/.cache/deepfake-detector``."""
    if os.environ.get("DEEPFAKE_DETECTOR_CACHE"):
        return Path(os.environ["DEEPFAKE_DETECTOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfake-detector"


def _cache_file(model_path: str | Path) -> Path | None:
    try:
        digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    except OSError:
        return None
    return cache_dir() / f"{digest[:32]}-tf{tf.__version__}.tflite"


def _write_atomically(path: Path, content: bytes) -> None:
    """A cache is a convenience: a folder we cannot write to costs a warning, not the start-up."""
    try:
        write_atomically(path, content)
    except OSError as error:
        log.warning("could not cache the TFLite model in %s: %s", path.parent, error)

"""The network as TFLite: converted once per model file, run by LiteRT with XNNPACK kernels.

One image per call without TensorFlow's per-call overhead: what the web server scores with
(``Detector(runtime="tflite")``; ``benchmarks/latency.py`` measures both runtimes). The same
flatbuffer is what ``export.py --format tflite`` writes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deepfake_detector.files import sha256_of, user_cache_dir, write_atomically
from deepfake_detector.model import DeepfakeDetectorModel, ModelMetadata
from deepfake_detector.networks import one_pass

log = logging.getLogger(__name__)

#: The name of the exported models' output (SavedModel signature and TFLite alike).
OUTPUT_NAME = "fake_probability"


def fake_probability_outputs(model: keras.Model, metadata: ModelMetadata, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """``{OUTPUT_NAME: float32 [N]}`` for uint8 images, the class order applied: an export's output."""
    probability = DeepfakeDetectorModel(model, metadata).fake_probability(tf.cast(images, tf.float32))[:, 0]
    return {OUTPUT_NAME: tf.cast(probability, tf.float32)}


def tflite_flatbuffer(
    model: keras.Model, metadata: ModelMetadata, calibration: np.ndarray | None = None, dynamic: bool = False
) -> bytes:
    """The model as a TFLite flatbuffer: ``image`` uint8 ``[1, S, S, 3]`` -> ``fake_probability`` ``[1]``.

    The class order is applied inside, so the output is P(fake) whatever the training order.
    With ``calibration`` (uint8 images, N x S x S x 3), post-training quantization: int8 weights
    and activations, their ranges measured on those images; with ``dynamic``, int8 weights and
    activations quantized per call from their own range. Input and output stay as they are.
    """
    size = metadata.image_size
    model = one_pass(model)  # a flip-averaged network's member runs once, on the image and its mirror

    def predict(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return fake_probability_outputs(model, metadata, image)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", predict, input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")])
    with tempfile.TemporaryDirectory(prefix="deepfake-detector-tflite-") as scratch:
        archive.write_out(scratch, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["serving_default"])
        if calibration is not None or dynamic:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if calibration is not None:
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        return converter.convert()


class LiteModel:
    """One flatbuffer run by LiteRT (XNNPACK kernels), one image per ``invoke``: P(fake) for a uint8 batch.

    An interpreter is not thread-safe: calls take turns under a lock, which on a small CPU
    server costs nothing, since each call already uses every core.
    """

    def __init__(self, flatbuffer: bytes, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=flatbuffer, num_threads=threads or os.cpu_count())
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


#: An int8 copy's name inside a ``.keras`` file (written by :mod:`deepfake_detector.quantize`).
INT8_ENTRY = "model.int8.tflite"


def stored_int8(path: str | Path | None, metadata: ModelMetadata) -> bytes | None:
    """The int8 flatbuffer a model file holds, when its metadata says it passed the check; else None."""
    if path is None or not metadata.int8.get("served"):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(INT8_ENTRY) if INT8_ENTRY in archive.namelist() else None
    except (OSError, zipfile.BadZipFile):
        return None


class TFLiteScorer:
    """The ``"tflite"`` runtime: the model's int8 copy when its file holds one that passed
    (:mod:`deepfake_detector.quantize`), otherwise the float network converted to TFLite.

    Converting takes tens of seconds on a small CPU, so the float flatbuffer of a model file is
    cached in :func:`cache_dir`, keyed by the file's SHA-256, the TensorFlow version and
    :data:`CONVERSION`; a later start reads it back.
    """

    def __init__(
        self, model, metadata: ModelMetadata, threads: int | None = None, model_path: str | Path | None = None
    ):
        int8 = stored_int8(model_path, metadata)
        if int8 is not None:
            self.precision = "int8"
            self._lite = LiteModel(int8, threads)
            log.info("TFLite: the int8 copy in the model file (%s)", _int8_summary(metadata.int8))
            return
        if metadata.int8:
            log.info("TFLite: the float model; the int8 copy was not kept (%s)", _int8_summary(metadata.int8))
        self.precision = "float32"
        self._lite = self._float_model(model, metadata, model_path, threads)

    @staticmethod
    def _float_model(model, metadata: ModelMetadata, model_path: str | Path | None, threads: int | None) -> LiteModel:
        """The float network as TFLite: read from the conversion cache, or converted (and cached)."""
        start = time.perf_counter()
        cached = _cache_file(model_path) if model_path is not None else None
        if cached is not None and cached.is_file():
            try:
                lite = LiteModel(cached.read_bytes(), threads)  # a damaged cache file fails here
                log.info("TFLite model read from the cache %s", cached)
                return lite
            except (OSError, ValueError, RuntimeError) as error:
                log.warning("ignoring the unreadable cached TFLite model %s: %s", cached, error)
        flatbuffer = tflite_flatbuffer(model, metadata)
        log.info("converted to TFLite in %.1f s", time.perf_counter() - start)
        if cached is not None:
            _write_cache(cached, flatbuffer)
        return LiteModel(flatbuffer, threads)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._lite(np.asarray(images, np.uint8))


def _int8_summary(figures: dict) -> str:
    return (
        f"largest Test ROC AUC drop {figures.get('max_drop', float('nan')):+.4f} on {figures.get('worst_source')}; "
        f"{figures.get('rule', '')}"
    )


#: Part of the cache key: raised whenever the same model file converts to a different graph
#: (2: a flip-averaged network's member runs once, on the images and their mirror images).
CONVERSION = 2


def cache_dir() -> Path:
    """Where converted models are kept: the user's cache folder (:func:`files.user_cache_dir`)."""
    return user_cache_dir()


def _cache_file(model_path: str | Path) -> Path | None:
    try:
        digest = sha256_of(model_path)
    except OSError:
        return None
    return cache_dir() / f"{digest[:32]}-tf{tf.__version__}-c{CONVERSION}.tflite"


def _write_cache(path: Path, content: bytes) -> None:
    """A cache is a convenience: a folder we cannot write to costs a warning, not the start-up."""
    try:
        write_atomically(path, content)
    except OSError as error:
        log.warning("could not cache the TFLite model in %s: %s", path.parent, error)

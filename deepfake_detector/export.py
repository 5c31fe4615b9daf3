"""Export a saved model for serving without this package: a TensorFlow SavedModel or a TFLite file.

**SavedModel** (TensorFlow Serving, ``tf.saved_model.load``): the ``serving_default``
signature takes a batch of encoded image files (``image_bytes``: ``tf.string``, shape
``[None]``) and returns ``fake_probability`` (``float32``, shape ``[None]``). Preprocessing
runs in TensorFlow ops, the counterpart of :func:`deepfake_detector.preprocessing.load_image`:

* ``tf.io.decode_image(channels=3, expand_animations=False)``: JPEG, PNG, GIF (first frame),
  BMP and WebP; TIFF is not decoded. Grey and palette images become RGB; an alpha channel
  is dropped rather than composited over white. **EXIF orientation is not applied** by TF
  decoders: clients should send upright pixels (e.g. ``PIL.ImageOps.exif_transpose`` first).
* Images already at the model's square size go to the network untouched, so for them the
  export is exact. Others are resized with ``lanczos3`` and antialiasing, TensorFlow's
  closest match to PIL's Lanczos filter, so scores agree within resampling differences:
  PIL rounds between its two passes and TF does not (on the test images: 0.1 level on
  average, 99% of values within one level, more where Lanczos rings at hard edges).
* the network, then the class order saved with the model (:mod:`deepfake_detector.labels`)
  turns its output into P(fake).

A file that does not decode fails the whole request (TensorFlow Serving answers 400).

**TFLite** (``model.tflite``): TFLite has no general image decoder, so it takes one
preprocessed image, ``image``: ``uint8`` ``[1, S, S, 3]`` RGB as
:func:`~deepfake_detector.preprocessing.load_image` returns it, and returns
``fake_probability`` (``float32`` ``[1]``).

Both folders also hold ``deepfake_detector.json``, the model's metadata (class order, input
size, decision threshold, training recipe, metrics), as read by
:func:`deepfake_detector.model.read_metadata`; the threshold turns a probability into a verdict.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import keras
import tensorflow as tf

from deepfake_detector import labels
from deepfake_detector.model import METADATA_ENTRY, ModelMetadata, load_model

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite")
TFLITE_FILE = "model.tflite"
OUTPUT_NAME = "fake_probability"


class ExportError(RuntimeError):
    """An export that cannot be written; the message says why."""


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """One encoded image file to the model input, uint8 ``[S, S, 3]`` RGB, in TensorFlow ops."""
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    shape = tf.shape(image)
    at_size = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))

    def resized() -> tf.Tensor:
        # PIL rounds and clips its Lanczos output to uint8: do the same.
        resampled = tf.image.resize(image, [image_size, image_size], method="lanczos3", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resampled), 0.0, 255.0), tf.uint8)

    return tf.cond(at_size, lambda: image, resized)


def _fake_probability(model: keras.Model, metadata: ModelMetadata, images: tf.Tensor) -> dict[str, tf.Tensor]:
    output = model(tf.cast(images, tf.float32), training=False)[:, 0]
    probability = labels.fake_probability_from_output(output, metadata.class_names)
    return {OUTPUT_NAME: tf.cast(probability, tf.float32)}


def serving_function(model: keras.Model, metadata: ModelMetadata) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Encoded image files (``tf.string [None]``) to ``{"fake_probability": float32 [None]}``."""
    size = metadata.image_size

    def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda encoded: decode_and_resize(encoded, size), image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )  # fmt: skip
        return _fake_probability(model, metadata, images)

    return serve


def export_savedmodel(model_path: str | Path, output: str | Path) -> Path:
    """Write a SavedModel whose ``serving_default`` signature scores encoded image files.

    Raises:
        deepfake_detector.model.ModelFileError: the model file is missing or broken.
        ExportError: ``output`` exists and is not empty.
    """
    model, metadata = load_model(model_path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", serving_function(model, metadata),
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )  # fmt: skip
    with _staging(output) as staging:
        archive.write_out(str(staging), verbose=False)  # the first endpoint is also serving_default
        (staging / METADATA_ENTRY).write_text(metadata.to_json())
    log.info("wrote SavedModel %s (signature serving_default: image_bytes -> %s)", output, OUTPUT_NAME)
    return Path(output)


def export_tflite(model_path: str | Path, output: str | Path) -> Path:
    """Write ``model.tflite`` (one preprocessed uint8 image -> ``fake_probability``) and the metadata.

    The metadata stays a sidecar file: embedding it in the flatbuffer needs the TFLite
    metadata tooling, which this project does not depend on.

    Raises:
        deepfake_detector.model.ModelFileError: the model file is missing or broken.
        ExportError: ``output`` exists and is not empty.
    """
    model, metadata = load_model(model_path)
    flatbuffer = tflite_flatbuffer(model, metadata)
    with _staging(output) as staging:
        (staging / TFLITE_FILE).write_bytes(flatbuffer)
        (staging / METADATA_ENTRY).write_text(metadata.to_json())
    size = metadata.image_size
    log.info("wrote %s (input image: uint8 [1, %d, %d, 3]; output %s)", Path(output) / TFLITE_FILE, size, size, OUTPUT_NAME)
    return Path(output)


def tflite_flatbuffer(model: keras.Model, metadata: ModelMetadata) -> bytes:
    """The model as a TFLite flatbuffer: ``image`` uint8 ``[1, S, S, 3]`` -> ``fake_probability`` ``[1]``.

    The class order is applied inside, so the output is P(fake) whatever the training order.
    """
    size = metadata.image_size

    def predict(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return _fake_probability(model, metadata, image)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", predict, input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")])
    with tempfile.TemporaryDirectory(prefix="deepfake-detector-tflite-") as scratch:
        archive.write_out(scratch, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["serving_default"])
        return converter.convert()


def export(model_path: str | Path, fmt: str, output: str | Path) -> Path:
    """Export in ``fmt`` (one of :data:`FORMATS`) into the folder ``output``."""
    if fmt == "savedmodel":
        return export_savedmodel(model_path, output)
    if fmt == "tflite":
        return export_tflite(model_path, output)
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


@contextlib.contextmanager
def _staging(output: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``output`` that becomes ``output`` when the block succeeds.

    TensorFlow Serving loads a version folder as soon as it appears; a half-written one
    must never be visible, and an existing version is never overwritten.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} exists and is not empty; export into a new folder "
                          "(for TensorFlow Serving, a new version number)")  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield staging
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes it 0700; a server may run as another user
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

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
  average, 99% of values within one level, more where Lanczos rings at hard edges). An
  adopted tutorial model (``resample`` "nearest") is resized with TF's nearest neighbour,
  which picks the same pixels as PIL's.
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

**Flip-averaged** (:func:`add_flip_average`): a ``.keras`` model whose network averages each
image's score with its mirror image's, as ``train.py``'s pretrained recipes save it, for a
model trained without; the threshold is chosen again on a dataset's Validation split.

Adopting a model of the original tutorial's code is :mod:`deepfake_detector.adopt`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import tensorflow as tf

from deepfake_detector.data import DatasetHandler
from deepfake_detector.errors import ExportError, ModelFileError
from deepfake_detector.files import staged_directory
from deepfake_detector.model import (
    METADATA_ENTRY,
    DeepfakeDetectorModel,
    ModelMetadata,
    load_model,
    read_metadata,
    save_model,
)
from deepfake_detector.networks import flip_averaged
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, NEAREST_RESAMPLE
from deepfake_detector.recipes import EXPORT_FORMATS, THRESHOLD_RULES, DataConfig, TrainConfig
from deepfake_detector.tflite import OUTPUT_NAME, fake_probability_outputs, tflite_flatbuffer
from deepfake_detector.thresholds import choose_threshold_and_measure

log = logging.getLogger(__name__)

TFLITE_FILE = "model.tflite"


def decode_and_resize(image_bytes: tf.Tensor, image_size: int, resample: str = DEFAULT_RESAMPLE) -> tf.Tensor:
    """One encoded image file to the model input, uint8 ``[S, S, 3]`` RGB, in TensorFlow ops.

    ``resample``: the model's, "lanczos" or "nearest" (see the module docstring).
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    shape = tf.shape(image)
    at_size = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))

    def resized() -> tf.Tensor:
        if resample == NEAREST_RESAMPLE:  # the same source pixels as PIL's NEAREST, still uint8
            return tf.image.resize(image, [image_size, image_size], method="nearest")
        # PIL rounds and clips its Lanczos output to uint8: do the same.
        resampled = tf.image.resize(image, [image_size, image_size], method="lanczos3", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resampled), 0.0, 255.0), tf.uint8)

    return tf.cond(at_size, lambda: image, resized)


def serving_function(model: keras.Model, metadata: ModelMetadata) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Encoded image files (``tf.string [None]``) to ``{"fake_probability": float32 [None]}``."""
    size, resample = metadata.image_size, metadata.preprocessing.get("resample", DEFAULT_RESAMPLE)

    def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda encoded: decode_and_resize(encoded, size, resample),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )
        return fake_probability_outputs(model, metadata, images)

    return serve


def export_savedmodel(model_path: str | Path, output: str | Path) -> Path:
    """Write a SavedModel whose ``serving_default`` signature scores encoded image files.

    Raises:
        deepfake_detector.errors.ModelFileError: the model file is missing or broken.
        ExportError: ``output`` exists and is not empty.
    """
    model, metadata = load_model(model_path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        serving_function(model, metadata),
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    with _staging(output, metadata) as staging:
        archive.write_out(str(staging), verbose=False)  # the first endpoint is also serving_default
    log.info("wrote SavedModel %s (signature serving_default: image_bytes -> %s)", output, OUTPUT_NAME)
    return Path(output)


def export_tflite(model_path: str | Path, output: str | Path) -> Path:
    """Write ``model.tflite`` (one preprocessed uint8 image -> ``fake_probability``) and the metadata.

    The metadata stays a sidecar file: embedding it in the flatbuffer needs the TFLite
    metadata tooling, which this project does not depend on.

    Raises:
        deepfake_detector.errors.ModelFileError: the model file is missing or broken.
        ExportError: ``output`` exists and is not empty.
    """
    model, metadata = load_model(model_path)
    flatbuffer = tflite_flatbuffer(model, metadata)
    with _staging(output, metadata) as staging:
        (staging / TFLITE_FILE).write_bytes(flatbuffer)
    size = metadata.image_size
    log.info(
        "wrote %s (input image: uint8 [1, %d, %d, 3]; output %s)", Path(output) / TFLITE_FILE, size, size, OUTPUT_NAME
    )
    return Path(output)


def export(model_path: str | Path, fmt: str, output: str | Path, data_dirs: list | None = None) -> tuple[Path, str]:
    """Export in ``fmt`` (a ``recipes.EXPORT_FORMATS`` name) to ``output``.

    Returns:
        The path written, and a line saying what was measured on the way ("" when nothing was).
    """
    return EXPORT_FORMATS.load(fmt, ExportError)(model_path, output, data_dirs or [])


# The writers of recipes.EXPORT_FORMATS: write(model_path, output, data_dirs) -> (path, what was measured).


def write_savedmodel(model_path: str | Path, output: str | Path, data_dirs: list) -> tuple[Path, str]:
    return export_savedmodel(model_path, output), ""


def write_tflite(model_path: str | Path, output: str | Path, data_dirs: list) -> tuple[Path, str]:
    return export_tflite(model_path, output), ""


def _one_data_dir(data_dirs: list, fmt: str) -> Path | None:
    if len(data_dirs) > 1:
        raise ExportError(f"{fmt} takes one --data-dir, not {len(data_dirs)}")
    return data_dirs[0] if data_dirs else None


def write_flip_averaged(model_path: str | Path, output: str | Path, data_dirs: list) -> tuple[Path, str]:
    path, metrics = add_flip_average(model_path, _one_data_dir(data_dirs, "flip-averaged"), output)
    val, test = metrics["validation"], metrics["test"]
    return path, (
        f"validation roc_auc {val['roc_auc']:.4f} | test roc_auc {test['roc_auc']:.4f} "
        f"accuracy {test['accuracy']:.4f} (threshold {test['threshold']:.3f})"
    )


def write_adopted(model_path: str | Path, output: str | Path, data_dirs: list) -> tuple[Path, str]:
    from deepfake_detector.adopt import adopt_tutorial_model  # adopt scores folders: evaluation, detector

    path, metadata = adopt_tutorial_model(model_path, output, _one_data_dir(data_dirs, "adopt"))
    val = metadata.metrics.get("validation")
    measured = f" | validation roc_auc {val['roc_auc']:.4f} accuracy {val['accuracy']:.4f}" if val else ""
    return path, f"threshold {metadata.threshold:.3f} ({metadata.threshold_rule}){measured}"


def add_flip_average(
    model_path: str | Path, data_dir: str | Path | None, output: str | Path, cache_dir: str | Path | None = None
) -> tuple[Path, dict]:
    """Save a trained model as :func:`~deepfake_detector.networks.flip_averaged`, threshold chosen again.

    What ``flip_average=True`` does at the end of a run, for a model trained without it: the
    threshold is chosen on ``data_dir``'s Validation split by the model's own rule, and the
    metadata's metrics are measured again. Returns the saved path and those metrics.

    Raises:
        ExportError: no ``data_dir``, an ``output`` that is not a .keras file, or a model that
            resizes with another filter than the training cache the threshold is chosen on.
        deepfake_detector.errors.ModelFileError: the model is missing, broken or already flip-averaged.
        deepfake_detector.errors.DatasetError: ``data_dir`` lacks a split, or a class folder with
            readable images.
    """
    if data_dir is None:
        raise ExportError("flip-averaged needs --data-dir: its Validation split sets the new threshold")
    if Path(output).suffix != ".keras":
        raise ExportError(f"flip-averaged writes a .keras file; {output} does not end in .keras")
    resample = read_metadata(model_path).preprocessing.get("resample", DEFAULT_RESAMPLE)
    if resample != DEFAULT_RESAMPLE:  # the training cache it scores Validation from resizes with ours
        raise ExportError(
            f"{model_path} resizes with {resample!r}; flip-averaged chooses its threshold on "
            f"images resized with {DEFAULT_RESAMPLE!r}, so it takes only models trained here"
        )
    model, metadata = load_model(model_path)
    if metadata.flip_average:
        raise ModelFileError(f"{model_path}: already flip-averaged")
    data = DataConfig(
        image_size=metadata.image_size, framing=metadata.framing, cache_dir=str(cache_dir) if cache_dir else None
    )
    splits = DatasetHandler(dataset_download_dir=data_dir, config=data).splits(("Validation", "Test"))
    rule = metadata.threshold_rule.removesuffix(" on Validation")
    if rule not in THRESHOLD_RULES:  # a fixed threshold (a best-epoch checkpoint, an adopted model)
        rule = TrainConfig.threshold_rule
    averaged = flip_averaged(model)
    threshold, metrics, _ = choose_threshold_and_measure(
        DeepfakeDetectorModel(averaged, metadata), splits["Validation"], splits["Test"], rule
    )
    metadata = dataclasses.replace(
        metadata,
        threshold=threshold,
        flip_average=True,
        metrics=metrics,
        created="",
        versions={},
        name=Path(output).stem,
        train_config={**metadata.train_config, "flip_average": True, "flip_average_added_from": str(model_path)},
    )
    return save_model(averaged, metadata, output), metrics


@contextlib.contextmanager
def _staging(output: str | Path, metadata: ModelMetadata) -> Iterator[Path]:
    """A scratch folder for the block to fill, that becomes the new (or empty) folder ``output``
    with the model's metadata beside what the block wrote (:func:`~deepfake_detector.files.staged_directory`).

    TensorFlow Serving loads a version folder as soon as it appears; a half-written one
    must never be visible, and an existing version is never overwritten.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(
            f"{output} exists and is not empty; export into a new folder (for TensorFlow Serving, a new version number)"
        )
    with staged_directory(output) as staging:
        yield staging
        (staging / METADATA_ENTRY).write_text(metadata.to_json())

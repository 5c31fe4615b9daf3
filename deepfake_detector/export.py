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

**Adopt** (:func:`adopt_tutorial_model`): a ``.keras`` file saved by the original tutorial's
``train.py`` has no metadata, so nothing here would load it. Adopting saves the same network
with the metadata that describes how the tutorial used it: classes in the order
``image_dataset_from_directory`` gave them (folder names sorted: Fake, Real, so its sigmoid is
P(real)), its input size, and the nearest-neighbour resize of its ``inference.py``
(``keras.utils.load_img``'s default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from deepfake_detector import data, evaluation, labels
from deepfake_detector.data import DatasetError
from deepfake_detector.model import METADATA_ENTRY, DeepfakeDetectorModel, ModelFileError, ModelMetadata, load_model, save_model
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, ImageError, PreprocessingConfig, load_image

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite")  # folders; adopt (a .keras file) is :func:`adopt_tutorial_model`
TFLITE_FILE = "model.tflite"
OUTPUT_NAME = "fake_probability"


class ExportError(RuntimeError):
    """An export that cannot be written; the message says why."""


def decode_and_resize(image_bytes: tf.Tensor, image_size: int, resample: str = DEFAULT_RESAMPLE) -> tf.Tensor:
    """One encoded image file to the model input, uint8 ``[S, S, 3]`` RGB, in TensorFlow ops.

    ``resample``: the model's, "lanczos" or "nearest" (see the module docstring).
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    shape = tf.shape(image)
    at_size = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))

    def resized() -> tf.Tensor:
        if resample == "nearest":  # the same source pixels as PIL's NEAREST, still uint8
            return tf.image.resize(image, [image_size, image_size], method="nearest")
        # PIL rounds and clips its Lanczos output to uint8: do the same.
        resampled = tf.image.resize(image, [image_size, image_size], method="lanczos3", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resampled), 0.0, 255.0), tf.uint8)

    return tf.cond(at_size, lambda: image, resized)


def _fake_probability(model: keras.Model, metadata: ModelMetadata, images: tf.Tensor) -> dict[str, tf.Tensor]:
    probability = DeepfakeDetectorModel(model, metadata).fake_probability(tf.cast(images, tf.float32))[:, 0]
    return {OUTPUT_NAME: tf.cast(probability, tf.float32)}


def serving_function(model: keras.Model, metadata: ModelMetadata) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Encoded image files (``tf.string [None]``) to ``{"fake_probability": float32 [None]}``."""
    size, resample = metadata.image_size, metadata.preprocessing.get("resample", DEFAULT_RESAMPLE)

    def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda encoded: decode_and_resize(encoded, size, resample), image_bytes,
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


# ----------------------------------------------------------------------------- adopt

#: ``metadata.arch`` of an adopted model: a network built by the tutorial's code, not by ours.
ADOPTED_ARCH = "tutorial"
#: The class order ``image_dataset_from_directory`` gives: the folder names sorted (Fake, Real).
TUTORIAL_CLASS_NAMES = [name for name, _ in sorted(labels.FOLDER_NAMES.items(), key=lambda item: item[1])]
#: ``keras.utils.load_img``'s default interpolation, which the tutorial's inference.py resized with.
TUTORIAL_RESAMPLE = "nearest"
TUTORIAL_THRESHOLD_RULE = "fixed 0.5 (tutorial)"


def adopt_tutorial_model(model_path: str | Path, output: str | Path, data_dir: str | Path | None = None,
                         rule: str = "eer", batch_size: int = 64) -> tuple[Path, ModelMetadata]:  # fmt: skip
    """Save a model trained by the original tutorial's code as one of ours, in ``output`` (.keras).

    The network is kept as it is; the metadata says how to use it (see the module docstring).
    The threshold is 0.5, or with ``data_dir`` chosen by ``rule`` on its Validation split,
    scored through :func:`~deepfake_detector.preprocessing.load_image` with the adopted
    preprocessing; that split's metrics at it go in the metadata.

    Raises:
        deepfake_detector.model.ModelFileError: ``model_path`` is missing, not a Keras model,
            already has our metadata, or is not one square RGB image in, one sigmoid out.
        ExportError: ``output`` does not end in .keras or is ``model_path`` itself.
        deepfake_detector.data.DatasetError: ``data_dir`` has no Validation split with
            readable real and fake images.
    """
    model_path, output = Path(model_path), Path(output)
    if output.suffix != ".keras":
        raise ExportError(f"adopt writes a .keras file; {output} does not end in .keras")
    if output.resolve() == model_path.resolve():
        raise ExportError(f"{output} is the model being adopted; write the adopted model to a new file")
    model = _load_plain_model(model_path)
    metadata = ModelMetadata(
        arch=ADOPTED_ARCH,
        class_names=list(TUTORIAL_CLASS_NAMES),
        preprocessing=PreprocessingConfig(image_size=_tutorial_input_size(model, model_path),
                                          resample=TUTORIAL_RESAMPLE).to_dict(),
        threshold=0.5,
        threshold_rule=TUTORIAL_THRESHOLD_RULE,
        name=output.stem,
        train_config={"adopted_from": str(model_path), "recipe": "the original tutorial's train.py"},
    )  # fmt: skip
    if data_dir is not None:
        folder = _validation_folder(data_dir)
        y_true, fake_probability = _score_folder(model, metadata, folder, batch_size)
        try:
            metadata.threshold = evaluation.choose_threshold(y_true, fake_probability, rule)
        except ValueError as error:  # one class left after unreadable files were skipped
            raise DatasetError(f"{folder}: {error}") from error
        metadata.threshold_rule = f"{rule} on Validation"
        validation = evaluation.compute_metrics(y_true, fake_probability, metadata.threshold)
        metadata.metrics = {"validation": {k: v for k, v in validation.items() if k not in ("confusion_matrix", "notes")}}
        metadata.train_config["dataset"] = str(folder.parent)
    save_model(model, metadata, output)
    log.info("adopted %s as %s (%d px, classes %s, %s resize, threshold %.3f: %s)", model_path, output,
             metadata.image_size, metadata.class_names, TUTORIAL_RESAMPLE, metadata.threshold, metadata.threshold_rule)  # fmt: skip
    return output, metadata


def _load_plain_model(path: Path) -> keras.Model:
    """A Keras model file without our metadata, loaded; a one-line ModelFileError otherwise."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            ours = METADATA_ENTRY in archive.namelist()
    except zipfile.BadZipFile as error:
        raise ModelFileError(f"{path}: not a .keras model file") from error
    if ours:
        raise ModelFileError(f"{path}: already has {METADATA_ENTRY}, so there is nothing to adopt; use it as it is")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a broken file
        raise ModelFileError(f"{path}: cannot load the network: {' '.join(str(error).split())[:300]}") from error


def _tutorial_input_size(model: keras.Model, path: Path) -> int:
    """The side of the model's square RGB input, after checking it gives one sigmoid score."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelFileError(f"{path}: the network has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                             "adopt takes one image in and one sigmoid score out, as the tutorial's")  # fmt: skip
    input_shape = tuple(model.inputs[0].shape[1:])
    if len(input_shape) != 3 or input_shape[2] != 3 or input_shape[0] is None or input_shape[0] != input_shape[1]:
        raise ModelFileError(f"{path}: the network takes input {input_shape}; adopt takes a square RGB image "
                             "of fixed size, as the tutorial's (128, 128, 3)")  # fmt: skip
    output_shape = tuple(model.outputs[0].shape[1:])
    last = model.layers[-1] if model.layers else None
    if output_shape != (1,) or getattr(last, "activation", None) is not keras.activations.sigmoid:
        raise ModelFileError(f"{path}: the network outputs {output_shape} from "
                             f"{type(last).__name__ if last else 'nothing'} {getattr(last, 'name', '')!r}; "
                             "adopt takes one sigmoid score, as the tutorial's Dense(1, activation='sigmoid')")  # fmt: skip
    return int(input_shape[0])


def _validation_folder(data_dir: str | Path) -> Path:
    folder, split = evaluation.resolve_folder(data_dir, "Validation")
    if split != "Validation":
        raise DatasetError(f"{data_dir} holds Real/ or Fake/ itself; pass the dataset folder whose "
                           "Validation/ split sets the threshold")  # fmt: skip
    return folder


def _score_folder(model: keras.Model, metadata: ModelMetadata, folder: Path, batch_size: int):
    """(labels, fake_probability) of the readable images of ``folder``, preprocessed as ``metadata`` says."""
    paths, targets = data.labelled_files(folder)
    size, resample = metadata.image_size, metadata.preprocessing["resample"]

    def decode(index: int):
        try:
            return load_image(paths[index], size, resample)
        except (ImageError, OSError) as error:
            log.warning("%s: skipped: %s", paths[index], error)
            return None

    kept, scores = [], []
    for batch in data.decoded_batches(range(len(paths)), decode, batch_size):
        ready = [(index, image) for index, image in batch if image is not None]
        if ready:
            images = tf.constant(np.stack([image for _, image in ready]))
            scores.append(_fake_probability(model, metadata, images)[OUTPUT_NAME].numpy())
            kept += [index for index, _ in ready]
    if not kept:
        raise DatasetError(f"none of the {len(paths)} image file(s) under {folder} can be read")
    return np.asarray(targets)[kept], np.concatenate(scores).astype(np.float64)


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

"""Adopting a model trained by the original tutorial's code: the same network, given our metadata.

A ``.keras`` file saved by the original tutorial's ``train.py`` has no metadata, so nothing
here would load it. Adopting saves the same network with the metadata that describes how the
tutorial used it: classes in the order ``image_dataset_from_directory`` gave them (folder names
sorted: Fake, Real, so its sigmoid is P(real)), its input size, and the nearest-neighbour resize
of its ``inference.py`` (``keras.utils.load_img``'s default). With a dataset, the threshold is
chosen on its Validation split instead of the tutorial's 0.5 (``python export.py --format adopt``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from deepfake_detector import labels
from deepfake_detector.detector import Detector
from deepfake_detector.errors import DatasetError, ExportError, ModelFileError
from deepfake_detector.evaluation import CLEAN, resolve_folder, score_folder
from deepfake_detector.metrics import choose_threshold, compute_metrics, numbers_only
from deepfake_detector.model import METADATA_ENTRY, ModelMetadata, load_network, save_model, stored_metadata
from deepfake_detector.preprocessing import NEAREST_RESAMPLE, PreprocessingConfig
from deepfake_detector.recipes import TrainConfig

log = logging.getLogger(__name__)

#: ``metadata.arch`` of an adopted model: a network built by the tutorial's code, not by ours.
ADOPTED_ARCH = "tutorial"
#: The class order ``image_dataset_from_directory`` gives: the folder names sorted (Fake, Real).
TUTORIAL_CLASS_NAMES = [name for name, _ in sorted(labels.FOLDER_NAMES.items(), key=lambda item: item[1])]
#: ``keras.utils.load_img``'s default interpolation, which the tutorial's inference.py resized with.
TUTORIAL_RESAMPLE = NEAREST_RESAMPLE
TUTORIAL_THRESHOLD_RULE = "fixed 0.5 (tutorial)"


def adopt_tutorial_model(
    model_path: str | Path,
    output: str | Path,
    data_dir: str | Path | None = None,
    rule: str = TrainConfig.threshold_rule,
    batch_size: int = 64,
) -> tuple[Path, ModelMetadata]:
    """Save a model trained by the original tutorial's code as one of ours, in ``output`` (.keras).

    The network is kept as it is; the metadata says how to use it (see the module docstring).
    The threshold is 0.5, or with ``data_dir`` chosen by ``rule`` on its Validation split,
    scored through :func:`~deepfake_detector.preprocessing.load_image` with the adopted
    preprocessing; that split's metrics at it go in the metadata.

    Raises:
        deepfake_detector.errors.ModelFileError: ``model_path`` is missing, not a Keras model,
            already has our metadata, or is not one square RGB image in, one sigmoid out.
        ExportError: ``output`` does not end in .keras or is ``model_path`` itself.
        deepfake_detector.errors.DatasetError: ``data_dir`` has no Validation split with
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
        preprocessing=PreprocessingConfig(
            image_size=_tutorial_input_size(model, model_path), resample=TUTORIAL_RESAMPLE
        ).to_dict(),
        threshold=0.5,
        threshold_rule=TUTORIAL_THRESHOLD_RULE,
        name=output.stem,
        train_config={"adopted_from": str(model_path), "recipe": "the original tutorial's train.py"},
    )
    if data_dir is not None:
        folder = _validation_folder(data_dir)
        scored = score_folder(Detector(model, metadata, warm_up=False), folder, batch_size=batch_size)
        y_true, fake_probability = scored.y_true, scored.fake_probability[CLEAN]
        try:
            metadata.threshold = choose_threshold(y_true, fake_probability, rule)
        except ValueError as error:  # one class left after unreadable files were skipped
            raise DatasetError(f"{folder}: {error}") from error
        metadata.threshold_rule = f"{rule} on Validation"
        metadata.metrics = {"validation": numbers_only(compute_metrics(y_true, fake_probability, metadata.threshold))}
        metadata.train_config["dataset"] = str(folder.parent)
    save_model(model, metadata, output)
    log.info(
        "adopted %s as %s (%d px, classes %s, %s resize, threshold %.3f: %s)",
        model_path,
        output,
        metadata.image_size,
        metadata.class_names,
        TUTORIAL_RESAMPLE,
        metadata.threshold,
        metadata.threshold_rule,
    )
    return output, metadata


def _load_plain_model(path: Path) -> keras.Model:
    """A Keras model file without our metadata, loaded; a one-line ModelFileError otherwise."""
    if stored_metadata(path) is not None:
        raise ModelFileError(f"{path}: already has {METADATA_ENTRY}, so there is nothing to adopt; use it as it is")
    return load_network(path)


def _tutorial_input_size(model: keras.Model, path: Path) -> int:
    """The side of the model's square RGB input, after checking it gives one sigmoid score."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelFileError(
            f"{path}: the network has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "adopt takes one image in and one sigmoid score out, as the tutorial's"
        )
    input_shape = tuple(model.inputs[0].shape[1:])
    if len(input_shape) != 3 or input_shape[2] != 3 or input_shape[0] is None or input_shape[0] != input_shape[1]:
        raise ModelFileError(
            f"{path}: the network takes input {input_shape}; adopt takes a square RGB image "
            "of fixed size, as the tutorial's (128, 128, 3)"
        )
    output_shape = tuple(model.outputs[0].shape[1:])
    last = model.layers[-1] if model.layers else None
    if output_shape != (1,) or getattr(last, "activation", None) is not keras.activations.sigmoid:
        raise ModelFileError(
            f"{path}: the network outputs {output_shape} from "
            f"{type(last).__name__ if last else 'nothing'} {getattr(last, 'name', '')!r}; "
            "adopt takes one sigmoid score, as the tutorial's Dense(1, activation='sigmoid')"
        )
    return int(input_shape[0])


def _validation_folder(data_dir: str | Path) -> Path:
    folder, split = resolve_folder(data_dir, "Validation")
    if split != "Validation":
        raise DatasetError(
            f"{data_dir} holds Real/ or Fake/ itself; pass the dataset folder whose "
            "Validation/ split sets the threshold"
        )
    return folder

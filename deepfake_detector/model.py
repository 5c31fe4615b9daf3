"""``DeepfakeDetectorModel``: a network with the metadata that says how to use it, saved and loaded together.

A saved model is one ``.keras`` file. Beside Keras's own entries the zip holds
``deepfake_detector.json``: class order, preprocessing, decision threshold, training
config, metrics, library versions and date, so ``inference.py --model PATH`` needs nothing
else (nanoGPT keeps ``model_args`` in its checkpoint for the same reason).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from deepfake_detector import __version__, labels
from deepfake_detector.callbacks import make_callbacks
from deepfake_detector.errors import ModelFileError
from deepfake_detector.files import replacing
from deepfake_detector.networks import build_model, flip_average_member
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, PreprocessingConfig, resample_filter
from deepfake_detector.recipes import OPTIMIZERS, TrainConfig

METADATA_ENTRY = "deepfake_detector.json"
METADATA_FORMAT = "deepfake-detector-model/1"


@dataclass
class ModelMetadata:
    """Everything a model needs to be used correctly, saved inside the ``.keras`` file."""

    arch: str
    class_names: list[str] = field(default_factory=lambda: list(labels.TRAINING_CLASS_ORDER))
    preprocessing: dict = field(default_factory=lambda: PreprocessingConfig().to_dict())
    threshold: float = 0.5  # decision threshold on fake_probability
    threshold_rule: str = "fixed 0.5"
    selection_rule: str = ""  # which epoch was kept, when chosen by more than the last (multi-source runs)
    flip_average: bool = False  # the graph averages each image's score with its mirror image's
    int8: dict = field(default_factory=dict)  # the int8 copy's check (quantize.py): figures, and whether it is served
    name: str = "deepfake-detector"
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: str = METADATA_FORMAT

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    @property
    def framing(self) -> str:
        """What of an image the network was trained on: ``"whole"`` or its largest ``"face"``
        (``recipes.FRAMINGS``); models from before framing existed saw whole images."""
        return self.train_config.get("framing", "whole")

    def measured_on(self) -> list[dict]:
        """The kinds of fakes this model was measured on, each with its Test figures (saved when
        it was trained: one entry per source of a multi-source run), and nothing else."""
        from deepfake_detector.data import dataset_kind  # no TensorFlow there

        if "sources" in self.metrics:
            tests = {name: measured["test"] for name, measured in self.metrics["sources"].items()}
        elif "test" in self.metrics and self.train_config.get("dataset"):
            tests = {Path(str(self.train_config["dataset"])).name: self.metrics["test"]}
        else:
            return []
        return [
            {
                "data": name,
                "kind": dataset_kind(name),
                "n_real": test.get("n_real"),
                "n_fake": test.get("n_fake"),
                "roc_auc": test.get("roc_auc"),
                "fakes_caught": test.get("fake_accuracy"),
                "reals_passed": test.get("real_accuracy"),
            }
            for name, test in tests.items()
        ]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=float)


# ----------------------------------------------------------------------------- save / load


def library_versions() -> dict[str, str]:
    import PIL
    import tensorflow as tf

    return {
        "deepfake_detector": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def save_model(model: keras.Model, metadata: ModelMetadata, path: str | Path) -> Path:
    """Write model and metadata to ``path`` atomically (:func:`deepfake_detector.files.replacing`).

    An interrupted save never leaves a half-written file where the last good model was.
    """
    path = Path(path)
    if not metadata.created:
        metadata.created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if not metadata.versions:
        metadata.versions = library_versions()
    _check_consistent(model, metadata, path)
    with replacing(path, suffix=".keras") as scratch:
        model.save(scratch)
        with zipfile.ZipFile(scratch, "a") as archive:
            archive.writestr(METADATA_ENTRY, metadata.to_json())
    return path


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stored_metadata(path: str | Path) -> bytes | None:
    """The raw metadata entry of a ``.keras`` file, or None when it has none (a model saved
    without this package); a one-line :class:`ModelFileError` if it is no ``.keras`` file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(METADATA_ENTRY) if METADATA_ENTRY in archive.namelist() else None
    except zipfile.BadZipFile as error:
        raise ModelFileError(f"{path}: not a .keras model file") from error


def read_metadata(path: str | Path) -> ModelMetadata:
    """The metadata inside a saved model, without loading the network."""
    raw = stored_metadata(path)
    if raw is None:
        raise ModelFileError(
            f"{path}: has no {METADATA_ENTRY}; save models with train.py, or adopt one trained with "
            f"the original tutorial's code: python export.py --model {path} --format adopt "
            "--output NEW.keras"
        )
    try:
        data: dict[str, Any] = json.loads(raw)
        if data.get("format") != METADATA_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {METADATA_FORMAT!r}")
        missing = sorted({"arch", "class_names", "preprocessing", "threshold"} - set(data))
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        metadata = ModelMetadata(**data)
        labels.fake_index(metadata.class_names)
        if not 0.0 <= float(metadata.threshold) <= 1.0:
            raise ValueError(f"threshold {metadata.threshold} is outside 0..1")
        metadata.image_size  # noqa: B018 - must be present
        resample_filter(metadata.preprocessing.get("resample", DEFAULT_RESAMPLE))
    except (ValueError, TypeError, KeyError) as error:
        raise ModelFileError(f"{path}: bad metadata: {_one_line(error)}") from error
    return metadata


def load_model(path: str | Path) -> tuple[keras.Model, ModelMetadata]:
    """Load a model and its metadata; a one-line :class:`ModelFileError` if they do not fit."""
    metadata = read_metadata(path)
    model = load_network(path)
    _check_consistent(model, metadata, path)
    return model, metadata


def load_network(path: str | Path) -> keras.Model:
    """The Keras network of a ``.keras`` file, uncompiled, whatever its metadata; a one-line
    :class:`ModelFileError` if Keras cannot load it. Our layers (``networks.HorizontalFlip``)
    are registered with Keras by importing :mod:`deepfake_detector.networks`, which this module does."""
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a broken file
        raise ModelFileError(f"{path}: cannot load the network: {_one_line(error)}") from error


def _check_consistent(model: keras.Model, metadata: ModelMetadata, path: Path) -> None:
    input_shape = tuple(model.inputs[0].shape[1:])
    expected = (metadata.image_size, metadata.image_size, 3)
    if input_shape != expected:
        raise ModelFileError(f"{path}: metadata says input {expected} but the network takes {input_shape}")
    output_shape = tuple(model.outputs[0].shape[1:])
    if output_shape != (1,):
        raise ModelFileError(f"{path}: the network outputs {output_shape}, expected one sigmoid score")
    averaged = flip_average_member(model) is not None
    if averaged != bool(metadata.flip_average):
        raise ModelFileError(
            f"{path}: metadata says flip_average={bool(metadata.flip_average)} "
            f"but the network {'is' if averaged else 'is not'} flip-averaged"
        )


# ----------------------------------------------------------------------------- the model


class DeepfakeDetectorModel:
    """A network and its metadata together; the one place that applies the class order.

    The original tutorial's class of this name built, compiled, trained, evaluated and saved
    its CNN; this one does the same and also carries what every later user of the network
    needs (architecture, class order, input size and resize, decision threshold), so that
    scoring, evaluation, explanations and exports all ask it for ``fake_probability``.

    ``DeepfakeDetectorModel()`` builds the tutorial's architecture (``seed``, 128 px);
    ``DeepfakeDetectorModel(arch="mobilenet_v2", image_size=160)`` another; ``load(path)``
    reads a saved one; ``DeepfakeDetectorModel(network, metadata)`` wraps a network in hand.
    """

    def __init__(
        self,
        model: keras.Model | None = None,
        metadata: ModelMetadata | None = None,
        *,
        arch: str = TrainConfig.arch,
        image_size: int | None = None,
        pretrained: bool = True,
    ):
        if metadata is None:
            if model is not None:
                raise ValueError("a network needs its metadata (class order, input size, threshold)")
            metadata = ModelMetadata(
                arch=arch, preprocessing=PreprocessingConfig(image_size=image_size or 128).to_dict()
            )
        if model is None:
            model = build_model(metadata.arch, metadata.image_size, pretrained=pretrained)
        self.model = model  # the Keras network, as in the tutorial
        self.metadata = metadata
        self._output_is_fake = labels.fake_index(metadata.class_names) == 1  # checks the class order too

    # -- what it is
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @property
    def threshold(self) -> float:
        return float(self.metadata.threshold)

    @property
    def output_is_fake(self) -> bool:
        """Whether the network's sigmoid is P(fake) (our class order) rather than P(real)."""
        return self._output_is_fake

    # -- scoring
    def fake_probability_of(self, output):
        """P(fake) from the network's sigmoid output, P(class 1) in the saved class order."""
        return output if self._output_is_fake else 1.0 - output

    def fake_probability(self, images):
        """P(fake) for a batch of images (N x S x S x 3, 0..255), shape (N, 1): a tensor for a
        tensor (usable inside ``tf.function`` and exports), a NumPy array otherwise."""
        output = self.fake_probability_of(self.model(images, training=False))
        return output if keras.ops.is_tensor(images) else keras.ops.convert_to_numpy(output)

    def predict(self, images, batch_size: int = 32, **kwargs) -> np.ndarray:
        """The tutorial's ``self.model.predict(img_array)``: P(fake), shape (N, 1), for a batch of
        images at the model's input size (0..255), as every output here is, whatever the saved
        class order (the tutorial's own ``predict`` returned P(real))."""
        kwargs.setdefault("verbose", 0)
        return self.fake_probability_of(self.model.predict(images, batch_size=batch_size, **kwargs))

    # -- the tutorial's life cycle
    def compile_model(
        self,
        learning_rate=1e-4,
        *,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        ema_momentum: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        """Binary cross-entropy with accuracy, precision, recall and ROC AUC, fake positive.

        ``learning_rate`` may be a schedule. ``optimizer``: a name in ``recipes.OPTIMIZERS``, adam
        (the tutorial's) or adamw; ``ema_momentum`` > 0 keeps a moving average of the weights,
        written into the network when training ends.
        """
        if not self._output_is_fake:
            raise ValueError(
                f"{self.name}: training labels are {list(labels.TRAINING_CLASS_ORDER)} "
                f"but this network's class order is {self.metadata.class_names}"
            )
        make_optimizer = OPTIMIZERS.load(optimizer)
        ema = dict(use_ema=True, ema_momentum=ema_momentum) if ema_momentum else {}
        self.model.compile(
            optimizer=make_optimizer(learning_rate, weight_decay, **ema),
            loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
            metrics=[
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.Precision(name="precision"),
                keras.metrics.Recall(name="recall"),
                keras.metrics.AUC(name="auc"),
            ],
        )

    def train_model(self, train_data, val_data, epochs: int, callbacks=None, **fit_options):
        """``model.fit`` on batches of (images, labels real=0/fake=1); returns its History.

        Without ``callbacks``, the tutorial's: early stopping after 10 epochs without a better
        val_loss (restoring the best), the learning rate cut tenfold after 5, and the best
        epoch kept as a loadable model in ``deepfake_detector_model_best.keras``.
        """
        if callbacks is None:
            callbacks = tutorial_callbacks(self, Path(BEST_SUFFIX.join(("deepfake_detector_model", ".keras"))))
        fit_options.setdefault("shuffle", False)  # the datasets shuffle themselves; Keras warns that it cannot
        return self.model.fit(train_data, validation_data=val_data, epochs=epochs, callbacks=callbacks, **fit_options)

    def evaluate_model(self, test_data) -> list[float]:
        """The tutorial's ``[loss, accuracy, precision, recall]`` on batches of (images, labels),
        at threshold 0.5 with fake positive (:func:`deepfake_detector.metrics.tutorial_metrics`)."""
        from deepfake_detector import metrics  # scikit-learn, only when a model is evaluated

        truths, scores = [], []
        for images, batch_labels in test_data:
            scores.append(np.ravel(self.fake_probability(images)))
            truths.append(np.ravel(keras.ops.convert_to_numpy(batch_labels)))
        return metrics.tutorial_metrics(np.concatenate(truths), np.concatenate(scores))

    def save_model(self, path: str | Path) -> Path:
        """One ``.keras`` file holding the network and this metadata (written atomically)."""
        return save_model(self.model, self.metadata, path)

    @classmethod
    def load(cls, path: str | Path) -> DeepfakeDetectorModel:
        """A saved model; :class:`ModelFileError` (one line) if it is not one of ours."""
        return cls(*load_model(path))


#: ``NAME.keras`` keeps its best epoch so far in ``NAME_best.keras`` while it trains.
BEST_SUFFIX = "_best"


def best_path(output: str | Path) -> Path:
    """Where a run saving ``output`` keeps its best epoch so far (the tutorial's ``_best.keras``)."""
    output = Path(output)
    return output.with_name(f"{output.stem}{BEST_SUFFIX}{output.suffix}")


class BestModelCheckpoint(keras.callbacks.Callback):
    """The best epoch so far (lowest ``monitor``, or highest with ``higher_is_better``) saved as a loadable model, as the tutorial's
    ``ModelCheckpoint`` did, and with its metadata, so ``inference.py --model`` serves it.

    Its threshold is a plain 0.5 (the final model's is chosen on Validation when training
    ends) and it is the network as trained, without flip averaging or weight averaging.
    ``initial_best``: the best value of a run being resumed.
    """

    def __init__(
        self,
        detector_model: DeepfakeDetectorModel,
        path: str | Path,
        monitor: str = "val_loss",
        verbose: int = 1,
        initial_best: float | None = None,
        higher_is_better: bool = False,
    ):
        super().__init__()
        self.detector_model, self.path, self.monitor = detector_model, Path(path), monitor
        self.higher_is_better = higher_is_better
        worst = -math.inf if higher_is_better else math.inf
        self.verbose, self.best = verbose, worst if initial_best is None else initial_best

    def _better(self, current: float) -> bool:
        return current > self.best if self.higher_is_better else current < self.best

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not math.isfinite(current):
            return
        if not self._better(current):
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}", flush=True)
            return
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                f"saving model to {self.path}",
                flush=True,
            )
        self.best = float(current)
        metadata = dataclasses.replace(
            self.detector_model.metadata,
            threshold=0.5,
            flip_average=False,
            threshold_rule=f"fixed 0.5 (best epoch so far, {self.monitor} {current:.4f}; "
            "the finished model's threshold is chosen on Validation)",
            train_config={
                **self.detector_model.metadata.train_config,
                "best_epoch": epoch + 1,
                self.monitor: float(current),
            },
        )
        save_model(self.model, metadata, self.path)


def tutorial_callbacks(
    detector_model: DeepfakeDetectorModel, best: str | Path | None
) -> list[keras.callbacks.Callback]:
    """The tutorial's callbacks, its recipe's (:func:`deepfake_detector.callbacks.make_callbacks`):
    early stopping (patience 10, best weights restored), the learning rate cut tenfold after 5
    epochs without progress, and the best epoch kept at ``best``."""
    return make_callbacks(TrainConfig(), BestModelCheckpoint(detector_model, best) if best is not None else None)

"""Architectures, and saving/loading models that describe themselves.

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
import os
import platform
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from deepfake_detector import __version__, labels
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, PreprocessingConfig, resample_filter

METADATA_ENTRY = "deepfake_detector.json"
METADATA_FORMAT = "deepfake-detector-model/1"
ARCHITECTURES = ("seed", "mobilenet_v2", "efficientnet_lite0")
#: The architectures that start from ImageNet weights (:mod:`deepfake_detector.pretrained`).
PRETRAINED_ARCHITECTURES = ("mobilenet_v2", "efficientnet_lite0")


class ModelFileError(RuntimeError):
    """A model file that is missing, unreadable, or whose metadata does not fit it."""


@dataclass
class ModelMetadata:
    """Everything a model needs to be used correctly, saved inside the ``.keras`` file."""

    arch: str
    class_names: list[str] = field(default_factory=lambda: list(labels.TRAINING_CLASS_ORDER))
    preprocessing: dict = field(default_factory=lambda: PreprocessingConfig().to_dict())
    threshold: float = 0.5  # decision threshold on fake_probability
    threshold_rule: str = "fixed 0.5"
    flip_average: bool = False  # the graph averages each image's score with its mirror image's
    name: str = "deepfake-detector"
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: str = METADATA_FORMAT

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=float)


# ----------------------------------------------------------------------------- architectures


def build_seed_cnn(image_size: int = 128) -> keras.Model:
    """The original tutorial's 4-block CNN, layer for layer (input rescaled by 1/127)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127, name="rescale")(inputs)
    for filters in (32, 64, 128, 256):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="fake_score", dtype="float32")(x)  # float32 under mixed precision too
    return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_bn(x, filters, kernel, stride, name, depthwise=False, relu=True):
    """Conv (or depthwise conv) + BN (+ ReLU6) with torchvision's symmetric padding."""
    if kernel > 1 and stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=f"{name}_0")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=f"{name}_0")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_1")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def mobilenet_v2_backbone(image_size: int = 128) -> keras.Model:
    """MobileNetV2 (width 1.0) laid out exactly like torchvision's, ending in 1280 channels.

    Layer names follow torchvision's state-dict keys (``features_2_conv_1_0`` is
    ``features.2.conv.1.0``) so :mod:`deepfake_detector.pretrained` can copy ImageNet
    weights in. Input: RGB already normalised with ImageNet mean and std.
    """
    inputs = keras.Input((image_size, image_size, 3), name="normalized_image")
    x = _conv_bn(inputs, 32, 3, 2, "features_0")
    channels, index = 32, 1
    for expansion, out_channels, repeats, first_stride in (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    ):  # fmt: skip
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            name, block_input, part = f"features_{index}_conv", x, 0
            if expansion != 1:
                x = _conv_bn(x, channels * expansion, 1, 1, f"{name}_{part}")
                part += 1
            x = _conv_bn(x, None, 3, stride, f"{name}_{part}", depthwise=True)
            x = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_{part + 1}")(x)
            x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_{part + 2}")(x)
            if stride == 1 and channels == out_channels:
                x = layers.Add(name=f"features_{index}_add")([block_input, x])
            channels, index = out_channels, index + 1
    x = _conv_bn(x, 1280, 1, 1, f"features_{index}")
    return keras.Model(inputs, x, name="mobilenet_v2")


def _detector(backbone: keras.Model, normalize, dropout: float, name: str) -> keras.Model:
    """uint8 RGB in, ``normalize`` (layers), the backbone, global average pool, dropout, one sigmoid."""
    size = backbone.inputs[0].shape[1]
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for layer in normalize:
        x = layer(x)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="fake_score", dtype="float32")(x)  # float32 under mixed precision too
    return keras.Model(inputs, outputs, name=name)


def build_mobilenet_v2(image_size: int = 128, pretrained: bool = True, dropout: float = 0.2) -> keras.Model:
    """MobileNetV2 (ImageNet weights when ``pretrained``) with a global-average-pool head."""
    from deepfake_detector import pretrained as imagenet

    backbone = mobilenet_v2_backbone(image_size)
    if pretrained:
        imagenet.load_torchvision_mobilenet_v2(backbone)
    # torchvision's ImageNet normalisation inside the model.
    normalize = [
        layers.Rescaling(1.0 / 255, name="to_unit"),
        layers.Normalization(
            mean=imagenet.IMAGENET_MEAN, variance=[s**2 for s in imagenet.IMAGENET_STD], name="imagenet_norm"
        ),
    ]
    return _detector(backbone, normalize, dropout, "mobilenet_v2_detector")


#: EfficientNet-Lite0's inverted-residual stages: repeats, kernel, first stride, expansion, output channels.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip


def efficientnet_lite0_backbone(image_size: int = 128) -> keras.Model:
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem and head), ending in 1280 channels.

    Layer names map onto the checkpoint's keys (``blocks_3_expand_conv`` is
    ``_blocks.3._expand_conv``; see :func:`deepfake_detector.pretrained.efficientnet_lite0_key`).
    TensorFlow ``same`` padding, as the weights were trained with. Input: ``(x - 127) / 128``.
    """
    inputs = keras.Input((image_size, image_size, 3), name="normalized_image")

    def bn_relu(x, bn_name, relu_name=None):
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=bn_name)(x)
        return layers.ReLU(6.0, name=relu_name)(x) if relu_name else x

    x = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = bn_relu(x, "bn0", "stem_relu")
    channels, index = 32, 0
    for repeats, kernel, first_stride, expansion, out_channels in LITE0_STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            name, h = f"blocks_{index}", x
            if expansion != 1:
                h = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(h)
                h = bn_relu(h, f"{name}_bn0", f"{name}_expand_relu")
            h = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv")(h)
            h = bn_relu(h, f"{name}_bn1", f"{name}_depthwise_relu")
            h = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_project_conv")(h)
            h = bn_relu(h, f"{name}_bn2")
            if stride == 1 and channels == out_channels:
                h = layers.Add(name=f"{name}_add")([x, h])
            x, channels, index = h, out_channels, index + 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="conv_head")(x)
    x = bn_relu(x, "bn1", "head_relu")
    return keras.Model(inputs, x, name="efficientnet_lite0")


def build_efficientnet_lite0(image_size: int = 128, pretrained: bool = True, dropout: float = 0.2) -> keras.Model:
    """EfficientNet-Lite0 (ImageNet weights when ``pretrained``) with a global-average-pool head."""
    from deepfake_detector import pretrained as imagenet

    backbone = efficientnet_lite0_backbone(image_size)
    if pretrained:
        imagenet.load_efficientnet_lite0(backbone)
    # EfficientNet-Lite's (x - 127) / 128 inside the model.
    normalize = [layers.Rescaling(1.0 / imagenet.LITE_STD, offset=-imagenet.LITE_MEAN / imagenet.LITE_STD, name="lite_norm")]
    return _detector(backbone, normalize, dropout, "efficientnet_lite0_detector")


def feature_block(layer_name: str) -> int | None:
    """Which backbone feature block a layer belongs to, counting the stem as block 0.

    MobileNetV2: ``features_N_...`` is block N (0 stem, 1-17 inverted residuals, 18 head).
    EfficientNet-Lite0: the stem is 0, ``blocks_N_...`` is N + 1, the head 17.
    """
    if match := re.match(r"features_(\d+)_", layer_name):
        return int(match.group(1))
    if match := re.match(r"blocks_(\d+)_", layer_name):
        return int(match.group(1)) + 1
    if layer_name in ("conv_stem", "bn0", "stem_relu"):
        return 0
    if layer_name in ("conv_head", "bn1", "head_relu"):
        return sum(stage[0] for stage in LITE0_STAGES) + 1
    return None


def backbone_of(model: keras.Model) -> keras.Model:
    """The pretrained backbone sub-model of a MobileNetV2 or EfficientNet-Lite0 detector."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name in PRETRAINED_ARCHITECTURES:
            return layer
    raise ValueError(f"{model.name} has no pretrained backbone")


def freeze_leading_blocks(model: keras.Model, blocks: int) -> int:
    """Keep the first ``blocks`` backbone feature blocks (block 0 is the stem) fixed.

    The early, high-resolution blocks cost most of a CPU training step and hold generic
    edge and colour filters; frozen, their BatchNormalization layers also run in inference
    mode. Returns how many layers were frozen.
    """
    frozen = 0
    if blocks <= 0:
        return frozen
    for layer in backbone_of(model).layers:
        block = feature_block(layer.name)
        if block is not None and block < blocks:
            layer.trainable = False
            frozen += 1
    return frozen


@keras.saving.register_keras_serializable(package="deepfake_detector")
class HorizontalFlip(layers.Layer):
    """The images mirrored left to right, always (``RandomFlip`` is random and training-only)."""

    def call(self, images):
        return keras.ops.flip(images, axis=-2)

    def compute_output_shape(self, input_shape):
        return input_shape


def flip_averaged(model: keras.Model) -> keras.Model:
    """``model``'s output averaged over each image and its mirror image, in one graph.

    Test-time flip averaging: training already shows every face both ways round, and the
    two views' errors are partly independent. Being part of the network, it reaches the
    Keras and TFLite runtimes and every export alike. The member keeps its name and
    weights, so :func:`flip_average_member` gets it back.
    """
    if flip_average_member(model) is not None:
        raise ValueError(f"{model.name} is already flip-averaged")
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    plain = model(inputs)
    mirrored = model(HorizontalFlip(name="mirror")(inputs))
    outputs = layers.Average(name="flip_average", dtype="float32")([plain, mirrored])
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")


def flip_average_member(model: keras.Model) -> keras.Model | None:
    """The network inside a :func:`flip_averaged` model; None for any other model."""
    if not any(isinstance(layer, HorizontalFlip) for layer in model.layers):
        return None
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return members[0] if len(members) == 1 else None


def build_model(arch: str, image_size: int = 128, pretrained: bool = True) -> keras.Model:
    """A fresh, uncompiled network of the named architecture (see ``ARCHITECTURES``)."""
    if arch == "seed":
        return build_seed_cnn(image_size)
    if arch == "mobilenet_v2":
        return build_mobilenet_v2(image_size, pretrained=pretrained)
    if arch == "efficientnet_lite0":
        return build_efficientnet_lite0(image_size, pretrained=pretrained)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


# ----------------------------------------------------------------------------- save / load


def library_versions() -> dict[str, str]:
    import numpy
    import PIL
    import tensorflow as tf

    return {
        "deepfake_detector": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def save_model(model: keras.Model, metadata: ModelMetadata, path: str | Path) -> Path:
    """Write model and metadata to ``path`` atomically (temp file in the same folder, then rename).

    An interrupted save never leaves a half-written file where the last good model was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not metadata.created:
        metadata.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if not metadata.versions:
        metadata.versions = library_versions()
    _check_consistent(model, metadata, path)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(handle)
    try:
        model.save(tmp_name)
        with zipfile.ZipFile(tmp_name, "a") as archive:
            archive.writestr(METADATA_ENTRY, metadata.to_json())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it 0600; save like open() would
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_metadata(path: str | Path) -> ModelMetadata:
    """The metadata inside a saved model, without loading the network."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(METADATA_ENTRY)
    except zipfile.BadZipFile as error:
        raise ModelFileError(f"{path}: not a .keras model file") from error
    except KeyError as error:
        raise ModelFileError(f"{path}: has no {METADATA_ENTRY}; save models with train.py, or adopt one trained with "
                             f"the original tutorial's code: python export.py --model {path} --format adopt "
                             "--output NEW.keras") from error  # fmt: skip
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
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a broken file
        raise ModelFileError(f"{path}: cannot load the network: {_one_line(error)}") from error
    _check_consistent(model, metadata, path)
    return model, metadata


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
        raise ModelFileError(f"{path}: metadata says flip_average={bool(metadata.flip_average)} "
                             f"but the network {'is' if averaged else 'is not'} flip-averaged")  # fmt: skip


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

    def __init__(self, model: keras.Model | None = None, metadata: ModelMetadata | None = None, *,
                 arch: str = "seed", image_size: int | None = None, pretrained: bool = True):  # fmt: skip
        if metadata is None:
            if model is not None:
                raise ValueError("a network needs its metadata (class order, input size, threshold)")
            metadata = ModelMetadata(arch=arch, preprocessing=PreprocessingConfig(image_size=image_size or 128).to_dict())
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

    # -- the tutorial's life cycle
    def compile_model(self, learning_rate=1e-4, *, optimizer: str = "adam", weight_decay: float = 0.0,
                      ema_momentum: float = 0.0, label_smoothing: float = 0.0) -> None:  # fmt: skip
        """Binary cross-entropy with accuracy, precision, recall and ROC AUC, fake positive.

        ``learning_rate`` may be a schedule. ``optimizer``: adam (the tutorial's) or adamw;
        ``ema_momentum`` > 0 keeps a moving average of the weights, written into the network
        when training ends.
        """
        if not self._output_is_fake:
            raise ValueError(f"{self.name}: training labels are {list(labels.TRAINING_CLASS_ORDER)} "
                             f"but this network's class order is {self.metadata.class_names}")  # fmt: skip
        ema = dict(use_ema=True, ema_momentum=ema_momentum) if ema_momentum else {}
        if optimizer == "adam":
            chosen = keras.optimizers.Adam(learning_rate, **ema)
        elif optimizer == "adamw":
            chosen = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **ema)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose adam or adamw")
        self.model.compile(
            optimizer=chosen,
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
        return self.model.fit(train_data, validation_data=val_data, epochs=epochs, callbacks=callbacks, **fit_options)

    def evaluate_model(self, test_data) -> list[float]:
        """The tutorial's ``[loss, accuracy, precision, recall]`` on batches of (images, labels),
        at threshold 0.5 with fake positive (:func:`deepfake_detector.evaluation.tutorial_metrics`)."""
        from deepfake_detector import evaluation

        truths, scores = [], []
        for images, batch_labels in test_data:
            scores.append(np.ravel(self.fake_probability(images)))
            truths.append(np.ravel(keras.ops.convert_to_numpy(batch_labels)))
        return evaluation.tutorial_metrics(np.concatenate(truths), np.concatenate(scores))

    def save_model(self, path: str | Path) -> Path:
        """One ``.keras`` file holding the network and this metadata (written atomically)."""
        return save_model(self.model, self.metadata, path)

    @classmethod
    def load(cls, path: str | Path) -> "DeepfakeDetectorModel":
        """A saved model; :class:`ModelFileError` (one line) if it is not one of ours."""
        return cls(*load_model(path))


#: ``NAME.keras`` keeps its best epoch so far in ``NAME_best.keras`` while it trains.
BEST_SUFFIX = "_best"


def best_path(output: str | Path) -> Path:
    """Where a run saving ``output`` keeps its best epoch so far (the tutorial's ``_best.keras``)."""
    output = Path(output)
    return output.with_name(f"{output.stem}{BEST_SUFFIX}{output.suffix}")


class BestModelCheckpoint(keras.callbacks.Callback):
    """The best epoch so far (lowest ``monitor``) saved as a loadable model, as the tutorial's
    ``ModelCheckpoint`` did, and with its metadata, so ``inference.py --model`` serves it.

    Its threshold is a plain 0.5 (the final model's is chosen on Validation when training
    ends) and it is the network as trained, without flip averaging or weight averaging.
    ``initial_best``: the best value of a run being resumed.
    """

    def __init__(self, detector_model: DeepfakeDetectorModel, path: str | Path, monitor: str = "val_loss",
                 verbose: int = 1, initial_best: float = math.inf):  # fmt: skip
        super().__init__()
        self.detector_model, self.path, self.monitor = detector_model, Path(path), monitor
        self.verbose, self.best = verbose, initial_best

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not math.isfinite(current):
            return
        if current >= self.best:
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}", flush=True)
            return
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                  f"saving model to {self.path}", flush=True)  # fmt: skip
        self.best = float(current)
        metadata = dataclasses.replace(
            self.detector_model.metadata, threshold=0.5, flip_average=False,
            threshold_rule=f"fixed 0.5 (best epoch so far, {self.monitor} {current:.4f}; "
                           "the finished model's threshold is chosen on Validation)",
            train_config={**self.detector_model.metadata.train_config, "best_epoch": epoch + 1, self.monitor: float(current)},
        )  # fmt: skip
        save_model(self.model, metadata, self.path)


def tutorial_callbacks(detector_model: DeepfakeDetectorModel, best: str | Path | None) -> list[keras.callbacks.Callback]:
    """The tutorial's three callbacks: early stopping (patience 10, best weights restored), the
    learning rate cut tenfold after 5 epochs without progress, and the best epoch kept at ``best``."""
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=5, min_lr=1e-7, verbose=1),
    ]
    if best is not None:
        callbacks.append(BestModelCheckpoint(detector_model, best))
    return callbacks

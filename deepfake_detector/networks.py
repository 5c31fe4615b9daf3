"""The networks: their architectures, flip averaging and freezing.

Every network takes uint8 RGB images (N x S x S x 3, 0..255, scaled inside) and gives one
sigmoid score per image from its ``fake_score`` layer (:data:`OUTPUT_LAYER`): P(class 1) in
the class order saved with the model. :func:`build_model` builds one by its name in
:data:`deepfake_detector.recipes.ARCHITECTURES`, whose entry names its builder here and holds
the recipe that trains it.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from deepfake_detector import pretrained as imagenet
from deepfake_detector.recipes import ARCHITECTURES, PRETRAINED_ARCHITECTURES

#: The output layer of every network: one sigmoid score, float32 even under mixed precision.
OUTPUT_LAYER = "fake_score"


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
    outputs = layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER, dtype="float32")(
        x
    )  # float32 under mixed precision too
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
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
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
    outputs = layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER, dtype="float32")(
        x
    )  # float32 under mixed precision too
    return keras.Model(inputs, outputs, name=name)


def build_mobilenet_v2(image_size: int = 128, pretrained: bool = True, dropout: float = 0.2) -> keras.Model:
    """MobileNetV2 (ImageNet weights when ``pretrained``) with a global-average-pool head."""
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
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


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
    backbone = efficientnet_lite0_backbone(image_size)
    if pretrained:
        imagenet.load_efficientnet_lite0(backbone)
    # EfficientNet-Lite's (x - 127) / 128 inside the model.
    normalize = [
        layers.Rescaling(1.0 / imagenet.LITE_STD, offset=-imagenet.LITE_MEAN / imagenet.LITE_STD, name="lite_norm")
    ]
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


class WithMirror(layers.Layer):
    """A batch of N images followed by their mirror images (left to right): 2N images."""

    def call(self, images):
        return keras.ops.concatenate([images, keras.ops.flip(images, axis=-2)], axis=0)

    def compute_output_shape(self, input_shape):
        return (None if input_shape[0] is None else 2 * input_shape[0], *input_shape[1:])


class MirrorMean(layers.Layer):
    """Each image's score averaged with its mirror image's: 2N scores in :class:`WithMirror`'s order, N out."""

    def call(self, scores):
        plain, mirrored = keras.ops.split(scores, 2, axis=0)
        return (plain + mirrored) / 2.0

    def compute_output_shape(self, input_shape):
        return (None if input_shape[0] is None else input_shape[0] // 2, *input_shape[1:])


def one_pass(model: keras.Model) -> keras.Model:
    """A :func:`flip_averaged` network rebuilt around the same member so that it runs once, on
    the images and their mirror images as one batch of 2N, with the same scores; any other
    network as it is.

    What the TFLite conversion runs: there one pass over 2N took less time than two over N,
    while the Keras runtime took more, so the saved form and the Keras runtime keep the two
    passes.
    """
    member = flip_average_member(model)
    if member is None:
        return model
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    scores = member(WithMirror(name="mirror")(inputs))
    return keras.Model(inputs, MirrorMean(name="flip_average", dtype="float32")(scores), name=model.name)


def flip_average_member(model: keras.Model) -> keras.Model | None:
    """The network inside a :func:`flip_averaged` model; None for any other model."""
    if not any(isinstance(layer, HorizontalFlip) for layer in model.layers):
        return None
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return members[0] if len(members) == 1 else None


def build_model(
    arch: str, image_size: int = 128, pretrained: bool = True, mixed_precision: bool = False
) -> keras.Model:
    """A fresh, uncompiled network of the named architecture (``recipes.ARCHITECTURES``).

    ``pretrained``: start the backbone from its ImageNet weights (the seed CNN has none).
    ``mixed_precision``: float16 compute and a float32 output; build it inside the distribution
    strategy's scope. A float16 sigmoid rounds scores near 0 and 1 and its log-loss overflows, so
    the output layer computes in float32 (the TF mixed-precision guide's advice); layers keep
    float32 variables either way, so the weights drop into a plain float32 copy.
    """
    architecture = ARCHITECTURES.check(arch)
    options = {"pretrained": pretrained} if architecture.pretrained else {}
    build = architecture.load()
    if not mixed_precision:
        return build(image_size, **options)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build(image_size, **options)
        if model.get_layer(OUTPUT_LAYER).compute_dtype != "float32":
            model = _with_float32_output(model)
    finally:
        keras.config.set_dtype_policy(previous)
    if model.outputs[0].dtype != "float32":
        raise RuntimeError(f"the {OUTPUT_LAYER} layer did not become float32 under mixed precision")
    return model


def _with_float32_output(model: keras.Model) -> keras.Model:
    """The same network (same layer objects, same weights) with the output layer rebuilt as float32."""
    old_output = model.get_layer(OUTPUT_LAYER)

    def clone(layer):
        if layer is not old_output:
            return layer
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    rebuilt.get_layer(OUTPUT_LAYER).set_weights(old_output.get_weights())
    return rebuilt

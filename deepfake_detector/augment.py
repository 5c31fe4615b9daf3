"""Training augmentation: label-preserving changes a shared photo goes through, in TensorFlow ops.

The policies (which changes, how often) are the entries of :data:`deepfake_detector.recipes.AUGMENTATIONS`,
whose implementation is :func:`augment_image`: it applies one to an image, reproducibly from a
seed, inside ``tf.data`` (``Augmentation.augmenter``).
"""

from __future__ import annotations

import tensorflow as tf

from deepfake_detector.recipes import AUGMENTATIONS, Augmentation


def augment_image(image: tf.Tensor, seed: tf.Tensor, policy: Augmentation = AUGMENTATIONS["full"]) -> tf.Tensor:
    """One augmented copy of a uint8 image, reproducible from its ``seed`` (two int64)."""
    size = tf.shape(image)[0]
    seeds = tf.random.experimental.stateless_split(seed, 7)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    pad = tf.maximum(1, size // 16)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.stack([size, size, 3]), seeds[1])
    u = tf.random.stateless_uniform([4], seeds[2])
    if policy.rescale_probability:
        small = tf.cast(tf.cast(size, tf.float32) * (0.5 + 0.5 * u[1]), tf.int32)
        rescaled = tf.image.resize(
            tf.image.resize(tf.cast(image, tf.float32), [small, small], antialias=True), [size, size]
        )
        rescaled = tf.cast(tf.clip_by_value(tf.round(rescaled), 0, 255), tf.uint8)
        image = tf.cond(u[0] < policy.rescale_probability, lambda: rescaled, lambda: image)
    if policy.blur_probability:
        image = tf.cond(u[2] < policy.blur_probability, lambda: _gaussian_blur(image, 0.3 + 1.2 * u[3]), lambda: image)
    if policy.jpeg_probability:
        quality = tf.random.stateless_uniform([], seeds[3], *policy.jpeg_quality, dtype=tf.int32)
        coin = tf.random.stateless_uniform([], seeds[4])
        image = tf.cond(
            coin < policy.jpeg_probability, lambda: tf.image.adjust_jpeg_quality(image, quality), lambda: image
        )
    if policy.color_probability:
        coin = tf.random.stateless_uniform([], seeds[6])
        image = tf.cond(coin < policy.color_probability, lambda: _jitter_colour(image, seeds[5]), lambda: image)
    return tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])


def _jitter_colour(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[0])
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[1])
    image = tf.image.stateless_random_saturation(image, 0.9, 1.1, seeds[2])
    image = tf.image.stateless_random_hue(image, 0.02, seeds[3])
    return tf.image.convert_image_dtype(tf.clip_by_value(image, 0.0, 1.0), tf.uint8, saturate=True)


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    radius = 4
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel_1d = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel_1d /= tf.reduce_sum(kernel_1d)
    kernel = tf.tile(
        tf.reshape(tf.tensordot(kernel_1d, kernel_1d, axes=0), [2 * radius + 1, 2 * radius + 1, 1, 1]), [1, 1, 3, 1]
    )
    padded = tf.pad(
        tf.cast(image, tf.float32)[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT"
    )
    blurred = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]
    return tf.cast(tf.clip_by_value(tf.round(blurred), 0, 255), tf.uint8)

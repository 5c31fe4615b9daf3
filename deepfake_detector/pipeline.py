"""The training input pipeline: splits decoded once into memory, augmentation, ``tf.data``.

Images go through the shared preprocessing (:func:`deepfake_detector.preprocessing.load_image`)
once, at the start of a run; each epoch then only shuffles, augments (in parallel) and
batches uint8 arrays, prefetching ahead of the model (``benchmarks/input_pipeline.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from deepfake_detector import data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augmentation:
    """Label-preserving changes a shared photo goes through, each image drawn independently.

    Every image is flipped (half the time) and shifted by up to 1/16 of its side; the rest
    happen with the given probabilities.
    """

    rescale_probability: float  # downscale to 50-100% and back up, as resizing for the web does
    blur_probability: float  # Gaussian blur, sigma 0.3-1.5
    jpeg_probability: float  # JPEG recompression
    jpeg_quality: tuple[int, int]  # its quality range, [low, high)


#: ``TrainConfig.augment`` names. "full" is the shipped model's; "light" keeps the seams a
#: swap leaves sharp (better clean accuracy, far less robust to blur and resizing: models/README.md).
AUGMENTATIONS = {
    "full": Augmentation(rescale_probability=0.25, blur_probability=0.2, jpeg_probability=0.5, jpeg_quality=(30, 96)),
    "light": Augmentation(rescale_probability=0.0, blur_probability=0.0, jpeg_probability=0.4, jpeg_quality=(50, 96)),
}


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
        rescaled = tf.image.resize(tf.image.resize(tf.cast(image, tf.float32), [small, small], antialias=True), [size, size])
        rescaled = tf.cast(tf.clip_by_value(tf.round(rescaled), 0, 255), tf.uint8)
        image = tf.cond(u[0] < policy.rescale_probability, lambda: rescaled, lambda: image)
    if policy.blur_probability:
        image = tf.cond(u[2] < policy.blur_probability, lambda: _gaussian_blur(image, 0.3 + 1.2 * u[3]), lambda: image)
    if policy.jpeg_probability:
        quality = tf.random.stateless_uniform([], seeds[3], *policy.jpeg_quality, dtype=tf.int32)
        coin = tf.random.stateless_uniform([], seeds[4])
        image = tf.cond(coin < policy.jpeg_probability, lambda: tf.image.adjust_jpeg_quality(image, quality), lambda: image)
    return tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    radius = 4
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel_1d = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel_1d /= tf.reduce_sum(kernel_1d)
    kernel = tf.tile(tf.reshape(tf.tensordot(kernel_1d, kernel_1d, axes=0), [2 * radius + 1, 2 * radius + 1, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(tf.cast(image, tf.float32)[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]
    return tf.cast(tf.clip_by_value(tf.round(blurred), 0, 255), tf.uint8)


def make_dataset(images: np.ndarray, targets: np.ndarray, batch_size: int, training: bool,
                 augment: str = "none", seed: int = 0) -> tf.data.Dataset:
    """A tf.data pipeline over decoded uint8 images: shuffle, augment in parallel, batch, prefetch.

    ``batch_size`` is the global batch: a distribution strategy splits each batch across its
    replicas. Several workers shard by element (every worker builds the same pipeline from the
    same arrays and seed, and keeps its share); the default per-file sharding has no files here.
    """
    dataset = tf.data.Dataset.from_tensor_slices((images, targets.astype(np.float32)[:, None]))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        if augment != "none":
            policy = AUGMENTATIONS[augment]
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            dataset = tf.data.Dataset.zip((dataset, seeds)).map(
                lambda pair, s: (augment_image(pair[0], s, policy), pair[1]), num_parallel_calls=tf.data.AUTOTUNE
            )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_split(root: Path, split: str, image_size: int, limit: int | None = None, seed: int = 0):
    """Decode one split into memory with the shared preprocessing; returns (images, targets, info)."""
    listing = data.list_images(root / split)
    paths, targets = listing.paths, listing.labels
    if limit is not None and limit < len(paths):
        order = np.random.default_rng(seed).permutation(len(paths))[:limit]
        paths, targets = [paths[i] for i in order], targets[order]
    images, kept, failures = data.decode_images(paths, image_size, desc=f"decoding {split}")
    if failures:
        log.warning("%s: %d image(s) could not be decoded and were skipped", split, len(failures))
    info = {"n_images": int(len(kept)), "skipped": int(listing.skipped + len(failures)),
            **{f"n_{k}": v for k, v in data.ImageList(paths, targets[kept]).class_counts().items()}}
    return images, targets[kept], info

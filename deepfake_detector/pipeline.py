"""The training input pipeline: cached splits streamed by position, augmentation, ``tf.data``.

Images go through the shared preprocessing (:func:`deepfake_detector.preprocessing.load_image`)
once, into an on-disk cache (:mod:`deepfake_detector.cache`); each epoch then only shuffles
positions, reads their rows, augments (in parallel) and batches, prefetching ahead of the
model. Memory stays flat in the number of images (``benchmarks/full_archive.py``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Union

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from deepfake_detector import cache, selfblend
from deepfake_detector.files import write_atomically
from deepfake_detector.labels import FAKE, REAL, TRAINING_CLASS_ORDER

ImageSource = Union[cache.SplitCache, cache.ArraySource, cache.Subset, "BlendedSource"]

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
    color_probability: float = 0.0  # brightness, contrast, saturation and hue jitter


#: ``TrainConfig.augment`` names. "full" is the shipped model's; "light" keeps the seams a
#: swap leaves sharp (better clean accuracy, far less robust to blur and resizing: models/README.md).
AUGMENTATIONS = {
    "full": Augmentation(rescale_probability=0.25, blur_probability=0.2, jpeg_probability=0.5, jpeg_quality=(30, 96)),
    "light": Augmentation(rescale_probability=0.0, blur_probability=0.0, jpeg_probability=0.4, jpeg_quality=(50, 96)),
    # Self-blended training (``fakes``): "full" plus SBI's colour jitter, on real and fake alike.
    "selfblend": Augmentation(rescale_probability=0.25, blur_probability=0.2, jpeg_probability=0.5,
                              jpeg_quality=(30, 96), color_probability=0.5),  # fmt: skip
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
    kernel = tf.tile(tf.reshape(tf.tensordot(kernel_1d, kernel_1d, axes=0), [2 * radius + 1, 2 * radius + 1, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(tf.cast(image, tf.float32)[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]
    return tf.cast(tf.clip_by_value(tf.round(blurred), 0, 255), tf.uint8)


def make_dataset(source: ImageSource, batch_size: int, training: bool, augment: str = "none", seed: int = 0,
                 shard: tuple[int, int] | None = None, blend_landmarks: np.ndarray | None = None) -> tf.data.Dataset:  # fmt: skip
    """Batches of (uint8 images, float32 targets) read from ``source`` by position.

    Training draws a fresh permutation of every position each epoch (a full shuffle of
    indices, never a buffer of images), reads each batch's rows in parallel and augments each
    image in parallel; evaluation keeps the files' order. ``batch_size`` is the global batch: a
    distribution strategy splits each batch across its replicas. With ``shard=(count, index)``
    (several workers) every worker reads only its share of each epoch's permutation, the same
    size for all (at most ``count - 1`` images sit out each epoch, different ones every time).

    With ``blend_landmarks`` (five face landmarks per position of ``source``) every real image
    is followed by a self-blend of itself (:func:`deepfake_detector.selfblend.self_blend`),
    labelled fake, drawn anew each epoch and reproducible from ``seed``; then both are augmented.
    """
    size, count = source.image_size, len(source)
    positions = tf.data.Dataset.range(count)
    if training:
        positions = positions.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    elements = count
    if shard is not None:
        shards, index = shard
        positions = positions.take(count - count % shards).shard(shards, index)
        elements = count // shards
    targets = tf.constant(source.labels.astype(np.float32)[:, None])

    def read(batch_positions):
        images = tf.numpy_function(source.read, [batch_positions], tf.uint8, stateful=False)
        return tf.ensure_shape(images, [None, size, size, 3]), tf.gather(targets, batch_positions)

    dataset = positions.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    if blend_landmarks is not None:
        if shard is not None and len(np.unique(source.labels)) > 1:
            raise ValueError("self-blends of a mixed split cannot be sharded into equal shares")
        elements += int((source.labels == REAL_INDEX).sum()) if shard is None else elements  # sharded: all real
        dataset = _with_self_blends(dataset, positions, blend_landmarks, seed, batch_size)
    if training and augment != "none":
        policy = AUGMENTATIONS[augment]
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset.unbatch(), seeds)).map(
            lambda pair, s: (augment_image(pair[0], s, policy), pair[1]), num_parallel_calls=tf.data.AUTOTUNE
        ).batch(batch_size)
    # Known batches per epoch (re-batching forgets them): the progress bar and the schedule's length.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-elements // batch_size)))
    options = tf.data.Options()
    # Sharding is ours (above): tf.distribute must neither shard again nor read every row on every worker.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if shard is not None else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


REAL_INDEX = TRAINING_CLASS_ORDER.index(REAL)
FAKE_INDEX = TRAINING_CLASS_ORDER.index(FAKE)
#: ``TrainConfig.fakes``: the dataset's own fakes; self-blends of its real images only (its
#: fakes unused, a test of fakes never seen); or both.
FAKES = ("dataset", "self-blended", "both")


def _with_self_blends(batches: tf.data.Dataset, positions: tf.data.Dataset, landmarks: np.ndarray, seed: int,
                      batch_size: int) -> tf.data.Dataset:  # fmt: skip
    """Each real image followed by its self-blend (fake), blended in parallel, rebatched."""
    landmarks = tf.constant(np.asarray(landmarks, np.float32))
    elements = tf.data.Dataset.zip((batches.unbatch(), positions))
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)

    def pair(element, position, blend_seed):
        image, target = element

        def with_blend():
            blended = tf.numpy_function(_blend, [image, tf.gather(landmarks, position), blend_seed], tf.uint8, stateful=False)
            pair_targets = tf.constant([[float(REAL_INDEX)], [float(FAKE_INDEX)]])
            return tf.stack([image, tf.ensure_shape(blended, image.shape)]), pair_targets

        return tf.cond(tf.equal(target[0], float(REAL_INDEX)), with_blend, lambda: (image[None], target[None]))

    paired = tf.data.Dataset.zip((elements, seeds)).map(
        lambda element_position, s: pair(*element_position, s), num_parallel_calls=tf.data.AUTOTUNE
    )
    return paired.unbatch().batch(batch_size)


def _blend(image: np.ndarray, landmarks: np.ndarray, seed: np.ndarray) -> np.ndarray:
    return selfblend.self_blend(image, landmarks, np.random.default_rng(seed.astype(np.uint64)))[0]


class BlendedSource:
    """A split's real images, then one self-blend of each (fixed per position): a fixed, streamed
    evaluation set for self-blended training, read like a :class:`~deepfake_detector.cache.SplitCache`."""

    def __init__(self, reals: ImageSource, landmarks: np.ndarray, seed: int):
        self.reals, self.landmarks, self.seed = reals, np.asarray(landmarks, np.float32), seed
        count = len(reals)
        self.labels = np.r_[np.full(count, REAL_INDEX), np.full(count, FAKE_INDEX)].astype(np.int32)
        self.image_size = reals.image_size

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, positions: np.ndarray) -> np.ndarray:
        positions, count = np.asarray(positions, np.int64), len(self.reals)
        images = self.reals.read(positions % count)
        for i, position in enumerate(positions):
            if position >= count:
                rng = np.random.default_rng([self.seed, int(position)])
                images[i] = selfblend.self_blend(images[i], self.landmarks[position - count], rng)[0]
        return images


def split_landmarks(split: cache.SplitCache) -> np.ndarray:
    """Five face landmarks for every image of a cached split (N x 5 x 2, pixels of the cached image).

    Found once with RetinaFace, for the real images only (the others keep a face crop's mean
    landmarks), and kept beside the cache, whose key they share.
    """
    path = split.directory / "landmarks.npy"
    if path.exists():
        return np.load(path)
    from deepfake_detector.faces import default_finder

    finder = default_finder("retinaface")
    landmarks = np.broadcast_to(selfblend.default_landmarks(split.image_size), (len(split), 5, 2)).copy()
    reals = np.flatnonzero(split.labels == REAL_INDEX)
    with tqdm(total=len(reals), desc=f"finding landmarks in {split.directory.name}", unit="img") as bar:
        for start in range(0, len(reals), 256):
            chunk = reals[start : start + 256]
            for position, image in zip(chunk, split.read(chunk)):
                landmarks[position] = selfblend.face_landmarks(image, finder)
            bar.update(len(chunk))
    buffer = io.BytesIO()
    np.save(buffer, landmarks)
    write_atomically(path, buffer.getvalue())
    return landmarks


def images_only(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The images of a (images, targets) dataset, for ``model.predict``."""
    return dataset.map(lambda images, targets: images)

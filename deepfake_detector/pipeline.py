"""The training input pipeline: cached splits streamed by position, augmentation, ``tf.data``.

Images go through the shared preprocessing (:func:`deepfake_detector.preprocessing.load_image`)
once, into an on-disk cache (:mod:`deepfake_detector.cache`); each epoch then only shuffles
positions, reads their rows, augments (in parallel) and batches, prefetching ahead of the
model. Memory stays flat in the number of images (``benchmarks/full_archive.py``).
"""

from __future__ import annotations

import io
import logging
from typing import Union

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from deepfake_detector import cache, faces, selfblend
from deepfake_detector.files import write_atomically
from deepfake_detector.labels import FAKE_INDEX, REAL_INDEX
from deepfake_detector.recipes import AUGMENTATIONS, Augmentation, DataConfig

SplitSource = Union[cache.SplitCache, cache.ArraySource, cache.Subset, "BlendedSource"]

log = logging.getLogger(__name__)


def make_dataset(
    source: SplitSource,
    batch_size: int,
    training: bool,
    config: DataConfig = DataConfig(),
    shard: tuple[int, int] | None = None,
    blend_landmarks: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 images, float32 targets) read from ``source`` by position.

    Training draws a fresh permutation of every position each epoch (a full shuffle of
    indices, never a buffer of images, drawn from ``config.seed``), reads each batch's rows in
    parallel and augments each image in parallel by ``config.augment``; evaluation keeps the
    files' order. ``batch_size`` is the global batch: a
    distribution strategy splits each batch across its replicas. With ``shard=(count, index)``
    (several workers) every worker reads only its share of each epoch's permutation, the same
    size for all (at most ``count - 1`` images sit out each epoch, different ones every time).

    With ``blend_landmarks`` (five face landmarks per position of ``source``) every real image
    is followed by a self-blend of itself (:func:`deepfake_detector.selfblend.self_blend`),
    labelled fake, drawn anew each epoch and reproducible from the seed; then both are augmented,
    alike if the policy is ``paired``. ``config.other_faces`` of the blends take another real image
    of ``source`` as their donor (``self_blend``'s ``donor``) instead of the face itself.
    """
    size, count, seed = source.image_size, len(source), config.seed
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
        return tf.ensure_shape(images, [None, size, size, 3]), tf.gather(targets, batch_positions), batch_positions

    # Each batch carries its positions: a second pass over ``positions`` would be reshuffled.
    dataset = positions.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    policy = augmentation(config.augment) if training else None
    if blend_landmarks is not None:
        if shard is not None and len(np.unique(source.labels)) > 1:
            raise ValueError("self-blends of a mixed split cannot be sharded into equal shares")
        elements += int((source.labels == REAL_INDEX).sum()) if shard is None else elements  # sharded: all real
        paired = policy if policy is not None and policy.paired else None
        blend = blender(source, blend_landmarks, config.other_faces)
        dataset = _with_self_blends(dataset, blend, seed, batch_size, paired)
        policy = None if paired else policy
    else:
        dataset = dataset.map(lambda images, batch_targets, _: (images, batch_targets))
    if policy is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        augment_one = policy.augmenter()
        dataset = (
            tf.data.Dataset.zip((dataset.unbatch(), seeds))
            .map(lambda pair, s: (augment_one(pair[0], s), pair[1]), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
        )
    # Known batches per epoch (re-batching forgets them): the progress bar and the schedule's length.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-elements // batch_size)))
    options = tf.data.Options()
    # Sharding is ours (above): tf.distribute must neither shard again nor read every row on every worker.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if shard is not None else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def augmentation(name: str) -> Augmentation | None:
    """The policy called ``name`` in ``recipes.AUGMENTATIONS``; None for one that changes nothing."""
    policy = AUGMENTATIONS.check(name)
    return policy if policy.changes_images else None


def _with_self_blends(
    batches: tf.data.Dataset, blend, seed: int, batch_size: int, paired: Augmentation | None = None
) -> tf.data.Dataset:
    """Each real image followed by its blend (fake): ``blend(image, position, seed)``, in
    parallel, rebatched. ``batches``: (images, targets, positions).

    With a ``paired`` policy the two are then augmented by one draw of it (a dataset fake by its own)."""
    elements = batches.unbatch().map(lambda image, target, position: ((image, target), position))
    blend_seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    augment_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    augment_pair = paired.augmenter() if paired is not None else None

    def with_blend(element, position, blend_seed, augment_seed):
        image, target = element

        def real_and_blend():
            blended = tf.numpy_function(blend, [image, position, blend_seed], tf.uint8, stateful=False)
            pair_targets = tf.constant([[float(REAL_INDEX)], [float(FAKE_INDEX)]])
            return tf.stack([image, tf.ensure_shape(blended, image.shape)]), pair_targets

        images, targets = tf.cond(
            tf.equal(target[0], float(REAL_INDEX)), real_and_blend, lambda: (image[None], target[None])
        )
        if paired is not None:
            images = tf.map_fn(lambda one: augment_pair(one, augment_seed), images, fn_output_signature=tf.uint8)
        return images, targets

    pairs = tf.data.Dataset.zip((elements, blend_seeds, augment_seeds)).map(
        lambda element_position, blend_seed, augment_seed: with_blend(*element_position, blend_seed, augment_seed),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return pairs.unbatch().batch(batch_size)


def blender(source: SplitSource, landmarks: np.ndarray, other_faces: float):
    """``blend(image, position, seed)``: the fake of ``source``'s image at ``position``."""
    landmarks = np.asarray(landmarks, np.float32)
    reals = np.flatnonzero(source.labels == REAL_INDEX)

    def blend(image: np.ndarray, position: np.ndarray, seed: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed.astype(np.uint64))
        donor = _donor(source, landmarks, reals, int(position), other_faces, rng)
        return selfblend.self_blend(image, landmarks[position], rng, donor)[0]

    return blend


def _donor(
    source: SplitSource, landmarks: np.ndarray, reals: np.ndarray, position: int, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Another real image of ``source`` and its landmarks, ``share`` of the time; else None.
    Draws nothing from ``rng`` when ``share`` is 0, so self-blends alone stay as they were.
    Each donor is one more row read at random: cheap while the cache sits in the page cache
    (the LFW data), slow where its reads go to the disk (a full archive on this machine)."""
    if share <= 0 or len(reals) < 2 or rng.random() >= share:
        return None
    donor = int(reals[rng.integers(len(reals))])
    if donor == position:
        donor = int(reals[(np.searchsorted(reals, donor) + 1) % len(reals)])
    return source.read(np.array([donor]))[0], landmarks[donor]


class BlendedSource:
    """A split's real images, then one self-blend of each (fixed per position): a fixed, streamed
    evaluation set for self-blended training, read like a :class:`~deepfake_detector.cache.SplitCache`.
    ``other_faces`` of the blends have another of the real images as donor, as in training."""

    def __init__(self, reals: SplitSource, landmarks: np.ndarray, seed: int, other_faces: float = 0.0):
        self.reals, self.landmarks, self.seed = reals, np.asarray(landmarks, np.float32), seed
        self.other_faces = other_faces
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
                real = int(position - count)
                donor = _donor(self.reals, self.landmarks, np.arange(count), real, self.other_faces, rng)
                images[i] = selfblend.self_blend(images[i], self.landmarks[real], rng, donor)[0]
        return images


def split_landmarks(split: cache.SplitCache) -> np.ndarray:
    """Five face landmarks for every image of a cached split (N x 5 x 2, pixels of the cached image).

    Found once with RetinaFace, for the real images only (the others keep a face crop's mean
    landmarks), and kept beside the cache, whose key they share.
    """
    path = split.directory / "landmarks.npy"
    if path.exists():
        return np.load(path)
    finder = faces.default_finder("retinaface")
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

"""A multi-source run: several datasets (and self-blends) drawn in fixed shares, measured per source.

``train.py --data-dir A --data-dir B`` trains on every dataset at once, each a *source*. Each epoch
is drawn anew in fixed shares (:func:`parse_mix`: equal by default, ``--mix A=2,B=1`` to set
them), real and fake balanced within each source. With ``--fakes both``, self-blends are one more
source, named :data:`~deepfake_detector.recipes.SELF_BLENDED_SOURCE`: real faces of every source,
each followed by a blend of itself (``selfblend.py``).

An epoch's draw (:meth:`EpochPlan.draw`) is a pure function of the seed and the epoch's number,
and so is every blend and augmentation in it: a run resumed at epoch *k* (``ResumableBackup``)
trains on exactly the batches the uninterrupted run would have. Within a source, each class is
walked through in a fresh random order before any image repeats.

The checkpoint is chosen on the mean of the sources' Validation ROC AUCs (:class:`SourceValidation`),
each source counting the same whatever its size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as skm

from deepfake_detector.errors import TrainingSetupError
from deepfake_detector.labels import FAKE_INDEX, REAL_INDEX
from deepfake_detector.metrics import log_loss
from deepfake_detector.pipeline import SplitSource, augmentation, blender
from deepfake_detector.recipes import SELF_BLENDED_SOURCE, DataConfig
from deepfake_detector.thresholds import predict_scores

log = logging.getLogger(__name__)

#: Entries read from the caches per parallel call.
READ_BATCH = 64
#: The mean of the sources' Validation ROC AUCs, as the logs and the history name it.
MEAN_AUC = "val_auc_mean"


def source_names(data_dirs: list[str]) -> list[str]:
    """Each data folder's name as a source (its last path component).

    Raises:
        TrainingSetupError: two folders with the same name, or one named like the self-blends.
    """
    names = [Path(directory).resolve().name for directory in data_dirs]
    for name in names:
        if names.count(name) > 1:
            raise TrainingSetupError(
                f"two --data-dir folders are named {name!r}; a source is known by its "
                "folder's name, so give each its own"
            )
        if name == SELF_BLENDED_SOURCE:
            raise TrainingSetupError(
                f"a --data-dir folder may not be named {SELF_BLENDED_SOURCE!r}, the self-blended source's name"
            )
    return names


def parse_mix(spec: str | None, names: list[str]) -> dict[str, float]:
    """Each source's share of an epoch: ``"A=2,B=1"``; a source not named weighs 1 (default: all equal).

    Raises:
        TrainingSetupError: a malformed entry, an unknown source, or a weight that is not above 0.
    """
    shares = dict.fromkeys(names, 1.0)
    for entry in (spec or "").split(","):
        if not entry.strip():
            continue
        name, sep, weight = entry.partition("=")
        name = name.strip()
        if not sep or name not in shares:
            known = ", ".join(names)
            raise TrainingSetupError(
                f"--mix {spec!r}: {entry.strip()!r} is not SOURCE=WEIGHT with a source of this run ({known})"
            )
        try:
            shares[name] = float(weight)
        except ValueError:
            raise TrainingSetupError(f"--mix {spec!r}: the weight of {name} is not a number") from None
        if not (math.isfinite(shares[name]) and shares[name] > 0):
            raise TrainingSetupError(f"--mix {spec!r}: the weight of {name} must be above 0")
    return shares


class MixedSource:
    """Several sources read as one: position ``offsets[i] + p`` is position ``p`` of source ``i``."""

    def __init__(self, sources: dict[str, SplitSource]):
        self.names, self.sources = list(sources), list(sources.values())
        sizes = {source.image_size for source in self.sources}
        if len(sizes) != 1:
            raise ValueError(f"sources of {sorted(sizes)} px cannot be mixed")
        self.image_size = sizes.pop()
        self.offsets = np.cumsum([0] + [len(source) for source in self.sources])
        self.labels = np.concatenate([source.labels for source in self.sources]).astype(np.int32)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, np.int64)
        out = np.empty((len(positions), self.image_size, self.image_size, 3), np.uint8)
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        for index in np.unique(which):
            chosen = which == index
            out[chosen] = self.sources[index].read(positions[chosen] - self.offsets[index])
        return out

    def positions(self, name: str, label: int) -> np.ndarray:
        """Every position of one class of one source."""
        index = self.names.index(name)
        own = np.flatnonzero(self.sources[index].labels == label)
        return own + self.offsets[index]


@dataclass
class EpochPlan:
    """What each epoch of a multi-source run draws: ``epoch_size`` images in ``shares``.

    A data source's draw is half real, half fake; the self-blended source's (when ``shares``
    names it) is pairs of a real face of some source and its blend, the pairs spread over the
    data sources by their shares.
    """

    source: MixedSource
    shares: dict[str, float]
    epoch_size: int
    seed: int

    def counts(self) -> dict[str, int]:
        """Images each source gives an epoch (the self-blended source's is even: pairs)."""
        total = sum(self.shares.values())
        counts = {name: int(self.epoch_size * share / total) for name, share in self.shares.items()}
        if SELF_BLENDED_SOURCE in counts:
            counts[SELF_BLENDED_SOURCE] -= counts[SELF_BLENDED_SOURCE] % 2
        largest = max(self.source.names, key=lambda name: self.shares[name])
        counts[largest] += self.epoch_size - sum(counts.values())
        return counts

    def draw(self, epoch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s entries in training order: positions in ``source``, whether each is
        followed by its blend, and a seed pair for each (its blend and augmentation)."""
        epoch = int(epoch)
        counts = self.counts()
        positions, blends = [], []
        for index, name in enumerate(self.source.names):
            n_real = counts[name] // 2
            for label, count in ((REAL_INDEX, n_real), (FAKE_INDEX, counts[name] - n_real)):
                positions.append(self._stream((index, label), self.source.positions(name, label), epoch, count))
                blends.append(np.zeros(count, bool))
        pairs = counts.get(SELF_BLENDED_SOURCE, 0) // 2
        if pairs:
            data_total = sum(self.shares[name] for name in self.source.names)
            spread = EpochPlan(
                self.source, {name: self.shares[name] / data_total for name in self.source.names}, pairs, self.seed
            )
            for index, (name, count) in enumerate(spread.counts().items()):
                reals = self.source.positions(name, REAL_INDEX)
                positions.append(self._stream((index, 2), reals, epoch, count))
                blends.append(np.ones(count, bool))
        positions, blends = np.concatenate(positions), np.concatenate(blends)
        order = np.random.default_rng([self.seed, epoch, 7]).permutation(len(positions))
        seeds = np.random.default_rng([self.seed, epoch, 8]).integers(0, 2**31 - 1, (len(positions), 2))
        return positions[order].astype(np.int64), blends[order], seeds.astype(np.int64)

    def _stream(self, key: tuple[int, int], pool: np.ndarray, epoch: int, count: int) -> np.ndarray:
        """Draws ``epoch * count ...`` of an endless stream of ``pool``: one shuffled pass after another."""
        if not count:
            return np.zeros(0, np.int64)
        if not len(pool):
            raise TrainingSetupError("a source has no images of a class it must draw")
        index = np.arange(epoch * count, (epoch + 1) * count)
        passes, within = np.divmod(index, len(pool))
        out = np.empty(count, np.int64)
        for one in np.unique(passes):
            order = np.random.default_rng([self.seed, *key, int(one)]).permutation(len(pool))
            chosen = passes == one
            out[chosen] = pool[order[within[chosen]]]
        return out


def make_mixed_dataset(
    plan: EpochPlan,
    batch_size: int,
    first_epoch: int,
    epochs: int,
    config: DataConfig = DataConfig(),
    landmarks: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 images, float32 targets) for epochs ``first_epoch`` to ``epochs - 1``, in
    one stream (``fit`` with ``steps_per_epoch`` keeps one iterator across epochs), augmented by
    ``config.augment``.

    ``landmarks`` (five per position of ``plan.source``) are needed when the plan has self-blends;
    ``config.other_faces`` of the blends take another real face as their donor. Blends and
    augmentations are drawn from each entry's seed pair, so the stream depends on the plan's seed
    and the epoch numbers only (``config.seed`` is not used).
    """
    source, size = plan.source, plan.source.image_size
    targets = tf.constant(source.labels.astype(np.float32)[:, None])
    policy = augmentation(config.augment)
    blend = blender(source, landmarks, config.other_faces) if landmarks is not None else None

    def entries(epoch):
        positions, blends, seeds = tf.numpy_function(plan.draw, [epoch], [tf.int64, tf.bool, tf.int64], stateful=False)
        return tf.data.Dataset.from_tensor_slices(
            (tf.ensure_shape(positions, [None]), tf.ensure_shape(blends, [None]), tf.ensure_shape(seeds, [None, 2]))
        )

    def read(positions, blends, seeds):
        images = tf.numpy_function(source.read, [positions], tf.uint8, stateful=False)
        return tf.ensure_shape(images, [None, size, size, 3]), tf.gather(targets, positions), positions, blends, seeds

    def expand(image, target, position, with_blend, seed):
        augment_seed = seed + tf.constant([1, 0], tf.int64)

        def single():
            return image[None], target[None], augment_seed[None]

        def pair():
            blended = tf.ensure_shape(
                tf.numpy_function(blend, [image, position, seed], tf.uint8, stateful=False), image.shape
            )
            second = augment_seed if policy is not None and policy.paired else seed + tf.constant([2, 0], tf.int64)
            pair_targets = tf.constant([[float(REAL_INDEX)], [float(FAKE_INDEX)]])
            return tf.stack([image, blended]), pair_targets, tf.stack([augment_seed, second])

        return single() if blend is None else tf.cond(with_blend, pair, single)

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(entries)
    dataset = dataset.batch(READ_BATCH).map(read, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    dataset = dataset.map(expand, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    if policy is not None:
        augment_one = policy.augmenter()
        dataset = dataset.map(
            lambda image, target, seed: (augment_one(image, seed), target), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = dataset.map(lambda image, target, seed: (image, target))
    steps = -(-(epochs - first_epoch) * plan.epoch_size // batch_size)
    dataset = dataset.batch(batch_size).apply(tf.data.experimental.assert_cardinality(steps))
    return dataset.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- measured per source


class SourceValidation(keras.callbacks.Callback):
    """After each epoch, every source's Validation ROC AUC and loss, and their means (each source
    counts once) as ``val_auc_mean`` and ``val_loss``; then ``best`` (a checkpoint monitoring
    ``val_auc_mean``) sees the epoch.

    With a weight average (``ema_momentum``), it is the average that is measured and that ``best``
    saves, as the finished model will be; the trained weights are put back before the epoch's backup.
    """

    def __init__(
        self, sources: dict[str, SplitSource], best: keras.callbacks.Callback | None = None, batch_size: int = 128
    ):
        super().__init__()
        self.sources, self.best, self.batch_size = sources, best, batch_size

    def set_model(self, model):
        super().set_model(model)
        if self.best is not None:
            self.best.set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        averaged = bool(getattr(optimizer, "use_ema", False))
        trained = [variable.numpy() for variable in self.model.trainable_variables] if averaged else None
        try:
            if averaged:
                optimizer.finalize_variable_values(self.model.trainable_variables)
            aucs, losses = [], []
            for name, source in self.sources.items():
                scores = predict_scores(self.model, source, self.batch_size)
                aucs.append(float(skm.roc_auc_score(source.labels, scores)))
                losses.append(log_loss(source.labels, scores))
                logs[f"val_auc_{name}"], logs[f"val_loss_{name}"] = aucs[-1], losses[-1]
            logs[MEAN_AUC], logs["val_loss"] = float(np.mean(aucs)), float(np.mean(losses))
            log.info(
                "epoch %d: Validation ROC AUC %s; mean %.4f",
                epoch + 1,
                ", ".join(f"{name} {auc:.4f}" for name, auc in zip(self.sources, aucs)),
                logs[MEAN_AUC],
            )
            if self.best is not None:
                self.best.on_epoch_end(epoch, logs)
        finally:
            if averaged:
                for variable, value in zip(self.model.trainable_variables, trained):
                    variable.assign(value)

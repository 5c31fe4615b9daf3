"""What the fake class trains on (``TrainConfig.fakes``): the dataset's own fakes, self-blends, or both.

Each function here is the implementation of an entry of ``recipes.FAKES``: from a dataset's
cached splits, it gives what a single-dataset run trains and validates on, as
``(train source, validation source, landmarks or None, class weights or None)``. The landmarks
(five per position of the train source) ask the input pipeline to follow each real image with a
fresh self-blend of itself every epoch (``pipeline.make_dataset``).
"""

from __future__ import annotations

import logging

import numpy as np

from deepfake_detector import cache
from deepfake_detector.labels import FAKE_INDEX, REAL_INDEX
from deepfake_detector.pipeline import BlendedSource, SplitSource, split_landmarks
from deepfake_detector.recipes import DataConfig

log = logging.getLogger(__name__)

#: What each implementation returns: train source, validation source, landmarks, class weights.
Sources = tuple[SplitSource, SplitSource, "np.ndarray | None", "dict | None"]


def dataset_fakes(splits: dict[str, cache.SplitCache], config: DataConfig) -> Sources:
    """``dataset``: the splits as they are."""
    return splits["Train"], splits["Validation"], None, None


def self_blended_fakes(splits: dict[str, cache.SplitCache], config: DataConfig) -> Sources:
    """``self-blended``: the dataset's fakes left out of Train and Validation, so Test's fakes are a
    manipulation the model never saw. Validation becomes its real images and a fixed self-blend
    of each (drawn from ``config.seed``); ``config.other_faces`` of the blends take another face."""
    train_landmarks = split_landmarks(splits["Train"])
    reals = np.flatnonzero(splits["Train"].labels == REAL_INDEX)
    val_reals = np.flatnonzero(splits["Validation"].labels == REAL_INDEX)
    validation = BlendedSource(
        cache.Subset(splits["Validation"], val_reals),
        split_landmarks(splits["Validation"])[val_reals],
        config.seed,
        config.other_faces,
    )
    log.info(
        "self-blended: %d real training images, each with a fresh self-blend every epoch (%.0f%% of them "
        "from another real face); Validation: %d real images and one blend of each",
        len(reals),
        100 * config.other_faces,
        len(val_reals),
    )
    return cache.Subset(splits["Train"], reals), validation, train_landmarks[reals], None


def dataset_and_blended_fakes(splits: dict[str, cache.SplitCache], config: DataConfig) -> Sources:
    """``both``: the dataset's fakes kept and a self-blend added per real image, weighted so that each
    real image weighs as much as the two fakes that come with it, class by class."""
    train_landmarks = split_landmarks(splits["Train"])
    n_real = int((splits["Train"].labels == REAL_INDEX).sum())
    n_fake = len(splits["Train"])  # the dataset's fakes (all but n_real) and one self-blend per real image
    total = n_real + n_fake
    class_weight = {REAL_INDEX: total / (2 * n_real), FAKE_INDEX: total / (2 * n_fake)}
    log.info(
        "both: %d real, %d fake training images per epoch (self-blends included); class weights %s",
        n_real,
        n_fake,
        {k: round(v, 3) for k, v in class_weight.items()},
    )
    return splits["Train"], splits["Validation"], train_landmarks, class_weight

"""The decision threshold of a trained network, chosen on Validation, and both splits measured at it.

Used at the end of a training run and when a saved model is exported flip-averaged: the
network's scores stream from a split's cache (:mod:`deepfake_detector.cache`), a batch at a
time, so no split needs to fit in memory.
"""

from __future__ import annotations

import keras
import numpy as np

from deepfake_detector.metrics import choose_threshold, compute_metrics, numbers_only
from deepfake_detector.model import DeepfakeDetectorModel
from deepfake_detector.pipeline import SplitSource, images_only, make_dataset


def predict_scores(model: keras.Model, source: SplitSource, batch_size: int = 128) -> np.ndarray:
    """Model outputs, P(class 1), for every image of ``source`` in order (P(fake) in ``TRAINING_CLASS_ORDER``).

    The images stream from ``source`` (a split's cache), a batch at a time.
    """
    dataset = images_only(make_dataset(source, batch_size, training=False))
    return model.predict(dataset, verbose=0).ravel().astype(np.float64)


def choose_threshold_and_measure(detector_model: DeepfakeDetectorModel, validation: SplitSource, test: SplitSource,
                                 rule: str) -> tuple[float, dict, np.ndarray]:  # fmt: skip
    """The decision threshold chosen on Validation by ``rule``, both splits' metrics at it, and
    Test's P(fake) scores.

    Both splits stream from their sources. Test is scored once, after the choice.
    """

    def fake_probability(source):
        return detector_model.fake_probability_of(predict_scores(detector_model.model, source))

    val_scores = fake_probability(validation)
    threshold = choose_threshold(validation.labels, val_scores, rule)
    test_scores = fake_probability(test)
    test_metrics = compute_metrics(test.labels, test_scores, threshold)
    val_metrics = compute_metrics(validation.labels, val_scores, threshold)
    return threshold, {"validation": numbers_only(val_metrics), "test": numbers_only(test_metrics)}, test_scores

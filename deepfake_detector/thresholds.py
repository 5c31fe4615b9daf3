"""The decision threshold of a trained network, chosen on Validation, and both splits measured at it.

Used at the end of a training run and when a saved model is exported flip-averaged: the
network's scores stream from a split's cache (:mod:`deepfake_detector.cache`), a batch at a
time, so no split needs to fit in memory.
"""

from __future__ import annotations

import keras
import numpy as np

from deepfake_detector.metrics import choose_threshold, compute_metrics, numbers_only, source_weights
from deepfake_detector.model import DeepfakeDetectorModel
from deepfake_detector.pipeline import SplitSource, images_only, make_dataset


def predict_scores(model: keras.Model, source: SplitSource, batch_size: int = 128) -> np.ndarray:
    """Model outputs, P(class 1), for every image of ``source`` in order (P(fake) in ``TRAINING_CLASS_ORDER``).

    The images stream from ``source`` (a split's cache), a batch at a time.
    """
    dataset = images_only(make_dataset(source, batch_size, training=False))
    return model.predict(dataset, verbose=0).ravel().astype(np.float64)


def choose_threshold_and_measure(
    detector_model: DeepfakeDetectorModel, validation: SplitSource, test: SplitSource, rule: str
) -> tuple[float, dict, np.ndarray]:
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


def choose_threshold_and_measure_sources(
    detector_model: DeepfakeDetectorModel, validations: dict[str, SplitSource], tests: dict[str, SplitSource], rule: str
):
    """Several sources: the threshold chosen by ``rule`` on the pooled Validation scores, each source
    counted alike (:func:`~deepfake_detector.metrics.source_weights`), and every source's metrics at it.

    Returns the threshold, ``{"validation": pooled, "test": pooled, "sources": {name: {"validation",
    "test"}}}`` (pooled: every image once), and the pooled Test labels and P(fake) scores.
    """

    def fake_probability(source):
        return detector_model.fake_probability_of(predict_scores(detector_model.model, source))

    val_scores = {name: fake_probability(source) for name, source in validations.items()}
    val_labels = [validations[name].labels for name in val_scores]
    threshold = choose_threshold(
        np.concatenate(val_labels),
        np.concatenate(list(val_scores.values())),
        rule,
        sample_weight=source_weights(val_labels),
    )
    test_scores = {name: fake_probability(source) for name, source in tests.items()}
    measured = {"sources": {}}
    for name in tests:
        measured["sources"][name] = {
            split: numbers_only(compute_metrics(sources[name].labels, scores[name], threshold))
            for split, sources, scores in (("validation", validations, val_scores), ("test", tests, test_scores))
        }
    pooled_test = np.concatenate([tests[name].labels for name in tests]), np.concatenate(list(test_scores.values()))
    measured["validation"] = numbers_only(
        compute_metrics(np.concatenate(val_labels), np.concatenate(list(val_scores.values())), threshold)
    )
    measured["test"] = numbers_only(compute_metrics(*pooled_test, threshold))
    return threshold, measured, *pooled_test

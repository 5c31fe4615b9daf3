"""Metrics of a set of fake probabilities against their labels, computed with scikit-learn.

``fake`` is the positive class throughout: ``y_true`` is 1 for fake, ``fake_probability``
is the score. Hand-written metric code is avoided on purpose. Also the decision threshold's
choice (:func:`choose_threshold`, by a rule in ``recipes.THRESHOLD_RULES``, whose entries name
their implementations here) and the original tutorial's four numbers (:func:`tutorial_metrics`).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from deepfake_detector import labels
from deepfake_detector.recipes import THRESHOLD_RULES, TrainConfig

METRIC_KEYS = (
    "n_real",
    "n_fake",
    "threshold",
    "accuracy",
    "balanced_accuracy",
    "accuracy_at_0_5",
    "balanced_accuracy_at_0_5",
    "precision",
    "recall",
    "f1",
    "real_accuracy",
    "fake_accuracy",
    "roc_auc",
    "average_precision",
    "eer",
    "tpr_at_fpr_1",
    "tpr_at_fpr_5",
    "log_loss",
    "confusion_matrix",
    "notes",
)
#: The keys of a metrics dict that are not numbers.
DETAIL_KEYS = ("confusion_matrix", "notes")


def numbers_only(metrics: dict) -> dict:
    """A metrics dict without its :data:`DETAIL_KEYS`, as a saved model's metadata keeps it."""
    return {key: value for key, value in metrics.items() if key not in DETAIL_KEYS}


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def log_loss(y_true: np.ndarray, fake_probability: np.ndarray) -> float:
    """Binary cross-entropy, with scores clipped off 0 and 1 as Keras's loss clips them."""
    return float(skm.log_loss(y_true, np.clip(fake_probability, 1e-7, 1 - 1e-7), labels=[0, 1]))


def roc_points(y_true: np.ndarray, fake_probability: np.ndarray, sample_weight: np.ndarray | None = None):
    """False and true positive rates and thresholds (fake positive), each image weighted by ``sample_weight``."""
    return skm.roc_curve(y_true, fake_probability, pos_label=1, sample_weight=sample_weight, drop_intermediate=False)


def _cut_between(thresholds: np.ndarray, i: int) -> float:
    """A threshold with the same decisions as ``thresholds[i]`` but centred in its gap.

    Any cut between ``thresholds[i]`` and the next lower score classifies alike; the middle
    of that gap is the least fragile choice (with perfectly separated scores it falls
    between the highest real and the lowest fake score, not on the lowest fake).
    """
    high = min(float(thresholds[i]), 1.0)
    low = float(thresholds[i + 1]) if i + 1 < len(thresholds) else high
    return float(min(max((high + low) / 2.0, 0.0), 1.0))


def equal_error_rate(
    y_true: np.ndarray, fake_probability: np.ndarray, sample_weight: np.ndarray | None = None
) -> tuple[float, float]:
    """(EER, threshold at the EER): where the false positive and false negative rates meet."""
    fpr, tpr, thresholds = roc_points(y_true, fake_probability, sample_weight)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0), _cut_between(thresholds, i)


def tpr_at_fpr(y_true: np.ndarray, fake_probability: np.ndarray, max_fpr: float) -> float:
    """Highest share of fakes caught while at most ``max_fpr`` of real images are flagged."""
    fpr, tpr, _ = roc_points(y_true, fake_probability)
    allowed = fpr <= max_fpr + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def source_weights(labels_by_source: list[np.ndarray]) -> np.ndarray:
    """Sample weights for pooled scores that count every source alike within each class:
    ``1 / n`` for an image of a class with ``n`` images in its source."""
    weights = []
    for source_labels in labels_by_source:
        w = np.zeros(len(source_labels))
        for label in np.unique(source_labels):
            chosen = source_labels == label
            w[chosen] = 1.0 / chosen.sum()
        weights.append(w)
    return np.concatenate(weights)


def equal_error_threshold(
    y_true: np.ndarray, fake_probability: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """The ``eer`` rule: the threshold where the two error rates are equal."""
    return equal_error_rate(y_true, fake_probability, sample_weight)[1]


def balanced_accuracy_threshold(
    y_true: np.ndarray, fake_probability: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """The ``balanced_accuracy`` rule: the score cut that maximises balanced accuracy."""
    fpr, tpr, thresholds = roc_points(y_true, fake_probability, sample_weight)
    i = int(np.argmax(tpr - fpr))  # balanced accuracy = (tpr + 1 - fpr) / 2
    return _cut_between(thresholds, i)


def choose_threshold(
    y_true: np.ndarray,
    fake_probability: np.ndarray,
    rule: str = TrainConfig.threshold_rule,
    sample_weight: np.ndarray | None = None,
) -> float:
    """A decision threshold from validation scores, by a rule of ``recipes.THRESHOLD_RULES``.

    ``sample_weight`` weighs the images (pooled sources counted alike: ``source_weights``).
    """
    choose = THRESHOLD_RULES.load(rule)
    y_true, fake_probability = np.asarray(y_true), np.asarray(fake_probability, np.float64)
    if len(np.unique(y_true)) < 2:
        raise ValueError("choosing a threshold needs both real and fake images")
    return choose(y_true, fake_probability, sample_weight)


def compute_metrics(y_true, fake_probability, threshold: float = 0.5) -> dict:
    """All metrics for one set of scores. With one class present, the rest are ``None`` and
    ``notes`` says why."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    scores = np.asarray(fake_probability, dtype=np.float64).ravel()
    if y_true.shape != scores.shape:
        raise ValueError(f"{y_true.size} labels but {scores.size} scores")
    predicted = (scores >= threshold).astype(np.int64)
    predicted_05 = (scores >= 0.5).astype(np.int64)
    real, fake = y_true == 0, y_true == 1
    result: dict = {key: None for key in METRIC_KEYS}
    notes = []
    result.update(
        n_real=int(real.sum()),
        n_fake=int(fake.sum()),
        threshold=float(threshold),
        accuracy=_rate(predicted == y_true),
        accuracy_at_0_5=_rate(predicted_05 == y_true),
        real_accuracy=_rate(predicted[real] == 0),
        fake_accuracy=_rate(predicted[fake] == 1),
        confusion_matrix={
            "labels": list(labels.TRAINING_CLASS_ORDER),
            "rows_true_columns_predicted": (
                skm.confusion_matrix(y_true, predicted, labels=[0, 1]).tolist() if y_true.size else [[0, 0], [0, 0]]
            ),
        },
    )
    if y_true.size == 0:
        notes.append("no images")
    elif real.any() and fake.any():
        result.update(
            balanced_accuracy=float(skm.balanced_accuracy_score(y_true, predicted)),
            balanced_accuracy_at_0_5=float(skm.balanced_accuracy_score(y_true, predicted_05)),
            precision=float(skm.precision_score(y_true, predicted, zero_division=0)),
            recall=float(skm.recall_score(y_true, predicted, zero_division=0)),
            f1=float(skm.f1_score(y_true, predicted, zero_division=0)),
            roc_auc=float(skm.roc_auc_score(y_true, scores)),
            average_precision=float(skm.average_precision_score(y_true, scores)),
            eer=equal_error_rate(y_true, scores)[0],
            tpr_at_fpr_1=tpr_at_fpr(y_true, scores, 0.01),
            tpr_at_fpr_5=tpr_at_fpr(y_true, scores, 0.05),
            log_loss=log_loss(y_true, scores),
        )
    else:
        if fake.any():
            result["recall"] = result["fake_accuracy"]  # recall is the share of fakes caught
            notes.append(
                "only fake images: accuracy (= recall) is the share called fake; precision, F1, balanced "
                "accuracy, ROC AUC, AP, EER and TPR@FPR need real images too"
            )
        else:
            notes.append(
                "only real images: accuracy is the share called real; precision, recall, F1, balanced "
                "accuracy, ROC AUC, AP, EER and TPR@FPR need fake images too"
            )
        result["log_loss"] = log_loss(y_true, scores)
    result["notes"] = notes
    return result


def tutorial_metrics(y_true, fake_probability) -> list[float]:
    """The original tutorial's ``evaluation metrics: [loss, accuracy, precision, recall]``: log-loss,
    then the rest at threshold 0.5, with fake as the positive class (the tutorial's was real)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    scores = np.asarray(fake_probability, dtype=np.float64).ravel()
    predicted = (scores >= 0.5).astype(np.int64)
    return [
        log_loss(y_true, scores),
        float(skm.accuracy_score(y_true, predicted)),
        float(skm.precision_score(y_true, predicted, zero_division=0)),
        float(skm.recall_score(y_true, predicted, zero_division=0)),
    ]


def format_table(rows: dict[str, dict], keys=None) -> str:
    """A plain-text table: one column per named metrics dict (e.g. clean, jpeg:50)."""
    keys = keys or [k for k in METRIC_KEYS if k not in DETAIL_KEYS]
    names = list(rows)
    width = max(len(k) for k in keys) + 2
    col = max([10] + [len(n) + 2 for n in names])
    lines = ["metric".ljust(width) + "".join(n.rjust(col) for n in names)]
    for key in keys:
        cells = []
        for name in names:
            value = rows[name].get(key)
            cells.append(
                ("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)).rjust(col)
            )
        lines.append(key.ljust(width) + "".join(cells))
    return "\n".join(lines)


#: The columns of a per-source table (``evaluate.py`` with several ``--data-dir``).
SOURCE_KEYS = (
    "n_real",
    "n_fake",
    "roc_auc",
    "average_precision",
    "accuracy",
    "real_accuracy",
    "fake_accuracy",
    "tpr_at_fpr_1",
)


def format_rows(rows: dict[str, dict], keys=SOURCE_KEYS) -> str:
    """A plain-text table with one row per named metrics dict (e.g. one per source, then pooled)."""
    first = max([6] + [len(name) + 2 for name in rows])
    col = max(len(key) for key in keys) + 2
    lines = ["source".ljust(first) + "".join(key.rjust(col) for key in keys)]
    for name, metrics in rows.items():
        cells = [metrics.get(key) for key in keys]
        lines.append(
            name.ljust(first)
            + "".join(
                ("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)).rjust(col)
                for value in cells
            )
        )
    return "\n".join(lines)

"""Metrics and plots on a folder of Real/Fake images, computed with scikit-learn.

``fake`` is the positive class throughout: ``y_true`` is 1 for fake, ``fake_probability``
is the score. Hand-written metric code is avoided on purpose.

:func:`evaluate_folder` scores a folder (clean and, optionally, perturbed) and returns the
report that ``evaluate.py --json`` writes; :func:`write_plots` draws ROC, confusion matrix
and score histogram.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from sklearn import metrics as skm
from tqdm.auto import tqdm

from deepfake_detector import data, labels
from deepfake_detector.data import DatasetError
from deepfake_detector.perturbations import Perturbation, parse_spec
from deepfake_detector.preprocessing import ImageError, load_image, open_image

if TYPE_CHECKING:  # detector imports TensorFlow; evaluation itself does not need it
    from deepfake_detector.detector import Detector

log = logging.getLogger(__name__)

#: Keys of a metrics dict, in the order the table prints them (README documents each).
METRIC_KEYS = (
    "n_real", "n_fake", "threshold",
    "accuracy", "balanced_accuracy", "accuracy_at_0_5", "balanced_accuracy_at_0_5",
    "precision", "recall", "f1", "real_accuracy", "fake_accuracy",
    "roc_auc", "average_precision", "eer", "tpr_at_fpr_1", "tpr_at_fpr_5", "log_loss",
    "confusion_matrix", "notes",
)  # fmt: skip


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def roc_points(y_true: np.ndarray, fake_probability: np.ndarray):
    """False and true positive rates and thresholds (fake positive)."""
    return skm.roc_curve(y_true, fake_probability, pos_label=1, drop_intermediate=False)


def _cut_between(thresholds: np.ndarray, i: int) -> float:
    """A threshold with the same decisions as ``thresholds[i]`` but centred in its gap.

    Any cut between ``thresholds[i]`` and the next lower score classifies alike; the middle
    of that gap is the least fragile choice (with perfectly separated scores it falls
    between the highest real and the lowest fake score, not on the lowest fake).
    """
    high = min(float(thresholds[i]), 1.0)
    low = float(thresholds[i + 1]) if i + 1 < len(thresholds) else high
    return float(min(max((high + low) / 2.0, 0.0), 1.0))


def equal_error_rate(y_true: np.ndarray, fake_probability: np.ndarray) -> tuple[float, float]:
    """(EER, threshold at the EER): where the false positive and false negative rates meet."""
    fpr, tpr, thresholds = roc_points(y_true, fake_probability)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0), _cut_between(thresholds, i)


def tpr_at_fpr(y_true: np.ndarray, fake_probability: np.ndarray, max_fpr: float) -> float:
    """Highest share of fakes caught while at most ``max_fpr`` of real images are flagged."""
    fpr, tpr, _ = roc_points(y_true, fake_probability)
    allowed = fpr <= max_fpr + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


#: How a decision threshold can be chosen on Validation (``train.py --threshold-rule``).
THRESHOLD_RULES = ("eer", "balanced_accuracy")


def choose_threshold(y_true: np.ndarray, fake_probability: np.ndarray, rule: str = "eer") -> float:
    """A decision threshold from validation scores.

    ``eer`` puts it where the two error rates are equal; ``balanced_accuracy`` picks the
    score cut that maximises balanced accuracy.
    """
    y_true, fake_probability = np.asarray(y_true), np.asarray(fake_probability, np.float64)
    if len(np.unique(y_true)) < 2:
        raise ValueError("choosing a threshold needs both real and fake images")
    if rule == "eer":
        return equal_error_rate(y_true, fake_probability)[1]
    if rule == "balanced_accuracy":
        fpr, tpr, thresholds = roc_points(y_true, fake_probability)
        i = int(np.argmax(tpr - fpr))  # balanced accuracy = (tpr + 1 - fpr) / 2
        return _cut_between(thresholds, i)
    raise ValueError(f"unknown threshold rule {rule!r}; use one of {', '.join(THRESHOLD_RULES)}")


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
            log_loss=float(skm.log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
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
        result["log_loss"] = float(skm.log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    result["notes"] = notes
    return result


def tutorial_metrics(y_true, fake_probability) -> list[float]:
    """The original tutorial's ``evaluation metrics: [loss, accuracy, precision, recall]``: log-loss,
    then the rest at threshold 0.5, with fake as the positive class (the tutorial's was real)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    scores = np.asarray(fake_probability, dtype=np.float64).ravel()
    predicted = (scores >= 0.5).astype(np.int64)
    return [
        float(skm.log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        float(skm.accuracy_score(y_true, predicted)),
        float(skm.precision_score(y_true, predicted, zero_division=0)),
        float(skm.recall_score(y_true, predicted, zero_division=0)),
    ]


def format_table(rows: dict[str, dict], keys=None) -> str:
    """A plain-text table: one column per named metrics dict (e.g. clean, jpeg:50)."""
    keys = keys or [k for k in METRIC_KEYS if k not in ("confusion_matrix", "notes")]
    names = list(rows)
    width = max(len(k) for k in keys) + 2
    col = max([10] + [len(n) + 2 for n in names])
    lines = ["metric".ljust(width) + "".join(n.rjust(col) for n in names)]
    for key in keys:
        cells = []
        for name in names:
            value = rows[name].get(key)
            cells.append(("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)).rjust(col))
        lines.append(key.ljust(width) + "".join(cells))
    return "\n".join(lines)


def is_finite(value) -> bool:
    return value is not None and math.isfinite(value)


# ----------------------------------------------------------------------------- folders

#: Name of the unperturbed condition (the first column of the table).
CLEAN = "clean"


def resolve_folder(data_dir: str | Path, split: str = "Test") -> tuple[Path, str | None]:
    """The folder to evaluate and its split: ``data_dir`` itself when it holds ``Real/`` or
    ``Fake/``, else ``split`` of the dataset under it (found as ``train.py`` finds it).

    Raises:
        DatasetError: no such folder, or no Real/ or Fake/ folder where one was looked for.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: no such folder")
    if _has_class_folder(data_dir):
        return data_dir, None
    if split not in data.SPLITS:
        raise DatasetError(f"unknown split {split!r}; use {', '.join(data.SPLITS)}")
    candidates = [data_dir / split]
    try:
        candidates.append(data.find_dataset_root(data_dir) / split)
    except DatasetError:
        pass  # no full Train/Validation/Test layout: only data_dir/split can hold the split
    for candidate in candidates:
        if _has_class_folder(candidate):
            return candidate, split
    raise DatasetError(
        f"no Real/ or Fake/ folder under {data_dir} nor under a {split}/ split in it (looked two levels down)"
    )


def _has_class_folder(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in labels.FOLDER_NAMES.values())


def _labelled_files(folder: Path) -> tuple[list[str], np.ndarray]:
    """Image files under ``folder/Real`` and ``folder/Fake`` (either may be missing) and labels."""
    if not _has_class_folder(folder):
        raise DatasetError(f"no Real/ or Fake/ folder under {folder}")
    paths, targets = data.labelled_files(folder, require_both=False)
    return paths, np.asarray(targets, np.int64)


@dataclass
class FolderScores:
    """``fake_probability`` of every readable image of a folder, per condition."""

    paths: list[str]
    y_true: np.ndarray
    fake_probability: dict[str, np.ndarray]  # condition name -> scores; ``clean`` first
    skipped: dict[str, str]  # path -> why it could not be read


def score_folder(
    detector: "Detector",
    folder: str | Path,
    perturbations: Sequence[Perturbation] = (),
    batch_size: int = 64,
    workers: int | None = None,
) -> FolderScores:
    """Score the images of ``folder`` clean and under each perturbation.

    Each file is read and decoded once; the perturbations act on that decoded image and every
    condition goes through ``preprocessing.load_image``. Decoding runs on a thread pool (PIL
    releases the GIL) one batch ahead of the model (:func:`deepfake_detector.data.decoded_batches`),
    so memory stays at about two batches.
    """
    folder = Path(folder)
    paths, targets = _labelled_files(folder)
    conditions: list[Perturbation | None] = [None, *perturbations]
    names = [CLEAN, *(p.name for p in perturbations)]
    size, resample = detector.image_size, detector.resample

    def prepare(path: str):
        try:
            original = open_image(Path(path).read_bytes())
            inputs = [load_image(original if c is None else c.apply(original), size, resample) for c in conditions]
            return np.stack(inputs), None
        except (ImageError, OSError) as error:
            return None, str(error)

    scores = np.zeros((len(names), len(paths)))
    kept = np.zeros(len(paths), bool)
    skipped: dict[str, str] = {}
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    desc = f"scoring {folder.name}" + (f" ({len(names)} conditions)" if len(names) > 1 else "")
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for batch in data.decoded_batches(range(len(paths)), lambda i: prepare(paths[i]), batch_size, workers):
            ready, inputs = [], []
            for i, (images, reason) in batch:
                if images is None:
                    skipped[paths[i]] = reason
                else:
                    ready.append(i)
                    inputs.append(images)
            if ready:
                stacked = np.stack(inputs, axis=1)  # conditions x batch x S x S x 3
                for c, images in enumerate(stacked):
                    scores[c, ready] = detector.scores(images)
                kept[ready] = True
            bar.update(len(batch))
    if skipped:
        log.warning("%s: skipped %d unreadable image file(s)", folder, len(skipped))
    if not kept.any():
        raise DatasetError(f"none of the {len(paths)} image file(s) under {folder} can be read")
    return FolderScores(
        paths=[p for p, ok in zip(paths, kept) if ok],
        y_true=targets[kept],
        fake_probability={name: scores[c, kept] for c, name in enumerate(names)},
        skipped=skipped,
    )


def evaluate_folder(
    detector: "Detector",
    folder: str | Path,
    perturbations: Sequence[Perturbation] | str | None = None,
    batch_size: int = 64,
    plots_dir: str | Path | None = None,
) -> dict:
    """Metrics of ``detector`` on ``folder/Real`` and ``folder/Fake`` at its stored threshold.

    Args:
        perturbations: conditions to score besides the clean images (a spec string such as
            ``"jpeg:50;blur:1"`` is parsed with :func:`perturbations.parse_spec`).
        plots_dir: if given, :func:`write_plots` draws the clean scores there.

    Returns:
        The JSON report: ``model``, ``data_dir``, ``n_skipped``, ``skipped`` (path and reason
        per unreadable file), every key of :data:`METRIC_KEYS` for the clean images, and
        ``perturbations`` ({name: metrics}) when perturbations were asked for.
    """
    if isinstance(perturbations, str):
        perturbations = parse_spec(perturbations)
    perturbations = list(perturbations or [])
    scored = score_folder(detector, folder, perturbations, batch_size=batch_size)
    threshold = detector.threshold
    report = {
        "model": detector.name,
        "data_dir": str(folder),
        "n_skipped": len(scored.skipped),
        "skipped": [{"path": path, "reason": reason} for path, reason in scored.skipped.items()],
        **compute_metrics(scored.y_true, scored.fake_probability[CLEAN], threshold),
    }
    if perturbations:
        report["perturbations"] = {
            name: compute_metrics(scored.y_true, fake_probability, threshold)
            for name, fake_probability in scored.fake_probability.items()
            if name != CLEAN
        }
    if plots_dir is not None:
        write_plots(scored.y_true, scored.fake_probability[CLEAN], threshold, plots_dir, title=detector.name)
    return report


# ----------------------------------------------------------------------------- plots


def write_plots(
    y_true, fake_probability, threshold: float, out_dir: str | Path, title: str | None = None
) -> list[Path]:
    """Write ``roc.png`` (needs both classes), ``confusion_matrix.png`` and ``score_histogram.png``.

    Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no display, no
    global backend switch, safe in a server.

    Returns:
        The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y_true = np.asarray(y_true, np.int64).ravel()
    scores = np.asarray(fake_probability, np.float64).ravel()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real, fake = y_true == 0, y_true == 1
    suffix = f" - {title}" if title else ""
    written = []

    def save(figure: Figure, name: str) -> None:
        FigureCanvasAgg(figure)
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=100)
        written.append(out_dir / name)

    if real.any() and fake.any():
        figure = Figure(figsize=(5, 5))
        ax = figure.subplots()
        fpr, tpr, _ = roc_points(y_true, scores)
        ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {skm.roc_auc_score(y_true, scores):.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="chance")
        ax.plot(
            (scores[real] >= threshold).mean(), (scores[fake] >= threshold).mean(), "o", color="black",
            label=f"threshold {threshold:.3f}",
        )  # fmt: skip
        ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
               xlim=(0, 1), ylim=(0, 1.01), title=f"ROC, fake positive{suffix}")  # fmt: skip
        ax.legend(loc="lower right")
        save(figure, "roc.png")
    else:
        log.warning("roc.png not written: a ROC curve needs both real and fake images")

    figure = Figure(figsize=(4.5, 4))
    ax = figure.subplots()
    matrix = skm.confusion_matrix(y_true, (scores >= threshold).astype(np.int64), labels=[0, 1])
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=14)  # fmt: skip
    ticks = list(labels.TRAINING_CLASS_ORDER)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=ticks, yticklabels=ticks, xlabel="predicted",
           ylabel="true", title=f"confusion matrix at {threshold:.3f}{suffix}")  # fmt: skip
    save(figure, "confusion_matrix.png")

    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    for mask, name in ((real, labels.REAL), (fake, labels.FAKE)):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, label=f"{name} (n={int(mask.sum())})")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="fake_probability", ylabel="images", xlim=(0, 1), title=f"scores per class{suffix}")
    ax.legend()
    save(figure, "score_histogram.png")
    return written

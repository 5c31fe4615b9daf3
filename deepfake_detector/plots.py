"""Figures, drawn on matplotlib's Agg canvas directly, without pyplot: no display, no global
backend switch, safe in a server.

:func:`write_plots` draws what ``evaluate.py --plots`` writes (ROC, confusion matrix, score
histogram); :func:`write_training_curves` the loss, accuracy and AUC per epoch saved beside a
trained model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

from deepfake_detector import labels, metrics

log = logging.getLogger(__name__)


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write_training_curves(history: dict, path: str | Path) -> None:
    """Loss, accuracy and AUC per epoch, train and validation, side by side in one image."""
    figure = Figure(figsize=(13, 3.6))
    for ax, key in zip(figure.subplots(1, 3), ("loss", "accuracy", "auc")):
        if key in history:
            ax.plot(range(1, len(history[key]) + 1), history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(range(1, len(history[f"val_{key}"]) + 1), history[f"val_{key}"], label="validation")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    _save(figure, Path(path))


def write_plots(
    y_true, fake_probability, threshold: float, out_dir: str | Path, title: str | None = None
) -> list[Path]:
    """Write ``roc.png`` (needs both classes), ``confusion_matrix.png`` and ``score_histogram.png``.

    Returns:
        The files written.
    """
    y_true = np.asarray(y_true, np.int64).ravel()
    scores = np.asarray(fake_probability, np.float64).ravel()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f" - {title}" if title else ""
    figures = {}
    if (y_true == 0).any() and (y_true == 1).any():
        figures["roc.png"] = roc_figure(y_true, scores, threshold, suffix)
    else:
        log.warning("roc.png not written: a ROC curve needs both real and fake images")
    figures["confusion_matrix.png"] = confusion_figure(y_true, scores, threshold, suffix)
    figures["score_histogram.png"] = histogram_figure(y_true, scores, threshold, suffix)
    for name, figure in figures.items():
        _save(figure, out_dir / name)
    return [out_dir / name for name in figures]


def roc_figure(y_true: np.ndarray, scores: np.ndarray, threshold: float, suffix: str) -> Figure:
    real, fake = y_true == 0, y_true == 1
    figure = Figure(figsize=(5, 5))
    ax = figure.subplots()
    fpr, tpr, _ = metrics.roc_points(y_true, scores)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {skm.roc_auc_score(y_true, scores):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="chance")
    ax.plot(
        (scores[real] >= threshold).mean(),
        (scores[fake] >= threshold).mean(),
        "o",
        color="black",
        label=f"threshold {threshold:.3f}",
    )
    ax.set(
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake caught)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"ROC, fake positive{suffix}",
    )
    ax.legend(loc="lower right")
    return figure


def confusion_figure(y_true: np.ndarray, scores: np.ndarray, threshold: float, suffix: str) -> Figure:
    figure = Figure(figsize=(4.5, 4))
    ax = figure.subplots()
    matrix = skm.confusion_matrix(y_true, (scores >= threshold).astype(np.int64), labels=[0, 1])
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(column, row, str(count), ha="center", va="center", color=color, fontsize=14)
    ticks = list(labels.TRAINING_CLASS_ORDER)
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=ticks,
        yticklabels=ticks,
        xlabel="predicted",
        ylabel="true",
        title=f"confusion matrix at {threshold:.3f}{suffix}",
    )
    return figure


def histogram_figure(y_true: np.ndarray, scores: np.ndarray, threshold: float, suffix: str) -> Figure:
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    for mask, name in ((y_true == 0, labels.REAL), (y_true == 1, labels.FAKE)):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, label=f"{name} (n={int(mask.sum())})")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="fake_probability", ylabel="images", xlim=(0, 1), title=f"scores per class{suffix}")
    ax.legend()
    return figure

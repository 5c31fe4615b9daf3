"""A model measured on a folder of Real/ and Fake/ images, clean and under perturbations.

:func:`evaluate_folder` scores a folder (:func:`score_folder`, each file decoded once, every
condition through the one preprocessing path) and returns the report ``evaluate.py --json``
writes: every metric of :mod:`deepfake_detector.metrics` per condition, and the files skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from deepfake_detector import data, labels
from deepfake_detector.decoding import decoded_batches
from deepfake_detector.errors import DatasetError, ImageError
from deepfake_detector.metrics import compute_metrics
from deepfake_detector.perturbations import Perturbation, parse_spec
from deepfake_detector.plots import write_plots
from deepfake_detector.preprocessing import open_image

if TYPE_CHECKING:  # detector imports TensorFlow; evaluation itself does not need it
    from deepfake_detector.detector import Detector

log = logging.getLogger(__name__)

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
    paths, targets = labels.labelled_files(folder, require_both=False)
    return paths, np.asarray(targets, np.int64)


@dataclass
class FolderScores:
    """``fake_probability`` of every readable image of a folder, per condition."""

    paths: list[str]
    y_true: np.ndarray
    fake_probability: dict[str, np.ndarray]  # condition name -> scores; ``clean`` first
    skipped: dict[str, str]  # path -> why it could not be read


def score_folder(
    detector: Detector,
    folder: str | Path,
    perturbations: Sequence[Perturbation] = (),
    batch_size: int = 64,
    workers: int | None = None,
) -> FolderScores:
    """Score the images of ``folder`` clean and under each perturbation.

    Each file is read and decoded once; the perturbations act on that decoded image and every
    condition becomes what the model was trained on (``Detector.model_input``: the whole image,
    or its largest face framed as the page frames it). Decoding runs on a thread pool (PIL
    releases the GIL) one batch ahead of the model (:func:`deepfake_detector.decoding.decoded_batches`),
    so memory stays at about two batches.
    """
    folder = Path(folder)
    paths, targets = _labelled_files(folder)
    conditions: list[Perturbation | None] = [None, *perturbations]
    names = [CLEAN, *(p.name for p in perturbations)]

    def prepare(path: str):
        try:
            original = open_image(Path(path).read_bytes())
            inputs = [
                detector.model_input(original if c is None else open_image(c.apply(original))) for c in conditions
            ]
            return np.stack(inputs), None
        except (ImageError, OSError) as error:
            return None, str(error)

    scores = np.zeros((len(names), len(paths)))
    kept = np.zeros(len(paths), bool)
    skipped: dict[str, str] = {}
    desc = f"scoring {folder.name}" + (f" ({len(names)} conditions)" if len(names) > 1 else "")
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for batch in decoded_batches(range(len(paths)), lambda i: prepare(paths[i]), batch_size, workers):
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
    detector: Detector,
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
        per unreadable file), every key of :data:`deepfake_detector.metrics.METRIC_KEYS` for the clean images, and
        ``perturbations`` ({name: metrics}) when perturbations were asked for.
    """
    perturbations = _conditions(perturbations)
    scored = score_folder(detector, folder, perturbations, batch_size=batch_size)
    report = measure(detector, folder, scored)
    if plots_dir is not None:
        write_plots(scored.y_true, scored.fake_probability[CLEAN], detector.threshold, plots_dir, title=detector.name)
    return report


def evaluate_sources(
    detector: Detector,
    folders: dict[str, str | Path],
    perturbations: Sequence[Perturbation] | str | None = None,
    batch_size: int = 64,
    plots_dir: str | Path | None = None,
) -> dict:
    """Several folders, each a source (``evaluate.py --data-dir A --data-dir B``): one report per
    source, as :func:`evaluate_folder` gives, and a pooled one over every image of them all.

    Returns ``{"model", "threshold", "sources": {name: report}, "pooled": report}``; with
    ``plots_dir``, each source's plots go to a sub-folder named after it.
    """
    perturbations = _conditions(perturbations)
    scored = {
        name: score_folder(detector, folder, perturbations, batch_size=batch_size) for name, folder in folders.items()
    }
    sources = {name: measure(detector, folders[name], scores) for name, scores in scored.items()}
    pooled = FolderScores(
        paths=[path for scores in scored.values() for path in scores.paths],
        y_true=np.concatenate([scores.y_true for scores in scored.values()]),
        fake_probability={
            condition: np.concatenate([scores.fake_probability[condition] for scores in scored.values()])
            for condition in next(iter(scored.values())).fake_probability
        },
        skipped={path: reason for scores in scored.values() for path, reason in scores.skipped.items()},
    )
    if plots_dir is not None:
        for name, scores in scored.items():
            write_plots(
                scores.y_true,
                scores.fake_probability[CLEAN],
                detector.threshold,
                Path(plots_dir) / name,
                title=f"{detector.name} on {name}",
            )
    pooled_report = measure(detector, ", ".join(str(folder) for folder in folders.values()), pooled)
    return {"model": detector.name, "threshold": detector.threshold, "sources": sources, "pooled": pooled_report}


def _conditions(perturbations: Sequence[Perturbation] | str | None) -> list[Perturbation]:
    """The perturbations to score besides the clean images (a spec string is parsed)."""
    if isinstance(perturbations, str):
        perturbations = parse_spec(perturbations)
    return list(perturbations or [])


def measure(detector: Detector, data_dir: str | Path, scored: FolderScores) -> dict:
    """The report of one set of scores at ``detector``'s threshold: every metric clean and under each perturbation."""
    threshold = detector.threshold
    report = {
        "model": detector.name,
        "data_dir": str(data_dir),
        "n_skipped": len(scored.skipped),
        "skipped": [{"path": path, "reason": reason} for path, reason in scored.skipped.items()],
        **compute_metrics(scored.y_true, scored.fake_probability[CLEAN], threshold),
    }
    if len(scored.fake_probability) > 1:
        report["perturbations"] = {
            name: compute_metrics(scored.y_true, fake_probability, threshold)
            for name, fake_probability in scored.fake_probability.items()
            if name != CLEAN
        }
    return report


# ----------------------------------------------------------------------------- videos


def has_videos(folder: str | Path) -> bool:
    """Whether ``folder``'s Real/ or Fake/ holds videos (``evaluate.py`` then scores videos)."""
    from deepfake_detector.video import VIDEO_SUFFIXES

    folders = [Path(folder) / name for name in labels.FOLDER_NAMES.values()]
    return any(
        p.suffix.lower() in VIDEO_SUFFIXES for class_dir in folders if class_dir.is_dir() for p in class_dir.rglob("*")
    )


def evaluate_video_folder(detector: Detector, folder: str | Path, frames: int | None = None) -> dict:
    """Video-level metrics on ``folder/Real`` and ``folder/Fake`` videos: each video's score is its
    verdict (its highest track, :func:`deepfake_detector.video.score_video`), at the model's threshold.

    Returns:
        The report: ``model``, ``data_dir``, ``media`` ("video"), ``frames`` sampled per video,
        ``n_videos``, ``n_skipped``, ``skipped``, and every key of :data:`deepfake_detector.metrics.METRIC_KEYS`.
    """
    from deepfake_detector.errors import VideoError
    from deepfake_detector.video import DEFAULT_FRAMES, VIDEO_SUFFIXES, score_video

    frames = frames or DEFAULT_FRAMES
    folder = Path(folder)
    paths, targets = labels.labelled_files(folder, require_both=False, suffixes=VIDEO_SUFFIXES)
    scores, kept, skipped = [], [], {}
    for path, target in tqdm(list(zip(paths, targets)), desc=f"scoring {folder.name}", unit="video"):
        try:
            scores.append(score_video(detector, Path(path), frames=frames).prediction.fake_probability)
            kept.append(target)
        except (VideoError, OSError) as error:
            skipped[path] = str(error)
    if not kept:
        raise DatasetError(f"none of the {len(paths)} video(s) under {folder} can be read")
    return {
        "model": detector.name,
        "data_dir": str(folder),
        "media": "video",
        "frames": frames,
        "n_videos": len(kept),
        "n_skipped": len(skipped),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped.items()],
        **compute_metrics(np.asarray(kept), np.asarray(scores), detector.threshold),
    }

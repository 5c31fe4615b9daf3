"""Scoring many files: decode in a thread pool while the model scores the previous batch.

Memory stays flat however many files are scored: at most two batches of decoded images
are alive at once, and rows are yielded as soon as their batch is scored.

With a face finder (the CLI's default) each file gives one row per face, with its index and
box; a file with no face gives one row for the whole image, with both left empty. The
image's verdict is the highest ``fake_probability`` among its rows.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from deepfake_detector.decoding import decoded_batches
from deepfake_detector.detector import Detector
from deepfake_detector.errors import ImageError
from deepfake_detector.faces import FaceBox, FaceFinder, model_inputs
from deepfake_detector.preprocessing import IMAGE_SUFFIXES, load_image, open_image

FIELDS = ("path", "face_index", "box", "label", "fake_probability", "error")


@dataclass
class Row:
    path: str
    label: str = ""
    fake_probability: float | None = None
    error: str = ""
    face_index: int | None = None  # position in the image's faces, left to right; None: whole image
    box: list[int] | None = None  # [x, y, width, height] in the image's pixels


def expand_paths(inputs: Iterable[str | Path]) -> Iterator[str]:
    """Files as given, and image files under folders (recursively, sorted); missing paths too,
    so they are reported as errors rather than silently dropped."""
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        yield str(Path(root) / name)
        else:
            yield str(item)


def _decode(path: str, image_size: int, resample: str, finder: FaceFinder | None) -> tuple[np.ndarray | None, list[FaceBox] | None, str]:
    """(model inputs N x S x S x 3, face boxes or None for the whole image, error)."""
    try:
        if finder is None:
            return load_image(path, image_size, resample)[None], None, ""
        found = model_inputs(open_image(path), finder, image_size, resample=resample)
        return found.inputs, found.boxes or None, ""
    except FileNotFoundError:
        return None, None, "no such file"
    except IsADirectoryError:
        return None, None, "is a folder"
    except (ImageError, OSError) as error:
        return None, None, str(error)


def score_files(
    detector: Detector, paths: Iterable[str], batch_size: int = 64, workers: int | None = None,
    finder: FaceFinder | None = None,
) -> Iterator[Row]:  # fmt: skip
    """Yield :class:`Row` s in path order; unreadable files get ``error`` set.

    Without ``finder`` each path is one whole-image row; with one, each face is a row.
    """
    size, resample = detector.image_size, detector.resample
    for batch in decoded_batches(paths, lambda path: _decode(path, size, resample, finder), batch_size, workers):
        good = [inputs for _, (inputs, _, _) in batch if inputs is not None]
        scores = iter(_scores_in_chunks(detector, good, batch_size))
        for path, (inputs, boxes, error) in batch:
            if inputs is None:
                yield Row(path, error=error)
                continue
            for index in range(len(inputs)):
                prediction = detector.prediction_for(next(scores))
                row = Row(path, prediction.label, round(prediction.fake_probability, 6))
                if boxes is not None:
                    row.face_index, row.box = index, boxes[index].as_list()
                yield row


def _scores_in_chunks(detector: Detector, inputs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Scores of every input, at most ``batch_size`` per model call (faces can outnumber files)."""
    if not inputs:
        return np.empty(0)
    stacked = np.concatenate(inputs)
    return np.concatenate([detector.scores(stacked[i : i + batch_size]) for i in range(0, len(stacked), batch_size)])


class RowWriter:
    """Writes rows as CSV (``.csv``) or JSON lines (anything else), flushing as it goes."""

    def __init__(self, path: str | Path | None, stream=None):
        self._owned = path is not None
        self.file = open(path, "w", newline="") if path else stream
        self.jsonl = bool(path) and not str(path).lower().endswith(".csv")
        self.csv = None if self.jsonl else csv.DictWriter(self.file, fieldnames=FIELDS)
        if self.csv:
            self.csv.writeheader()

    def write(self, row: Row) -> None:
        record = {f: getattr(row, f) for f in FIELDS}
        if self.jsonl:
            self.file.write(json.dumps(record) + "\n")
        else:
            if row.box is not None:
                record["box"] = " ".join(str(v) for v in row.box)  # "x y width height"
            self.csv.writerow({k: "" if v is None else v for k, v in record.items()})

    def close(self) -> None:
        if self._owned:
            self.file.close()
        else:
            self.file.flush()

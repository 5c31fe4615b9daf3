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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfake_detector.decoding import decoded_batches
from deepfake_detector.detector import Detector
from deepfake_detector.errors import ImageError
from deepfake_detector.faces import FaceBox, FaceFinder, model_inputs
from deepfake_detector.preprocessing import IMAGE_SUFFIXES, load_image, open_image
from deepfake_detector.video import VideoScore

FIELDS = ("path", "face_index", "box", "label", "fake_probability", "error")
#: A video's rows: one per track (a face followed through the sampled frames), or one for the
#: whole frames when no face was found; ``--frames-csv`` has one per face per sampled frame.
TRACK_FIELDS = ("path", "track", "frames_seen", "first_s", "last_s", "label", "fake_probability", "error")
FRAME_FIELDS = ("path", "track", "frame", "time_s", "box", "label", "fake_probability")


@dataclass
class Row:
    path: str
    label: str = ""
    fake_probability: float | None = None
    error: str = ""
    face_index: int | None = None  # position in the image's faces, left to right; None: whole image
    box: list[int] | None = None  # [x, y, width, height] in the image's pixels


def expand_paths(inputs: Iterable[str | Path], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> Iterator[str]:
    """Files as given, and files with ``suffixes`` (images by default) under folders
    (recursively, sorted); missing paths too, so they are reported as errors rather than
    silently dropped."""
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in suffixes:
                        yield str(Path(root) / name)
        else:
            yield str(item)


def _decode(
    path: str, image_size: int, resample: str, finder: FaceFinder | None
) -> tuple[np.ndarray | None, list[FaceBox] | None, str]:
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
    detector: Detector,
    paths: Iterable[str],
    batch_size: int = 64,
    workers: int | None = None,
    finder: FaceFinder | None = None,
) -> Iterator[Row]:
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


def track_rows(path: str, analysis: VideoScore) -> list[dict]:
    """One :data:`TRACK_FIELDS` row per track of a scored video (one whole-frames row without faces)."""
    if not analysis.tracks:
        return [
            {
                "path": path,
                "frames_seen": len(analysis.frames),
                "label": analysis.prediction.label,
                "fake_probability": round(analysis.prediction.fake_probability, 6),
            }
        ]
    return [
        {
            "path": path,
            "track": index,
            "frames_seen": len(track.faces),
            "first_s": round(track.faces[0].time_s, 3),
            "last_s": round(track.faces[-1].time_s, 3),
            "label": track.prediction.label,
            "fake_probability": round(track.prediction.fake_probability, 6),
        }
        for index, track in enumerate(analysis.tracks)
    ]


def frame_rows(path: str, analysis: VideoScore) -> list[dict]:
    """One :data:`FRAME_FIELDS` row per face per sampled frame, in time order."""
    rows = [
        {
            "path": path,
            "track": index,
            "frame": face.frame,
            "time_s": round(face.time_s, 3),
            "box": face.face.box.as_list(),
            "label": face.face.prediction.label,
            "fake_probability": round(face.face.prediction.fake_probability, 6),
        }
        for index, track in enumerate(analysis.tracks)
        for face in track.faces
    ]
    return sorted(rows, key=lambda row: (row["time_s"], row["track"]))


class RowWriter:
    """Writes rows as CSV (``.csv``) or JSON lines (anything else), flushing as it goes.
    ``fields``: the columns (:data:`FIELDS` by default); rows are :class:`Row` s or dicts."""

    def __init__(self, path: str | Path | None, stream=None, fields: tuple[str, ...] = FIELDS):
        self._owned = path is not None
        self.file = open(path, "w", newline="") if path else stream
        self.jsonl = bool(path) and not str(path).lower().endswith(".csv")
        self.fields = fields
        self.csv = None if self.jsonl else csv.DictWriter(self.file, fieldnames=fields)
        if self.csv:
            self.csv.writeheader()

    def write(self, row: Row | dict) -> None:
        record = {f: row.get(f) if isinstance(row, dict) else getattr(row, f) for f in self.fields}
        if self.jsonl:
            self.file.write(json.dumps(record) + "\n")
        else:
            if record.get("box") is not None:
                record["box"] = " ".join(str(v) for v in record["box"])  # "x y width height"
            self.csv.writerow({k: "" if v is None else v for k, v in record.items()})

    def close(self) -> None:
        if self._owned:
            self.file.close()
        else:
            self.file.flush()

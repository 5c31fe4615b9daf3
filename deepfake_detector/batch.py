"""Scoring many files: decode in a thread pool while the model scores the previous batch.

Memory stays flat however many files are scored: at most two batches of decoded images
are alive at once, and rows are yielded as soon as their batch is scored.
"""

from __future__ import annotations

import csv
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from deepfake_detector.data import IMAGE_SUFFIXES
from deepfake_detector.detector import Detector
from deepfake_detector.preprocessing import ImageError, load_image

FIELDS = ("path", "label", "fake_probability", "error")


@dataclass
class Row:
    path: str
    label: str = ""
    fake_probability: float | None = None
    error: str = ""


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


def _decode(path: str, image_size: int):
    try:
        return load_image(path, image_size), ""
    except FileNotFoundError:
        return None, "no such file"
    except IsADirectoryError:
        return None, "is a folder"
    except (ImageError, OSError) as error:
        return None, str(error)


def score_files(detector: Detector, paths: Iterable[str], batch_size: int = 64, workers: int | None = None) -> Iterator[Row]:
    """Yield one :class:`Row` per path, in order; unreadable files get ``error`` set."""
    workers = workers or max(2, os.cpu_count() or 2)
    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit_batch() -> list[tuple[str, Future]]:
            batch = []
            for path in paths:
                batch.append((path, pool.submit(_decode, path, detector.image_size)))
                if len(batch) == batch_size:
                    break
            return batch

        pending = deque([submit_batch()])
        while pending[0]:
            pending.append(submit_batch())  # decode the next batch while this one is scored
            batch = pending.popleft()
            decoded = [(path, *future.result()) for path, future in batch]
            good = [image for _, image, _ in decoded if image is not None]
            scores = iter(detector.scores(np.stack(good)) if good else [])
            for path, image, error in decoded:
                if image is None:
                    yield Row(path, error=error)
                else:
                    prediction = detector.prediction_for(next(scores))
                    yield Row(path, prediction.label, round(prediction.fake_probability, 6))


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
            self.csv.writerow({k: "" if v is None else v for k, v in record.items()})

    def close(self) -> None:
        if self._owned:
            self.file.close()
        else:
            self.file.flush()

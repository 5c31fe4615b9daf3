"""Decoding many image files at once, on a thread pool, through the one preprocessing path.

PIL releases the GIL while it decodes and resizes, so threads decode in parallel;
:func:`decoded_batches` keeps the pool one batch ahead of whoever consumes the batches (a
model scoring them), so decoding overlaps with scoring and memory stays at two batches.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from deepfake_detector.errors import ImageError
from deepfake_detector.preprocessing import load_image

T = TypeVar("T")
R = TypeVar("R")

#: Most decoding threads by default: past this, memory bandwidth, not threads, limits decoding.
MAX_DEFAULT_THREADS = 8


def default_workers(processes: bool = False) -> int:
    """How many decoders to run: one process per CPU, or twice as many threads (a thread waits on
    file reads and on the GIL between images), at most :data:`MAX_DEFAULT_THREADS`."""
    cpus = os.cpu_count() or 1
    return cpus if processes else min(MAX_DEFAULT_THREADS, 2 * cpus)


def decode_images(paths: list[str], image_size: int, workers: int | None = None, desc: str = "decoding"):
    """Decode files into a uint8 array with the shared preprocessing; failures are returned.

    Returns:
        (images N'xSxSx3, indices of the decoded files in ``paths``, {path: reason} of failures)
    """

    def one(path):
        try:
            return load_image(path, image_size), None
        except (ImageError, OSError) as error:
            return None, str(error)

    # Filled in place: collecting a list and stacking it would need twice the memory.
    array = np.empty((len(paths), image_size, image_size, 3), np.uint8)
    kept, failures = [], {}
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for i, (image, error) in enumerate(
            tqdm(pool.map(one, paths), total=len(paths), desc=desc, unit="img", leave=False)
        ):
            if image is None:
                failures[paths[i]] = error
            else:
                array[len(kept)] = image
                kept.append(i)
    return array[: len(kept)], np.asarray(kept, np.int64), failures


def decoded_batches(
    items: Iterable[T], decode: Callable[[T], R], batch_size: int, workers: int | None = None
) -> Iterator[list[tuple[T, R]]]:
    """Batches of ``(item, decode(item))`` in order, decoded on a thread pool one batch ahead.

    While the caller scores one batch the next one decodes, so at most two batches are alive
    at once, however many items. ``decode`` should return its failures rather than raise them.
    """
    items = iter(items)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:

        def submit() -> list[tuple[T, Future]]:
            return [(item, pool.submit(decode, item)) for item in itertools.islice(items, batch_size)]

        pending = submit()
        while pending:
            current, pending = pending, submit()
            yield [(item, future.result()) for item, future in current]

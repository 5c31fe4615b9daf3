"""Batch scoring throughput and memory: ``score_files`` against ``model.predict`` in memory.

    python -m benchmarks.batch_scoring [--model PATH] [--images 2000] [--memory-images 10000]

Throughput: images/s of our file pipeline (decode in threads overlapping the model) versus
the model alone on the same images already decoded in memory (median of 3 runs each).
Memory: peak RSS after scoring --images files and again after --memory-images files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from benchmarks.common import face_files, peak_rss_mb
from deepfake_detector.batch import score_files
from deepfake_detector.decoding import decode_images
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--memory-images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    detector = Detector.from_path(args.model)
    files = [str(p) for p in face_files("Test")]
    paths = [files[i % len(files)] for i in range(args.images)]
    decoded, _, _ = decode_images(paths, detector.image_size)

    def in_memory():
        start = time.perf_counter()
        detector.model.predict(decoded.astype(np.float32), batch_size=args.batch_size, verbose=0)
        return len(decoded) / (time.perf_counter() - start)

    def from_files():
        start = time.perf_counter()
        rows = sum(1 for _ in score_files(detector, paths, args.batch_size))
        return rows / (time.perf_counter() - start)

    in_memory()  # warm-up
    memory_rates, file_rates = [], []
    for _ in range(args.runs):
        memory_rates.append(in_memory())
        file_rates.append(from_files())
    memory_rate, file_rate = statistics.median(memory_rates), statistics.median(file_rates)
    print(f"{args.images} images, batch {args.batch_size}, {os.cpu_count()} CPUs, model {args.model}")
    print(f"model.predict on decoded arrays: {memory_rate:.1f} images/s (median of {args.runs})")
    print(f"score_files from JPEG files:     {file_rate:.1f} images/s (median of {args.runs})")
    print(
        f"ratio {file_rate / memory_rate:.2f} (target >= 0.80): {'met' if file_rate >= 0.8 * memory_rate else 'NOT met'}"
    )

    decoded = None  # free the arrays before the memory run
    pid = os.getpid()
    rss_small = peak_rss_mb(pid)
    long_paths = (files[i % len(files)] for i in range(args.memory_images))
    count = sum(1 for _ in score_files(detector, long_paths, args.batch_size))
    rss_large = peak_rss_mb(pid)
    print(
        f"peak RSS {rss_small:.0f} MB after the {args.images}-image runs, {rss_large:.0f} MB after scoring {count} more files"
    )


if __name__ == "__main__":
    main()

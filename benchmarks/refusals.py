"""How long the one preprocessing path takes to refuse a hostile file, in process (no HTTP).

    python -m benchmarks.refusals [--repeats 5]

Each file of ``harness/hostile.py`` that must be refused is given to
:func:`deepfake_detector.preprocessing.load_image` ``--repeats`` times. Printed per file: its size,
the HTTP status of the error it raised (or ``decoded`` when it was not refused), and the median
and slowest wall time. The tests check that these files are refused, with which status, and
that their pixels are never decoded; how long that takes is measured here, on a machine whose
load is known, rather than asserted in a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

from deepfake_detector.errors import ImageError
from deepfake_detector.preprocessing import load_image
from harness import hostile

IMAGE_SIZE = 128


def cases() -> dict[str, bytes]:
    """The hostile files, by what they are."""
    return {
        "PNG declaring 50000x50000, a few bytes of data": hostile.lying_png(50_000),
        "PNG declaring 6324x6324, one row of data": hostile.lying_png(6324),
        "progressive JPEG, 40 MP, 10,000 scans": hostile.many_scans_jpeg(),
        "JPEG cut after 2 KB": hostile.cut_jpeg(hostile.encode(hostile.noise(2048), "JPEG")),
        "PNG 39,999,999 x 1": hostile.grey_png(39_999_999, 1),
        "RLE BMP 6000x6666": hostile.rle_bmp(),
        "GIF with 9.5 million comment sub-blocks": hostile.commented_gif(),
        "TIFF holding a JPEG of 99 scans": hostile.jpeg_in_tiff(),
    }


def refusal(data: bytes) -> tuple[str, float]:
    """(the error's HTTP status, or ``decoded``; seconds ``load_image`` took)."""
    start = time.perf_counter()
    try:
        load_image(data, IMAGE_SIZE)
        outcome = "decoded"
    except ImageError as error:
        outcome = str(error.http_status)
    return outcome, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per file (default: %(default)s)")
    args = parser.parse_args()
    files = cases()
    width = max(len(name) for name in files)
    print(f"{'file'.ljust(width)}  {'bytes':>10}  {'answer':>7}  {'median ms':>9}  {'max ms':>8}")
    for name, data in files.items():
        runs = [refusal(data) for _ in range(args.repeats)]
        outcomes = sorted({outcome for outcome, _ in runs})
        seconds = [elapsed for _, elapsed in runs]
        print(
            f"{name.ljust(width)}  {len(data):>10}  {'/'.join(outcomes):>7}  "
            f"{1000 * statistics.median(seconds):>9.1f}  {1000 * max(seconds):>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""A synthetic stand-in for the Kaggle "deepfake-and-real-images" zip: same layout, counts and image size.

    python -m benchmarks.synthetic_archive OUT.zip [--scale 0.1] [--corrupt 3]

The real archive cannot be fetched here. This one has its ``Dataset/Train|Validation|Test/
Real|Fake`` layout, its file names and, at ``--scale 1``, its 190,335 JPEGs of 256x256. The
images are smooth colour noise with some grain (no faces): they cost what real ones cost to
store, extract and decode, which is what the full-archive benchmark measures. ``--corrupt N``
adds N truncated JPEGs per split, as a damaged download would have.
The writer itself is ``harness/archive.py``, which the tests use too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.archive import write_archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Kaggle counts (default: 1)")
    parser.add_argument("--corrupt", type=int, default=0, help="truncated JPEGs added per split (default: 0)")
    args = parser.parse_args()
    written = write_archive(args.output, args.scale, args.corrupt)
    print(f"wrote {args.output}: {written['images']} images, {written['bytes'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main()

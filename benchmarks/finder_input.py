"""The face finder's input: the smallest scale that finds the same faces as the full-size input.

    python -m benchmarks.finder_input [--scales 1,0.875,0.75,0.625,0.5] [--per-set 300]

RetinaFace runs on each image scaled by ``input_scale`` (its long side still at most
``max_side``). For each scale, on the sample photos of ``benchmarks.faces`` (scikit-image's and
36 composites of 1-4 pasted LFW faces on 1280x960 scenes) and on ``--per-set`` Test images of
each data set found (lfw-faceswap, dfdc-faces, gan-faces: ``data/NAME`` or the reference copies
beside the repository): how many of the boxes found at scale 1 are found again with IoU >= 0.9,
how many are new, and the median time per image of the finder on the 256x256 uploads of
``benchmarks.latency``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from PIL import Image

from benchmarks.common import REPO, jpegs_256
from benchmarks.faces import iou, real_photos
from deepfake_detector import faces
from deepfake_detector.preprocessing import open_image

SETS = ("lfw-faceswap", "dfdc-faces", "gan-faces")
SAME_BOX = 0.9


def test_images(name: str, count: int) -> list[Image.Image]:
    for root in (REPO / "data" / name, REPO.parent / "shared" / "data" / name):
        files = sorted((root / "Test").glob("*/*.jpg"))
        if files:
            step = max(1, len(files) // count)
            return [open_image(path) for path in files[::step][:count]]  # the one decoding path
    return []


def matched(reference: list[faces.FaceBox], found: list[faces.FaceBox]) -> tuple[int, int]:
    """(reference boxes found again with IoU >= SAME_BOX, boxes found that match none), one to one."""
    left = [(box.x, box.y, box.width, box.height) for box in found]
    hits = 0
    for box in reference:
        scores = [iou((box.x, box.y, box.width, box.height), other) for other in left]
        if scores and max(scores) >= SAME_BOX:
            left.pop(scores.index(max(scores)))
            hits += 1
    return hits, len(left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,0.875,0.75,0.625,0.5")
    parser.add_argument("--per-set", type=int, default=300)
    args = parser.parse_args()
    scales = [float(value) for value in args.scales.split(",")]
    reference_finder = faces.RetinaFaceFinder()
    sets = {"sample photos": [image for _, image, _ in real_photos(reference_finder.framing)]}
    for name in SETS:
        images = test_images(name, args.per_set)
        if images:
            sets[f"{name} Test"] = images
    uploads = [open_image(data) for data in jpegs_256(100)]
    references = {name: [reference_finder.find(image) for image in images] for name, images in sets.items()}
    print(f"boxes at scale 1 kept when found again with IoU >= {SAME_BOX}; new: boxes scale 1 did not find")
    for scale in scales:
        finder = faces.RetinaFaceFinder(input_scale=scale)
        cells = []
        for name, images in sets.items():
            counts = [matched(ref, finder.find(image)) for ref, image in zip(references[name], images)]
            total = sum(len(ref) for ref in references[name])
            cells.append(f"{name} {sum(h for h, _ in counts)}/{total} (+{sum(n for _, n in counts)} new)")
        times = []
        for image in uploads:
            start = time.perf_counter()
            finder.find(image)
            times.append((time.perf_counter() - start) * 1000)
        print(f"scale {scale:5.3f}: {statistics.median(times):5.2f} ms per 256x256 upload; " + "; ".join(cells))


if __name__ == "__main__":
    main()

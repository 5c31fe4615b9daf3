"""Face detection: framing, finder recall and speed, accuracy with and without it, API latency.

    python -m benchmarks.faces --model PATH [--finders retinaface haar] [--test-limit N]

1. Framing: the finder on LFW training crops (128x128, as the model saw them): box size
   and position relative to the crop, i.e. the margin and centre offset of a training crop.
2. Finders on real photos that ship here: scikit-image's astronaut and camera (one face
   each), coffee, chelsea, rocket, hubble_deep_field and immunohistochemistry (no face), and
   36 composites of 1-4 LFW Test/Real photos pasted at 80-480 px on 1280x960 scenes (90
   faces of 34-204 px). A face is found when a box has IoU >= 0.5 with it.
3. Accuracy on LFW Test, same model: whole image (no detection), with face detection (the
   face-crop rule on), and with every face cropped (the rule off), to show why it exists.
4. End-to-end latency of a two-face 1280x960 JPEG posted to ``python inference.py``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import LFW_FACESWAP, percentiles
from deepfake_detector import faces
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
from deepfake_detector.preprocessing import load_image, resize

CANVAS = (1280, 960)


def expected_face(left: float, top: float, side: float, framing: faces.Framing) -> tuple[float, ...]:
    """Where the face is inside a pasted training-style crop: the framing, inverted."""
    face = side / framing.scale
    centre_x, centre_y = left + side / 2, top + side / 2
    return centre_x - face / 2, centre_y - face / 2, face, face


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def composite(
    face_paths: list[Path], boxes: list[tuple[int, int, int]], background: np.ndarray, framing: faces.Framing
):
    """LFW crops pasted at (left, top, side) on a scene; returns the image and face boxes."""
    canvas = Image.fromarray(background).convert("RGB").resize(CANVAS, Image.Resampling.BILINEAR)
    truth = []
    for path, (left, top, side) in zip(face_paths, boxes):
        canvas.paste(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS), (left, top))
        truth.append(expected_face(left, top, side, framing))
    return canvas, truth


def real_photos(framing: faces.Framing, count: int = 36, seed: int = 0):
    """(name, RGB image, face boxes) for the photo set described in the module docstring."""
    from skimage import data

    scenes = [data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(), data.immunohistochemistry()]
    photos = [
        ("astronaut", Image.fromarray(data.astronaut()), [(177, 56, 95, 120)]),  # boxes checked by eye
        ("camera", Image.fromarray(data.camera()).convert("RGB"), [(195, 113, 60, 81)]),
    ]
    photos += [
        (name, Image.fromarray(scene), [])
        for name, scene in zip(("coffee", "chelsea", "rocket", "hubble", "ihc"), scenes)
    ]
    rng = np.random.default_rng(seed)
    lfw = sorted((LFW_FACESWAP / "Test" / "Real").glob("*.jpg"))
    for index in range(count):
        placed: list[tuple[int, int, int]] = []
        for _ in range(1 + index % 4):
            for _ in range(200):
                side = int(np.exp(rng.uniform(np.log(80), np.log(480))))
                left, top = int(rng.integers(0, CANVAS[0] - side)), int(rng.integers(0, CANVAS[1] - side))
                if all(left + side <= x or x + s <= left or top + side <= y or y + s <= top for x, y, s in placed):
                    placed.append((left, top, side))
                    break
        paths = [lfw[i] for i in rng.choice(len(lfw), len(placed), replace=False)]
        image, truth = composite(paths, placed, scenes[index % len(scenes)], framing)
        photos.append((f"composite_{index}", image, truth))
    return photos


def measure_framing(finder: faces.FaceFinder, per_class: int = 600) -> None:
    files = []
    for folder in ("Real", "Fake"):
        paths = sorted((LFW_FACESWAP / "Train" / folder).glob("*.jpg"))
        files += paths[:: max(1, len(paths) // per_class)]
    rows, counts = [], []
    for path in files:
        image = Image.open(path).convert("RGB")
        boxes = finder.find(image)
        counts.append(len(boxes))
        if boxes:
            box = max(boxes, key=lambda b: b.area)
            size = np.sqrt(box.area)
            rows.append(
                (
                    image.width / size,
                    box.width / image.width,
                    box.height / image.height,
                    (image.width / 2 - box.x - box.width / 2) / box.height,
                    (image.height / 2 - box.y - box.height / 2) / box.height,
                )
            )
    scale, width, height, dx, dy = np.array(rows).T
    q = lambda v: f"median {np.median(v):.3f} (IQR {np.percentile(v, 25):.3f}-{np.percentile(v, 75):.3f})"  # noqa: E731
    print(f"\n[framing] {finder.name} on {len(files)} LFW Train crops ({Image.open(files[0]).width} px)")
    print(f"  faces found per crop: {dict(enumerate(np.bincount(counts).tolist()))}")
    print(f"  box width / crop {q(width)}; box height / crop {q(height)}")
    print(f"  crop side / sqrt(box w*h) {q(scale)}  -> Framing.scale (in use: {finder.framing.scale})")
    print(f"  crop centre - box centre, in box heights: x {q(dx)}; y {q(dy)}")


def measure_finder(finder: faces.FaceFinder, photos) -> dict:
    finder.find(photos[0][1])  # warm-up
    found = total = extra = 0
    times, missed = [], []
    for _name, image, truth in photos:
        start = time.perf_counter()
        boxes = finder.find(image)
        times.append((time.perf_counter() - start) * 1000)
        used = set()
        for face in truth:
            total += 1
            hits = [i for i, box in enumerate(boxes) if i not in used and iou(box.as_list(), face) >= 0.5]
            if hits:
                found += 1
                used.add(hits[0])
            else:
                missed.append(round(face[2]))
        extra += len(boxes) - len(used)
    no_face = [len(finder.find(image)) for name, image, truth in photos if not truth]
    coverage = [
        finder.framing.coverage(faces.FaceBox(*map(round, face)), *image.size)
        for _, image, truth in photos
        for face in truth
    ]
    result = dict(
        recall=found / total,
        found=found,
        total=total,
        extra=extra,
        no_face_boxes=sum(no_face),
        median_ms=statistics.median(times),
        p90_ms=float(np.percentile(times, 90)),
        missed=sorted(missed),
    )
    print(
        f"\n[finder] {finder.name}: recall {found}/{total} = {result['recall']:.3f} (IoU >= 0.5); "
        f"{result['no_face_boxes']} boxes on the {len(no_face)} photos without a face; {extra} boxes in all not "
        f"matching a face (LFW crops often hold background people); {result['median_ms']:.0f} ms median, "
        f"{result['p90_ms']:.0f} ms p90 per photo; sizes of missed faces (px): {result['missed']}; "
        f"largest crop coverage of a photo by a true face {max(coverage):.3f}"
    )
    return result


def measure_accuracy(detector: Detector, finder: faces.FaceFinder, limit: int | None) -> None:
    files, truth = [], []
    for folder, is_fake in (("Real", 0), ("Fake", 1)):
        paths = sorted((LFW_FACESWAP / "Test" / folder).glob("*.jpg"))[:limit]
        files += paths
        truth += [is_fake] * len(paths)
    truth = np.array(truth)
    whole = detector.scores(np.stack([load_image(path, detector.image_size) for path in files]))
    ruled, every_face, coverage = [], [], []
    kinds = {"no face": 0, "largest face scored whole": 0, "every face cropped": 0}
    elapsed = 0.0
    for path in files:
        image = Image.open(path).convert("RGB")
        start = time.perf_counter()
        inputs = faces.model_inputs(image, finder, detector.image_size)
        ruled.append(detector.scores(inputs.inputs).max())
        elapsed += time.perf_counter() - start
        if inputs.face_detection == faces.NONE_FOUND:
            kinds["no face"] += 1
            every_face.append(ruled[-1])
            continue
        kinds["every face cropped" if inputs.whole_image is None else "largest face scored whole"] += 1
        coverage.append(finder.framing.coverage(max(inputs.boxes, key=lambda b: b.area), image.width, image.height))
        squares = [finder.framing.square(b, image.width, image.height) for b in inputs.boxes]
        every_face.append(
            detector.scores(np.stack([resize(image.crop(s), detector.image_size) for s in squares])).max()
        )
    elapsed = elapsed * 1000 / len(files)

    def accuracy(scores) -> float:
        return float(np.mean((np.asarray(scores) >= detector.threshold) == truth))

    base = accuracy(whole)
    print(f"\n[accuracy] {detector.name} on LFW Test ({len(files)} images, threshold {detector.threshold:.3f})")
    print(
        f"  largest face's crop coverage of the image: p0.5 {np.percentile(coverage, 0.5):.3f}, p1 "
        f"{np.percentile(coverage, 1):.3f}, median {np.median(coverage):.3f} (face-crop rule at >= {faces.FACE_CROP_COVERAGE})"
    )
    print(f"  routes: {kinds}")
    print(f"  whole image, no face detection        {base:.4f}")
    print(
        f"  face detection (face-crop rule on)    {accuracy(ruled):.4f}  ({accuracy(ruled) - base:+.4f}; find + score {elapsed:.0f} ms/img, one at a time)"
    )
    print(f"  every face cropped (rule off)         {accuracy(every_face):.4f}  ({accuracy(every_face) - base:+.4f})")


def measure_api(model: Path, finder: faces.FaceFinder, requests_count: int) -> None:
    import requests

    from harness.server import running_server

    lfw = sorted((LFW_FACESWAP / "Test" / "Real").glob("*.jpg"))
    from skimage import data

    image, _ = composite(lfw[:2], [(200, 250, 360), (760, 300, 300)], data.coffee(), finder.framing)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    body = buffer.getvalue()
    with running_server(model) as url:
        session = requests.Session()
        for query in ("", "?explain=1"):
            times = []
            for i in range(requests_count + 2):
                start = time.perf_counter()
                response = session.post(f"{url}/api/predict{query}", files={"file": ("two.jpg", body)})
                response.raise_for_status()
                if i >= 2:  # two warm-up requests
                    times.append((time.perf_counter() - start) * 1000)
            answer = response.json()
            stats = percentiles(times, (50, 90))
            print(
                f"\n[api] POST /api/predict{query} two-face 1280x960 JPEG ({len(body) // 1024} KB), {requests_count} requests: "
                f"p50 {stats['p50']:.0f} ms, p90 {stats['p90']:.0f} ms; faces {len(answer['faces'])}, "
                f"face_detection {answer['face_detection']!r}, verdict {answer['verdict']!r}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--finders", nargs="+", default=["retinaface", "haar"], choices=sorted(faces.FINDERS))
    parser.add_argument("--test-limit", type=int, help="images per class of LFW Test (default: all)")
    parser.add_argument("--framing-images", type=int, default=600, help="LFW Train crops per class for the framing")
    parser.add_argument("--api-requests", type=int, default=10)
    parser.add_argument("--skip", nargs="*", default=[], choices=["framing", "finders", "accuracy", "api"])
    args = parser.parse_args()

    finders = {name: faces.default_finder(name) for name in args.finders}
    chosen = finders[args.finders[0]]  # the first is the one scored with
    if "framing" not in args.skip:
        for finder in finders.values():
            measure_framing(finder, args.framing_images)
    if "finders" not in args.skip:
        photos = real_photos(chosen.framing)
        faces_total = sum(len(truth) for _, _, truth in photos)
        print(f"\nphoto set: {len(photos)} photos, {faces_total} faces (see the module docstring)")
        for finder in finders.values():
            measure_finder(finder, photos)
    if "accuracy" not in args.skip:
        measure_accuracy(Detector.from_path(args.model), chosen, args.test_limit)
    if "api" not in args.skip:
        measure_api(args.model, chosen, args.api_requests)


if __name__ == "__main__":
    main()

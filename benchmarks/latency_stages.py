"""Where an upload's time goes, stage by stage, in process (no HTTP).

    python -m benchmarks.latency_stages [--model PATH] [--images 100] [--rounds 3]

For the same 256x256 JPEGs as ``benchmarks.latency``, times each step of
``Detector.predict_faces``: decode (``open_image``), face finding and cropping
(``faces.model_inputs``, RetinaFace), and the model (``Detector.scores``), on the TFLite
and the Keras runtime. Prints the median per image of each stage (median over rounds); the
difference to ``benchmarks.latency``'s p50 is the HTTP and Flask share.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import jpegs_256
from deepfake_detector import faces
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
from deepfake_detector.preprocessing import open_image

STAGES = ("decode", "find faces + crop", "model", "total")


def one_round(detector: Detector, finder, images: list[bytes]) -> dict[str, float]:
    times = {stage: [] for stage in STAGES}
    for data in images:
        t0 = time.perf_counter()
        image = open_image(data)
        t1 = time.perf_counter()
        found = faces.model_inputs(image, finder, detector.image_size)
        t2 = time.perf_counter()
        detector.scores(found.inputs)
        t3 = time.perf_counter()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            times[stage].append(seconds * 1000)
    return {stage: float(np.median(values)) for stage, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = jpegs_256(args.images)
    finder = faces.default_finder()
    detectors = {runtime: Detector.from_path(args.model, runtime=runtime) for runtime in ("tflite", "keras")}
    for detector in detectors.values():
        one_round(detector, finder, images[:10])  # warm-up
    results = {runtime: [] for runtime in detectors}
    for round_index in range(args.rounds):
        for runtime, detector in detectors.items():
            stages = one_round(detector, finder, images)
            results[runtime].append(stages)
            print(
                f"round {round_index + 1} {runtime:6s} " + "  ".join(f"{s} {stages[s]:6.1f}" for s in STAGES),
                flush=True,
            )
    flip = (
        " (flip-averaged: TFLite scores each face and its mirror image in one pass, Keras in two)"
        if detectors["tflite"].metadata.flip_average
        else ""
    )
    print(
        f"\nmodel {args.model}{flip}, {args.images} 256x256 JPEGs x {args.rounds} rounds; "
        "median ms per image, median of rounds"
    )
    for runtime, rounds in results.items():
        summary = {stage: statistics.median(r[stage] for r in rounds) for stage in STAGES}
        print(f"{runtime:6s} " + "  ".join(f"{stage} {summary[stage]:6.1f}" for stage in STAGES))


if __name__ == "__main__":
    main()

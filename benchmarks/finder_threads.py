"""The face finder's idle threads: spinning against sleeping, alone and followed by the model.

    python -m benchmarks.finder_threads [--model PATH] [--images 40] [--rounds 3]

onnxruntime's worker threads spin for a while after each run by default. In a request the
model runs right after the finder on the same cores, so spinning threads take its time. For
the same 256x256 JPEGs as ``benchmarks.latency``, times (median ms per image, median over
rounds) the finder alone, the model alone (the server's TFLite runtime) and the finder
followed by the model, with spinning allowed (onnxruntime's default) and turned off (ours).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import jpegs_256
from deepfake_detector import faces
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
from deepfake_detector.preprocessing import open_image
from deepfake_detector.recipes import SERVING_RUNTIME


def median_ms(step, items, rounds: int) -> float:
    medians = []
    for _ in range(rounds):
        times = []
        for item in items:
            start = time.perf_counter()
            step(item)
            times.append((time.perf_counter() - start) * 1000)
        medians.append(statistics.median(times))
    return statistics.median(medians)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    detector = Detector.from_path(args.model, runtime=SERVING_RUNTIME)
    images = [open_image(data) for data in jpegs_256(args.images)]
    crops = [faces.model_inputs(image, faces.RetinaFaceFinder(), detector.image_size).inputs for image in images]
    model_alone = median_ms(detector.scores, crops, args.rounds)
    print(f"model {args.model} ({SERVING_RUNTIME}), {len(images)} 256x256 JPEGs, medians of {args.rounds} rounds")
    print(f"  model alone                           {model_alone:6.2f} ms")
    for name, finder in (
        ("spinning (onnxruntime default)", faces.RetinaFaceFinder(spin=True)),
        ("sleeping (ours)", faces.RetinaFaceFinder()),
    ):
        alone = median_ms(finder.find, images, args.rounds)
        both = median_ms(
            lambda image, f=finder: detector.scores(faces.model_inputs(image, f, detector.image_size).inputs),
            images,
            args.rounds,
        )
        print(f"  finder {name:31s} alone {alone:6.2f} ms, finder + crop + model {both:6.2f} ms")


if __name__ == "__main__":
    main()

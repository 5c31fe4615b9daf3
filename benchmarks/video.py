"""Seconds to score a video: ours (PyAV, seeking to the sampled frames) against decoding every
frame with OpenCV's ``VideoCapture`` (the naive baseline), in one run.

    python -m benchmarks.video [--model PATH] [--seconds 60] [--frames 32] [--runs 3] [--keyframe-interval 50]

The clip is made here: 60 s of 1280x720 at 25 fps (H.264, a keyframe every 2 s by default, as
streaming encoders write), two faces from lfw-faceswap (a real and a fake; ``benchmarks.common.LFW_FACESWAP``)
pasted on a background and moving. Both pipelines score the same ``--frames`` evenly spaced
frames through ``Detector.predict_faces`` and link the faces into tracks; the baseline decodes
every frame with OpenCV and keeps those. Medians of ``--runs`` runs, alternating.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import face_files
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
from deepfake_detector.faces import default_finder
from deepfake_detector.tracking import LandmarkRecorder, TrackFace, link_tracks
from deepfake_detector.video import VideoLimits, VideoReader, score_video
from harness.videos import FacePath, encode, frames_with_faces

WIDTH, HEIGHT, FPS = 1280, 720, 25


def make_clip(seconds: int, keyframe_interval: int) -> bytes:
    real, fake = (Image.open(path).convert("RGB") for path in face_files(limit=2))
    paths = [FacePath(real, (80, 120), (900, 260), 220), FacePath(fake, (960, 420), (200, 300), 200)]
    return encode(
        frames_with_faces(paths, seconds * FPS, WIDTH, HEIGHT),
        fps=FPS,
        keyframe_interval=keyframe_interval,
        options={"preset": "veryfast"},
    )


def ours(detector: Detector, data: bytes, frames: int) -> tuple[float, float, int]:
    """(seconds in all, seconds decoding, tracks)."""
    start = time.perf_counter()
    with VideoReader(data, VideoLimits(budget_seconds=600)) as reader:
        reader.index()
        decoded = list(reader.frames(reader.plan(frames)))
    decoding = time.perf_counter() - start
    result = score_video(detector, data, default_finder(), frames, VideoLimits(budget_seconds=600))
    total = time.perf_counter() - start - decoding  # scored once more with its own decoding
    assert len(decoded) == len(result.frames)
    return total, decoding, len(result.tracks)


def baseline(detector: Detector, path: Path, frames: int) -> tuple[float, float, int]:
    """Every frame decoded with OpenCV, the sampled ones kept, then scored and linked the same way."""
    import cv2

    start = time.perf_counter()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    capture.release()
    numbers = set(np.linspace(0, len(decoded) - 1, frames).round().astype(int).tolist())
    kept = [(n, Image.fromarray(decoded[n][..., ::-1])) for n in sorted(numbers)]
    del decoded
    decoding = time.perf_counter() - start
    recorder = LandmarkRecorder(default_finder())
    found = []
    for sample, (number, image) in enumerate(kept):
        analysis = detector.predict_faces(image, recorder, max_faces=20)
        found.append(
            [TrackFace(sample, number, number / FPS, face, recorder.landmarks.get(face.box)) for face in analysis.faces]
        )
    tracks = link_tracks(found)
    return time.perf_counter() - start, decoding, len(tracks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--keyframe-interval", type=int, default=2 * FPS, help="frames between keyframes (default: %(default)s)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    data = make_clip(args.seconds, args.keyframe_interval)
    print(
        f"clip: {args.seconds} s of {WIDTH}x{HEIGHT} at {FPS} fps, H.264, keyframe every {args.keyframe_interval} frames, "
        f"{len(data) / 1e6:.1f} MB (made in {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    detector = Detector.from_path(args.model)
    results = {"ours": [], "baseline": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        path.write_bytes(data)  # OpenCV reads files only
        ours(detector, data, args.frames)  # warm-up: traces, first face finder call
        for run in range(args.runs):
            for name in ("baseline", "ours"):
                total, decoding, tracks = (
                    baseline(detector, path, args.frames) if name == "baseline" else ours(detector, data, args.frames)
                )
                results[name].append((total, decoding))
                print(
                    f"run {run + 1} {name:8s} {total:6.2f} s per video ({decoding:5.2f} s decoding), {tracks} tracks",
                    flush=True,
                )
    print(f"\n{args.frames} sampled frames of a {args.seconds} s {WIDTH}x{HEIGHT} clip, median of {args.runs} runs:")
    for name in ("baseline", "ours"):
        total = statistics.median(t for t, _ in results[name])
        decoding = statistics.median(d for _, d in results[name])
        print(
            f"{name:8s} {total:6.2f} s per video, {total / args.frames:.3f} s per sampled frame, {decoding:.2f} s of it decoding"
        )
    ratio = statistics.median(t for t, _ in results["ours"]) / statistics.median(t for t, _ in results["baseline"])
    print(f"ours / baseline = {ratio:.3f}")


if __name__ == "__main__":
    main()

"""Serve the detector, or score files from the command line.

    python inference.py                          # the upload page and API on http://127.0.0.1:5000
    python inference.py --model models/x.keras --port 8080      (or: python inference.py serve ...)
    python inference.py --keep-uploads           # also store each upload in uploads/ for review
    python inference.py predict photos/ a.jpg --output results.csv   # one row per face
    python inference.py predict clip.mp4 --frames-csv frames.csv      # one row per face track (per face per frame)

With no --model it serves deepfake_detector_model.keras from the working folder when
``python train.py`` has written one there (as in the original tutorial), else the shipped model.
"""

import argparse
import logging
import sys
from pathlib import Path

from deepfake_detector.cli import choices_help, fail, run
from deepfake_detector.decoding import MAX_DEFAULT_THREADS
from deepfake_detector.recipes import RUNTIMES, SERVING_RUNTIME

PROG = "inference.py"
PREDICT_PROG = f"{PROG} predict"
#: Where --keep-uploads stores uploads: the top-level uploads/ folder of the tutorial's layout.
UPLOADS_DIR = Path(__file__).resolve().parent / "uploads"
MODEL_HELP = "a .keras model saved by train.py (default: ./deepfake_detector_model.keras if train.py wrote one, else the shipped model)"


def __getattr__(name: str):
    """The tutorial's ``from inference import InferenceModel``, loaded on first use (``--help``
    does not wait for TensorFlow)."""
    if name == "InferenceModel":
        from deepfake_detector.inference_model import InferenceModel

        return InferenceModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _serve_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--model", type=Path, help=MODEL_HELP)
    options.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    options.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    options.add_argument(
        "--threads", type=int, default=4, help="request threads of the production server (default: %(default)s)"
    )
    options.add_argument(
        "--runtime", default=SERVING_RUNTIME, choices=RUNTIMES, help=choices_help(RUNTIMES, SERVING_RUNTIME)
    )
    options.add_argument(
        "--dev", action="store_true", help="use Flask's development server instead of waitress (debug stays off)"
    )
    options.add_argument(
        "--keep-uploads",
        action="store_true",
        help="store each scored upload in uploads/ under a name made from its content, with a JSON "
        "sidecar (verdict, scores, model, time), for review or retraining (default: kept in memory only)",
    )
    options.add_argument(
        "--keep-uploads-max-mb",
        type=float,
        default=1024.0,
        help="stop storing uploads once uploads/ takes this many MB of disk; answers are unaffected (default: %(default)g)",
    )
    options.add_argument(
        "--keep-uploads-max-files",
        type=int,
        default=20_000,
        help="and once it holds this many files, two per upload (default: %(default)d)",
    )
    return options


def get_args_parser() -> argparse.ArgumentParser:
    """``serve`` (also what runs with no command) and ``predict``."""
    serve_options = _serve_options()
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[serve_options]
    )
    commands = parser.add_subparsers(dest="command", title="commands")
    commands.add_parser(
        "serve",
        parents=[serve_options],
        help="serve the upload page and JSON API (the default)",
        description="Serve the upload page and JSON API; options go after the command.",
    )
    predict = commands.add_parser(
        "predict",
        prog=PREDICT_PROG,
        help="score image or video files and folders",
        description=(
            "Score image files and folders (recursively): one row per face found (face_index, box "
            "= x y width height), or one whole-image row with both empty when a file has no face. "
            "An image's verdict is its highest fake_probability. Videos (MP4, WebM, MOV, MKV, AVI; "
            "in a run of their own): evenly spaced frames are sampled and each face is followed "
            "through them: one row per track (its score is the mean of its frames; a video's "
            "verdict is its highest track). Exit status 1 if any file failed."
        ),
    )
    predict.add_argument("paths", nargs="+", help="image or video files and folders")
    predict.add_argument("--model", type=Path, help=MODEL_HELP)
    predict.add_argument(
        "--output", help="results file: .csv for CSV, anything else for JSON lines (default: CSV on stdout)"
    )
    predict.add_argument("--batch-size", type=int, default=64, help="images per model call (default: %(default)s)")
    predict.add_argument(
        "--workers", type=int, help=f"decoding threads (default: twice the CPUs, at most {MAX_DEFAULT_THREADS})"
    )
    predict.add_argument("--no-faces", action="store_true", help="score each whole image, without face detection")
    predict.add_argument(
        "--frames",
        type=int,
        default=32,
        help="frames sampled per video, evenly spaced (default: %(default)s, DeepfakeBench's protocol; at most 64)",
    )
    predict.add_argument(
        "--frames-csv",
        help="videos: also write one row per face per sampled frame to this file (.csv, else JSON lines)",
    )
    return parser


def load_detector(model_path: Path | None, runtime: str = "keras"):
    """The model to score with; raises :class:`deepfake_detector.errors.ModelFileError`."""
    from deepfake_detector.cli import default_model
    from deepfake_detector.detector import Detector

    model_path, origin = default_model(PROG, model_path)
    detector = Detector.from_path(model_path, runtime=runtime, origin=origin)
    print(f"model: {model_path} ({origin})", file=sys.stderr)
    return detector


def serve(args: argparse.Namespace) -> int:
    from deepfake_detector.inference_model import InferenceModel
    from deepfake_detector.serving import ServerConfig

    store = None
    if args.keep_uploads:
        for option, value in (
            ("--keep-uploads-max-mb", args.keep_uploads_max_mb),
            ("--keep-uploads-max-files", args.keep_uploads_max_files),
        ):
            if value < 0:
                return fail(PROG, f"{option} must be 0 or more")
        from deepfake_detector.uploads import UploadStore

        store = UploadStore(UPLOADS_DIR, int(args.keep_uploads_max_mb * 2**20), args.keep_uploads_max_files)
    # Loaded and warmed up before the port opens.
    inference_model = InferenceModel(
        args.model,
        runtime=args.runtime,
        host=args.host,
        port=args.port,
        server=ServerConfig(threads=args.threads),
        upload_store=store,
    )
    if args.dev:
        logging.getLogger(__name__).warning("Flask development server: not for production use")
        inference_model.app.run(host=args.host, port=args.port, debug=False, threaded=True)
        return 0
    inference_model.run()
    return 0


def predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deepfake_detector.batch import RowWriter, expand_paths, score_files
    from deepfake_detector.faces import default_finder
    from deepfake_detector.preprocessing import IMAGE_SUFFIXES
    from deepfake_detector.video import VIDEO_SUFFIXES, is_video_path

    paths = list(expand_paths(args.paths, IMAGE_SUFFIXES | VIDEO_SUFFIXES))
    videos = [path for path in paths if is_video_path(path)]
    if videos and len(videos) < len(paths):
        return fail(PREDICT_PROG, "score images and videos in separate runs (their rows differ)")
    if videos and args.no_faces:
        return fail(PREDICT_PROG, "--no-faces is for images: a video's faces are followed through its frames")
    if not paths:
        return fail(PREDICT_PROG, "no image or video files found")
    detector = load_detector(args.model)
    finder = None if args.no_faces else default_finder()
    if videos:
        return predict_videos(args, videos, detector, finder)
    writer = RowWriter(args.output, stream=sys.stdout)
    failures = []
    try:
        with tqdm(total=len(paths), unit="img", desc="scoring") as progress:
            for row in score_files(detector, paths, args.batch_size, args.workers, finder=finder):
                writer.write(row)
                if row.face_index in (None, 0):  # a file's first row
                    progress.update(1)
                if row.error:
                    failures.append(row)
    finally:
        writer.close()
    if failures:
        print(f"{PREDICT_PROG}: {len(failures)} of {len(paths)} file(s) failed:", file=sys.stderr)
        for row in failures:
            print(f"  {row.path}: {row.error}", file=sys.stderr)
        return 1
    return 0


def predict_videos(args: argparse.Namespace, paths: list[str], detector, finder) -> int:
    """One row per track of each video (and, with --frames-csv, one per face per frame)."""
    from tqdm import tqdm

    from deepfake_detector.batch import FRAME_FIELDS, TRACK_FIELDS, RowWriter, frame_rows, track_rows
    from deepfake_detector.errors import VideoError
    from deepfake_detector.video import VideoLimits, score_video

    limits = VideoLimits()
    if not 1 <= args.frames <= limits.frames:
        return fail(PREDICT_PROG, f"--frames must be from 1 to {limits.frames}, got {args.frames}")
    writer = RowWriter(args.output, stream=sys.stdout, fields=TRACK_FIELDS)
    frames_writer = RowWriter(args.frames_csv, fields=FRAME_FIELDS) if args.frames_csv else None
    failures = []
    try:
        for path in tqdm(paths, unit="video", desc="scoring"):
            try:
                analysis = score_video(detector, Path(path), finder, args.frames, limits)
            except (VideoError, OSError) as error:
                reason = "no such file" if isinstance(error, FileNotFoundError) else str(error)
                writer.write({"path": path, "error": reason})
                failures.append((path, reason))
                continue
            for row in track_rows(path, analysis):
                writer.write(row)
            for row in frame_rows(path, analysis) if frames_writer else ():
                frames_writer.write(row)
    finally:
        writer.close()
        if frames_writer:
            frames_writer.close()
    if failures:
        print(f"{PREDICT_PROG}: {len(failures)} of {len(paths)} video(s) failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    if args.command == "predict":
        return run(PREDICT_PROG, predict, args)
    return run(PROG, serve, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

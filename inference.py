"""Serve the detector, or score files from the command line.

    python inference.py                          # the upload page and API on http://127.0.0.1:5000
    python inference.py --model models/x.keras --port 8080
    python inference.py --keep-uploads           # also store each upload in uploads/ for review
    python inference.py predict photos/ a.jpg --output results.csv   # one row per face

With no --model it serves deepfake_detector_model.keras from the working folder when
``python train.py`` has written one there (as in the original tutorial), else the shipped model.
"""

import argparse
import logging
import sys
from pathlib import Path

#: Where --keep-uploads stores uploads: the top-level uploads/ folder of the tutorial's layout.
UPLOADS_DIR = Path(__file__).resolve().parent / "uploads"


def __getattr__(name: str):
    """The tutorial's ``from inference import InferenceModel``, loaded on first use (``--help``
    does not wait for TensorFlow)."""
    if name == "InferenceModel":
        from deepfake_detector.serving import InferenceModel

        return InferenceModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a .keras model saved by train.py (default: "
                                                   "./deepfake_detector_model.keras if train.py wrote one, else the shipped model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    parser.add_argument("--threads", type=int, default=4, help="request threads of the production server (default: 4)")
    parser.add_argument("--runtime", default="tflite", choices=["tflite", "keras"],
                        help="tflite: the model converted at start-up and run by LiteRT, fastest per upload "
                             "(default); keras: TensorFlow")
    parser.add_argument("--dev", action="store_true", help="use Flask's development server instead of waitress (debug stays off)")
    parser.add_argument("--keep-uploads", action="store_true",
                        help="store each scored upload in uploads/ under a name made from its content, with a JSON "
                             "sidecar (verdict, scores, model, time), for review or retraining (default: kept in memory only)")
    parser.add_argument("--keep-uploads-max-mb", type=float, default=1024.0,
                        help="stop storing uploads once uploads/ holds this many MB; answers are unaffected (default: 1024)")
    return parser


def load_detector(model_path: Path | None, runtime: str = "keras"):
    from deepfake_detector.detector import Detector
    from deepfake_detector.model import ModelFileError
    from deepfake_detector.serving import default_model_path

    origin = ""
    if model_path is None:
        model_path, origin = default_model_path()
    try:
        return Detector.from_path(model_path, runtime=runtime, origin=origin)
    except ModelFileError as error:
        raise SystemExit(f"inference.py: {error}")


def serve(args: argparse.Namespace) -> int:
    from deepfake_detector.model import ModelFileError
    from deepfake_detector.serving import InferenceModel, ServerConfig

    store = None
    if args.keep_uploads:
        if args.keep_uploads_max_mb < 0:
            raise SystemExit("inference.py: --keep-uploads-max-mb must be 0 or more")
        from deepfake_detector.uploads import UploadStore

        store = UploadStore(UPLOADS_DIR, int(args.keep_uploads_max_mb * 2**20))
    try:  # loaded and warmed up before the port opens
        inference_model = InferenceModel(args.model, runtime=args.runtime, host=args.host, port=args.port,
                                          server=ServerConfig(threads=args.threads), upload_store=store)  # fmt: skip
    except ModelFileError as error:
        raise SystemExit(f"inference.py: {error}")
    if args.dev:
        logging.getLogger(__name__).warning("Flask development server: not for production use")
        inference_model.app.run(host=args.host, port=args.port, debug=False, threaded=True)
        return 0
    inference_model.run()
    return 0


def get_predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference.py predict",
        description=(
            "Score image files and folders (recursively): one row per face found (face_index, box "
            "= x y width height), or one whole-image row with both empty when a file has no face. "
            "An image's verdict is its highest fake_probability. Exit status 1 if any file failed."
        ),
    )
    parser.add_argument("paths", nargs="+", help="image files and folders")
    parser.add_argument("--model", type=Path, help="a .keras model (default: as for serving)")
    parser.add_argument("--output", help="results file: .csv for CSV, anything else for JSON lines (default: CSV on stdout)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default: 64)")
    parser.add_argument("--workers", type=int, help="decoding threads (default: 2 x CPUs, at least 2)")
    parser.add_argument("--no-faces", action="store_true", help="score each whole image, without face detection")
    return parser


def predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deepfake_detector.batch import RowWriter, expand_paths, score_files
    from deepfake_detector.faces import default_finder

    detector = load_detector(args.model)
    finder = None if args.no_faces else default_finder()
    paths = list(expand_paths(args.paths))
    if not paths:
        print("inference.py predict: no image files found", file=sys.stderr)
        return 2
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
        print(f"inference.py predict: {len(failures)} of {len(paths)} file(s) failed:", file=sys.stderr)
        for row in failures:
            print(f"  {row.path}: {row.error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["predict"]:
        return predict(get_predict_parser().parse_args(argv[1:]))
    return serve(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Serve the detector, or score files from the command line.

    python inference.py                          # the upload page and API on http://127.0.0.1:5000
    python inference.py --model models/x.keras --port 8080
    python inference.py predict photos/ a.jpg --output results.csv   # one row per face
"""

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    from deepfake_detector.detector import DEFAULT_MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="a .keras model saved by train.py (default: the shipped model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    parser.add_argument("--threads", type=int, default=4, help="request threads of the production server (default: 4)")
    parser.add_argument("--runtime", default="tflite", choices=["tflite", "keras"],
                        help="tflite: the model converted at start-up and run by LiteRT, fastest per upload "
                             "(default); keras: TensorFlow")
    parser.add_argument("--dev", action="store_true", help="use Flask's development server instead of waitress (debug stays off)")
    return parser


def load_detector(model_path: Path, runtime: str = "keras"):
    from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
    from deepfake_detector.model import ModelFileError

    if not model_path.exists() and model_path == DEFAULT_MODEL_PATH:
        raise SystemExit(
            f"inference.py: no model at {model_path}. Train one with "
            "`python train.py --data-dir DATA` (see README.md) or pass --model PATH."
        )
    try:
        return Detector.from_path(model_path, runtime=runtime)
    except ModelFileError as error:
        raise SystemExit(f"inference.py: {error}")


def serve(args: argparse.Namespace) -> int:
    from deepfake_detector.web import create_app

    detector = load_detector(args.model, args.runtime)  # loaded and warmed up before the port opens
    app = create_app(detector)
    url = f"http://{args.host}:{args.port}/"
    if args.dev:
        logging.getLogger(__name__).warning("Flask development server: not for production use")
        app.run(host=args.host, port=args.port, debug=False, threaded=True)
        return 0
    from deepfake_detector.serving import ServerConfig, create_server

    server = create_server(app, args.host, args.port, ServerConfig(threads=args.threads))
    print(f"Serving {detector.name} on {url} with waitress ({args.threads} threads)", flush=True)
    server.run()
    return 0


def get_predict_parser() -> argparse.ArgumentParser:
    from deepfake_detector.detector import DEFAULT_MODEL_PATH

    parser = argparse.ArgumentParser(
        prog="inference.py predict",
        description=(
            "Score image files and folders (recursively): one row per face found (face_index, box "
            "= x y width height), or one whole-image row with both empty when a file has no face. "
            "An image's verdict is its highest fake_probability. Exit status 1 if any file failed."
        ),
    )
    parser.add_argument("paths", nargs="+", help="image files and folders")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="a .keras model (default: the shipped model)")
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

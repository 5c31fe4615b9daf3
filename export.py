"""Export a trained model for serving.

    python export.py --model models/deepfake_detector.keras --format savedmodel --output serving/deepfake_detector/1
    python export.py --model models/deepfake_detector.keras --format tflite --output exports/tflite
    python export.py --model run.keras --format flip-averaged --data-dir ../shared/data/lfw-faceswap --output run.flip.keras

savedmodel: a TensorFlow SavedModel for TensorFlow Serving; its serving_default signature
takes encoded image files (image_bytes: string [None]) and returns fake_probability
(float32 [None]), decoding and resizing in TensorFlow ops.
tflite: model.tflite, taking one preprocessed image (uint8 [1, S, S, 3] RGB) and returning
fake_probability; TFLite has no general image decoder.
Both folders also get deepfake_detector.json, the model's metadata (threshold, class order,
input size). See deepfake_detector/export.py for the preprocessing differences.
flip-averaged: a .keras model whose network averages each image's score with its mirror
image's, as train.py's mobilenet_v2 recipe saves it; for a model trained without that.
The threshold is chosen again on the Validation split of --data-dir, by the model's rule.
"""

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    from deepfake_detector.detector import DEFAULT_MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="a .keras model saved by train.py (default: the shipped model)")
    parser.add_argument("--format", default="savedmodel", choices=["savedmodel", "tflite", "flip-averaged"], help="default: savedmodel")
    parser.add_argument("--output", type=Path, required=True,
                        help="a new (or empty) folder to write the export into; for flip-averaged, a .keras file")
    parser.add_argument("--data-dir", type=Path, help="flip-averaged: the dataset whose Validation split sets the threshold")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from deepfake_detector.data import DatasetError
    from deepfake_detector.export import ExportError, export
    from deepfake_detector.model import ModelFileError
    from deepfake_detector.training import add_flip_average

    try:
        if args.format == "flip-averaged":
            if args.data_dir is None:
                raise ExportError("flip-averaged needs --data-dir: its Validation split sets the new threshold")
            if args.output.suffix != ".keras":
                raise ExportError(f"flip-averaged writes a .keras file; {args.output} does not end in .keras")
            path, metrics = add_flip_average(args.model, args.data_dir, args.output)
            val, test = metrics["validation"], metrics["test"]
            print(f"validation roc_auc {val['roc_auc']:.4f} | test roc_auc {test['roc_auc']:.4f} "
                  f"accuracy {test['accuracy']:.4f} (threshold {test['threshold']:.3f})")  # fmt: skip
        else:
            path = export(args.model, args.format, args.output)
    except (ModelFileError, ExportError, DatasetError) as error:
        print(f"export.py: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.model} as {args.format} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

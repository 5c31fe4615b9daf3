"""Export a trained model for serving.

    python export.py --model models/deepfake_detector.keras --format savedmodel --output serving/deepfake_detector/1
    python export.py --model models/deepfake_detector.keras --format tflite --output exports/tflite
    python export.py --model run.keras --format flip-averaged --data-dir data/lfw-faceswap --output run.flip.keras
    python export.py --model deepfake_detector_model.keras --format adopt --output models/tutorial.keras [--data-dir data]
    python export.py --model M.keras --format int8 --data-dir data/lfw-faceswap --data-dir data/dfdc-faces --output M.int8.keras

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
adopt: a .keras model trained by the original tutorial's train.py (which has no metadata)
saved as one of ours: classes as image_dataset_from_directory ordered them (Fake, Real), its
input size, the nearest-neighbour resize of the tutorial's inference.py, threshold 0.5; with
--data-dir, the threshold is chosen on its Validation split (EER) instead.
int8: the same .keras model with an int8 TFLite copy inside for the web server, quantized after
training and calibrated on Validation images of every --data-dir; the copy is kept only if its
Test ROC AUC is within 0.002 of the float model's on every one (the figures go into the
metadata either way; /healthz shows them). See deepfake_detector/quantize.py.
"""

import argparse
import logging
import sys
from pathlib import Path

from deepfake_detector.cli import choices_help, run
from deepfake_detector.recipes import EXPORT_FORMATS

PROG = "export.py"
DEFAULT_FORMAT = "savedmodel"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras model saved by train.py, for adopt one saved by the original "
        "tutorial's (default: the shipped models/deepfake_detector.keras)",
    )
    parser.add_argument(
        "--format", default=DEFAULT_FORMAT, choices=EXPORT_FORMATS, help=choices_help(EXPORT_FORMATS, DEFAULT_FORMAT)
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="a new (or empty) folder to write the export into; for flip-averaged and adopt, a .keras file",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        action="append",
        help="flip-averaged (required) and adopt (optional): the dataset whose Validation split sets the threshold; "
        "int8 (required, repeatable): the datasets it is calibrated on (Validation) and checked on (Test)",
    )
    return parser


def export(args: argparse.Namespace) -> int:
    from deepfake_detector.cli import default_model

    model, why = default_model(PROG, args.model)
    print(f"model: {model} ({why})")
    from deepfake_detector.export import export as export_model

    path, measured = export_model(model, args.format, args.output, args.data_dir)
    if measured:
        print(measured)
    print(f"exported {model} as {args.format} to {path}")
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run(PROG, export, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

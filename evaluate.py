"""Measure a model on a folder of Real/ and Fake/ images, optionally under perturbations.

    python evaluate.py --data-dir data                  # the Test split of the dataset in data/
    python evaluate.py --model models/x.keras --data-dir photos --json report.json --plots plots
    python evaluate.py --data-dir data --perturb "jpeg:30,50,75,90;blur:1,2;resize:0.5,0.25"
    python evaluate.py --archive deepfake-and-real-images.zip --data-dir data   # the Kaggle zip, extracted first
    python evaluate.py --data-dir A --data-dir B --perturb "jpeg:50"   # one row per source, and all pooled

--data-dir is a folder holding Real/ and/or Fake/, or a dataset with Train/Validation/Test
(--split picks one). Repeated, each folder is a source, known by its folder's name: the report
has one row per source and a pooled row (every image of them all once). Fake is the positive
class. Bad input exits with status 2.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from deepfake_detector.cli import fail, report_path, run
from deepfake_detector.data import SPLITS
from deepfake_detector.errors import PerturbationSpecError

PROG = "evaluate.py"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras model saved by train.py (default: the shipped models/deepfake_detector.keras)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        action="append",
        help="folder with Real/ and Fake/, or a dataset root with Train/Validation/Test; "
        "repeat it for one row per source and a pooled row",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        help="a dataset zip (the Kaggle archive) to extract into --data-dir first, unless a dataset is already there",
    )
    parser.add_argument(
        "--split",
        default="Test",
        choices=SPLITS,
        help="split to use when --data-dir is a dataset root (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write the report (metrics and context) to this JSON file")
    parser.add_argument(
        "--plots", type=Path, help="write roc.png, confusion_matrix.png and score_histogram.png to this folder"
    )
    parser.add_argument(
        "--perturb",
        metavar="SPEC",
        help='also score perturbed copies, e.g. "jpeg:30,50,75,90;blur:1,2;resize:0.5,0.25"',
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default: %(default)s)")
    parser.add_argument(
        "--frames",
        type=int,
        default=32,
        help="frames sampled per video when the folders hold videos (default: %(default)s)",
    )
    return parser


def evaluate(args: argparse.Namespace) -> int:
    # Input is checked before TensorFlow is imported: a typo costs no start-up time.
    from deepfake_detector.data import DatasetHandler
    from deepfake_detector.evaluation import evaluate_folder, evaluate_sources, resolve_folder
    from deepfake_detector.perturbations import parse_spec
    from deepfake_detector.recipes import DataConfig

    if args.batch_size < 1:
        return fail(PROG, f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        perturbations = parse_spec(args.perturb) if args.perturb is not None else []
    except PerturbationSpecError as error:
        return fail(PROG, f"--perturb: {error}")
    if args.archive is not None:
        DatasetHandler(
            dataset_download_dir=args.data_dir[0], config=DataConfig(archive=str(args.archive))
        ).unzip_dataset()
    resolved = [resolve_folder(data_dir, args.split) for data_dir in args.data_dir]
    names = [Path(data_dir).resolve().name for data_dir in args.data_dir]
    if len(set(names)) < len(names):
        return fail(PROG, "two --data-dir folders have the same name; a source is known by its folder's name")

    from deepfake_detector.cli import default_model
    from deepfake_detector.detector import Detector

    model_path, why = default_model(PROG, args.model)
    if not model_path.is_file():
        return fail(
            PROG, f"no model at {model_path}; train one with `python train.py --data-dir DATA` or pass --model PATH"
        )
    print(f"model: {model_path} ({why})")
    detector = Detector.from_path(model_path)
    split = resolved[0][1]
    from deepfake_detector.evaluation import has_videos

    if len(resolved) == 1 and has_videos(resolved[0][0]):  # a folder of Real/ and Fake/ videos: video-level metrics
        return _evaluate_videos(args, detector, resolved[0][0], split, model_path)
    try:
        if len(resolved) == 1:
            report = evaluate_folder(
                detector, resolved[0][0], perturbations, batch_size=args.batch_size, plots_dir=args.plots
            )
        else:
            folders = {name: folder for name, (folder, _) in zip(names, resolved)}
            report = evaluate_sources(
                detector, folders, perturbations, batch_size=args.batch_size, plots_dir=args.plots
            )
    except OSError as error:  # e.g. the --plots folder cannot be written
        return fail(PROG, error)
    report = {"model_path": report_path(model_path), "split": split, **report}
    print_report(report)
    return write_report(report, args)


def print_report(report: dict) -> None:
    """One column per condition for one folder; one row per source and a pooled row for several."""
    from deepfake_detector.metrics import format_rows, format_table

    if "sources" in report:
        rows = {**report["sources"], "pooled": report["pooled"]}
        print(f"{report['model']} on {', '.join(rows)} (threshold {report['threshold']:.3f}, fake is positive)")
        for condition in ["clean", *report["pooled"].get("perturbations", {})]:
            print(f"\n[{condition}]")
            print(
                format_rows(
                    {
                        name: row if condition == "clean" else row["perturbations"][condition]
                        for name, row in rows.items()
                    }
                )
            )
        skipped = sum(row["n_skipped"] for row in report["sources"].values())
    else:
        rows = {"clean": report, **report.get("perturbations", {})}
        print(f"{report['model']} on {report['data_dir']} (threshold {report['threshold']:.3f}, fake is positive)")
        print(format_table(rows))
        for name, metrics in rows.items():
            for note in metrics["notes"]:
                print(f"note ({name}): {note}")
        skipped = report["n_skipped"]
    if skipped:
        print(f"skipped {skipped} unreadable file(s); see the JSON report for which and why")


def write_report(report: dict, args: argparse.Namespace) -> int:
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as error:
            return fail(PROG, f"cannot write {args.json}: {error}")
        print(f"wrote {args.json}")
    if args.plots:
        print(f"plots in {args.plots}")
    return 0


def _evaluate_videos(args: argparse.Namespace, detector, folder: Path, split, model_path: Path) -> int:
    """Each video scored as ``inference.py predict`` scores it (its highest track); metrics per video."""
    from deepfake_detector.evaluation import evaluate_video_folder
    from deepfake_detector.metrics import format_table

    if args.perturb:
        return fail(PROG, "--perturb is for images, not videos")
    report = {
        "model_path": report_path(model_path),
        "split": split,
        **evaluate_video_folder(detector, folder, args.frames),
    }
    print(
        f"{report['model']} on {report['n_videos']} videos in {folder} ({report['frames']} frames each, "
        f"threshold {report['threshold']:.3f}, fake is positive)"
    )
    print(format_table({"videos": report}))
    if report["n_skipped"]:
        print(f"skipped {report['n_skipped']} unreadable video(s); see the JSON report for which and why")
    return write_report(report, args)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run(PROG, evaluate, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

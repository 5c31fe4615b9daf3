"""Train a deepfake detector: ``python train.py`` (the original recipe on the Kaggle data).

It writes ``deepfake_detector_model.keras`` in the working folder, keeping the best epoch so
far in ``deepfake_detector_model_best.keras`` while it trains, as the original tutorial did;
``python inference.py`` then serves it. ``python train.py --data-dir data/lfw-faceswap``
trains offline on any folder with Train/Validation/Test, each holding Real/ and Fake/ (that one is
written by ``python -m scripts.rebuild_data lfw-faceswap``; docs/data.md).

Scaling out: ``--distribute mirrored`` trains on every GPU of this machine;
``--distribute multiworker`` on several machines, one process each, described by the
``TF_CONFIG`` environment variable. ``--batch-size`` is per replica. A run that is killed
continues from its last finished epoch when the same command is run again.
"""

import argparse
import dataclasses
import logging
import sys

from deepfake_detector.cli import choices_help, recipe_defaults, run
from deepfake_detector.recipes import (
    ARCHITECTURES,
    AUGMENTATIONS,
    DATASET_FAKES,
    FAKES,
    FRAMINGS,
    SELF_BLEND_AUGMENTATION,
    SELF_BLENDED_SOURCE,
    STRATEGIES,
    THRESHOLD_RULES,
    VERBOSITY,
    TrainConfig,
)

PROG = "train.py"
#: The tutorial's names, importable from here as in the tutorial (``from train import TrainModel``);
#: loaded on first use, so ``--help`` does not wait for TensorFlow.
TUTORIAL_NAMES = {
    "DatasetHandler": "deepfake_detector.data",
    "DeepfakeDetectorModel": "deepfake_detector.model",
    "TrainModel": "deepfake_detector.training",
}


def __getattr__(name: str):
    if name in TUTORIAL_NAMES:
        import importlib

        return getattr(importlib.import_module(TUTORIAL_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_args_parser() -> argparse.ArgumentParser:
    """Every option is a ``TrainConfig`` field of the same name; those left out take the recipe's value."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default=TrainConfig.arch, choices=ARCHITECTURES, help=choices_help(ARCHITECTURES, TrainConfig.arch)
    )
    parser.add_argument(
        "--data-dir",
        action="append",
        help="dataset folder; the Kaggle archive is fetched here if it is empty (default: "
        f"{TrainConfig.data_dir}). Repeat it to train on several datasets at once, each a source "
        "known by its folder's name, drawn in shares every epoch (--mix)",
    )
    parser.add_argument(
        "--mix",
        metavar="SOURCE=WEIGHT,...",
        help="with several --data-dir: each source's share of an epoch, e.g. lfw-faceswap=2,dfdc-faces=1 "
        f"(a source not named weighs 1; with --fakes both, {SELF_BLENDED_SOURCE} names the "
        "self-blends); real and fake are balanced within each source (default: equal shares)",
    )
    parser.add_argument(
        "--framing",
        choices=FRAMINGS,
        help=f"what of each training image the model sees: {choices_help(FRAMINGS)} ({recipe_defaults('framing')})",
    )
    parser.add_argument("--archive", help="a deepfake-and-real-images zip you already have")
    parser.add_argument("--sha256", help="expected SHA-256 of the archive")
    parser.add_argument(
        "--output",
        default=TrainConfig.output,
        help="where to save the model, a .keras file; its best epoch so far is kept beside it as "
        "NAME_best.keras (default: %(default)s, in the working folder)",
    )
    parser.add_argument("--epochs", type=int, help=recipe_defaults("epochs"))
    parser.add_argument("--learning-rate", type=float, help=recipe_defaults("learning_rate"))
    parser.add_argument("--batch-size", type=int, help=recipe_defaults("batch_size"))
    parser.add_argument("--seed", type=int, help=f"random seed ({recipe_defaults('seed')})")
    parser.add_argument(
        "--threshold-rule",
        choices=THRESHOLD_RULES,
        help="how the decision threshold is chosen on Validation: "
        + choices_help(THRESHOLD_RULES, TrainConfig.threshold_rule),
    )
    parser.add_argument(
        "--cache-dir",
        help="where each split is cached decoded at the input size, once, for every "
        "epoch and later run (default: the user's cache folder, "
        "$XDG_CACHE_HOME/deepfake-detector/datasets or ~/.cache/deepfake-detector/"
        "datasets, never the data folder; about 9.4 GB for the Kaggle archive at 128 px)",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        help="cap on training steps per epoch, for trials and benchmarks "
        "(Validation and Test are still scored whole); with "
        "several --data-dir, the epoch's length (default: as many "
        "images as the sources' Train splits hold)",
    )
    parser.add_argument("--max-images-per-split", type=int, help="use a random subset, for quick trials")
    parser.add_argument("--image-size", type=int, help=f"square input side in pixels ({recipe_defaults('image_size')})")
    parser.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        help=f"training augmentation: {choices_help(AUGMENTATIONS)} ({recipe_defaults('augment')}; "
        f"{SELF_BLEND_AUGMENTATION} with --fakes other than {DATASET_FAKES})",
    )
    parser.add_argument("--fakes", choices=FAKES, help="training fakes: " + choices_help(FAKES, TrainConfig.fakes))
    parser.add_argument(
        "--other-faces",
        type=float,
        metavar="SHARE",
        help="with --fakes self-blended or both: the share of blended fakes whose source is another "
        "real face aligned onto the face by its landmarks (Face X-ray's blended images) rather "
        "than the face itself (default: 0, self-blends only)",
    )
    parser.add_argument(
        "--frozen-blocks",
        type=int,
        help="pretrained backbones: leading feature blocks (the stem is block 0) kept at their ImageNet "
        f"weights ({recipe_defaults('frozen_blocks')})",
    )
    parser.add_argument(
        "--ema-momentum",
        type=float,
        help="save an exponential moving average of the weights with this momentum per step; "
        f"0 turns it off ({recipe_defaults('ema_momentum')})",
    )
    parser.add_argument(
        "--flip-average",
        action=argparse.BooleanOptionalAction,
        help="save a model whose network averages each image's score with its mirror image's "
        f"({recipe_defaults('flip_average')})",
    )
    parser.add_argument(
        "--distribute",
        default=TrainConfig.distribute,
        choices=STRATEGIES,
        help=choices_help(STRATEGIES, TrainConfig.distribute),
    )
    parser.add_argument(
        "--cluster-timeout",
        type=float,
        default=TrainConfig.cluster_timeout,
        metavar="SECONDS",
        help="--distribute multiworker: how long a worker waits for every other one to start before "
        "it stops with an error naming those not listening (default: %(default)g)",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute in float16 on GPUs (mixed_float16); refused without a GPU",
    )
    parser.add_argument(
        "--backup-dir",
        help="where training state is backed up every epoch, to resume (default: .NAME.backup/ beside --output)",
    )
    parser.add_argument("--verbose", type=int, choices=VERBOSITY, help=choices_help(VERBOSITY, TrainConfig.verbose))
    return parser


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The recipe of ``--arch`` with every option given on the command line in place of its value."""
    options = dict(vars(args))
    if options.get("data_dir"):  # one folder stays a plain string, as the tutorial's config has it
        options["data_dir"] = options["data_dir"][0] if len(options["data_dir"]) == 1 else options["data_dir"]
    overrides = {field.name: options[field.name] for field in dataclasses.fields(TrainConfig) if field.name in options}
    return TrainConfig.for_arch(overrides.pop("arch"), **overrides)


def train(config: TrainConfig) -> int:
    from deepfake_detector.training import TrainModel

    trainer = TrainModel(config=config)
    history, evaluation_metrics = trainer.run_training()
    if trainer.output_path is None:
        print("worker finished; the chief worker saved the model")
        return 0
    test = trainer.metrics["test"]
    print(
        f"saved {trainer.output_path} | test: loss {test['log_loss']:.4f} accuracy {test['accuracy']:.4f} "
        f"precision {test['precision']:.4f} recall {test['recall']:.4f} roc_auc {test['roc_auc']:.4f} "
        f"(threshold {test['threshold']:.3f}; fake is positive)"
    )
    # The tutorial's line: [loss, accuracy, precision, recall] on Test at 0.5 (fake positive here).
    print(f"evaluation metrics: {evaluation_metrics}")
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run(PROG, train, config_from(args))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

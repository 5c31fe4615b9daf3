"""Train a deepfake detector: ``python train.py`` (the original recipe on the Kaggle data).

It writes ``deepfake_detector_model.keras`` in the working folder, keeping the best epoch so
far in ``deepfake_detector_model_best.keras`` while it trains, as the original tutorial did;
``python inference.py`` then serves it. ``python train.py --data-dir ../shared/data/lfw-faceswap``
trains offline on any folder with Train/Validation/Test, each holding Real/ and Fake/.

Scaling out: ``--distribute mirrored`` trains on every GPU of this machine;
``--distribute multiworker`` on several machines, one process each, described by the
``TF_CONFIG`` environment variable. ``--batch-size`` is per replica. A run that is killed
continues from its last finished epoch when the same command is run again.
"""

import argparse
import logging
import sys

#: The tutorial's names, importable from here as in the tutorial (``from train import TrainModel``);
#: loaded on first use, so ``--help`` does not wait for TensorFlow.
TUTORIAL_NAMES = {
    "DatasetHandler": "deepfake_detector.dataset",
    "DeepfakeDetectorModel": "deepfake_detector.model",
    "TrainModel": "deepfake_detector.training",
}


def __getattr__(name: str):
    if name in TUTORIAL_NAMES:
        import importlib

        return getattr(importlib.import_module(TUTORIAL_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="seed", choices=["seed", "mobilenet_v2", "efficientnet_lite0"],
                        help="seed: the original 4-block CNN and recipe (default); "
                             "mobilenet_v2: the recipe of the shipped model; "
                             "efficientnet_lite0: the same fine-tuning recipe on ImageNet EfficientNet-Lite0")
    parser.add_argument("--data-dir", default="data", help="dataset folder; the Kaggle archive is fetched here if it is empty (default: data)")
    parser.add_argument("--archive", help="a deepfake-and-real-images zip you already have")
    parser.add_argument("--sha256", help="expected SHA-256 of the archive")
    parser.add_argument("--output", default="deepfake_detector_model.keras",
                        help="where to save the model, a .keras file; its best epoch so far is kept beside it as "
                             "NAME_best.keras (default: deepfake_detector_model.keras, in the working folder)")
    parser.add_argument("--epochs", type=int, help="default: 50 (seed), 15 (pretrained backbones)")
    parser.add_argument("--learning-rate", type=float, help="default: 1e-4 (seed), 6e-4 (pretrained backbones)")
    parser.add_argument("--batch-size", type=int, help="default: 64")
    parser.add_argument("--seed", type=int, help="random seed (default: 1337)")
    parser.add_argument("--threshold-rule", choices=["eer", "balanced_accuracy"],
                        help="how the decision threshold is chosen on Validation (default: eer)")
    parser.add_argument("--cache-dir", help="where each split is cached decoded at the input size, once, for every "
                                            "epoch and later run (default: DATA/.cache, or a per-user folder "
                                            "if DATA cannot be written; about 9.4 GB for the Kaggle archive at 128 px)")
    parser.add_argument("--steps-per-epoch", type=int, help="cap on training steps per epoch, for trials and benchmarks "
                                                            "(Validation and Test are still scored whole)")
    parser.add_argument("--max-images-per-split", type=int, help="use a random subset, for quick trials")
    parser.add_argument("--image-size", type=int, help="square input side in pixels (default: 160 for mobilenet_v2, else 128)")
    parser.add_argument("--augment", choices=["none", "light", "full", "selfblend"],
                        help="training augmentation: none (seed default), full (pretrained backbones' default: flip, shift, "
                             "rescale, blur, JPEG), light (flip, shift, JPEG), selfblend (full plus colour jitter; "
                             "the default with --fakes self-blended or both)")
    parser.add_argument("--fakes", choices=["dataset", "self-blended", "both"],
                        help="training fakes: dataset (its own, default); self-blended (each real face blended with an "
                             "altered copy of itself, the dataset's fakes unused: Test then measures fakes never seen); both")
    parser.add_argument("--frozen-blocks", type=int,
                        help="pretrained backbones: leading feature blocks (the stem is block 0) kept at their ImageNet weights "
                             "(default: 4 for mobilenet_v2, else 0)")
    parser.add_argument("--ema-momentum", type=float,
                        help="save an exponential moving average of the weights with this momentum per step; "
                             "0 turns it off (default: 0.998 for pretrained backbones, 0 for seed)")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction,
                        help="save a model whose network averages each image's score with its mirror image's "
                             "(default: on for the pretrained backbones, off for seed)")
    parser.add_argument("--distribute", default="none", choices=["none", "mirrored", "multiworker"],
                        help="none: one device (default); mirrored: every GPU of this machine (or the CPU); "
                             "multiworker: one process per machine, configured by TF_CONFIG")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="compute in float16 on GPUs (mixed_float16); refused without a GPU")
    parser.add_argument("--backup-dir", help="where training state is backed up every epoch, to resume "
                                             "(default: .NAME.backup/ beside --output)")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], help="0 silent, 1 progress bar (default), 2 one line per epoch")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from deepfake_detector.data import DatasetError
    from deepfake_detector.training import TrainConfig, TrainingSetupError, TrainModel

    config = TrainConfig.for_arch(
        args.arch, data_dir=args.data_dir, archive=args.archive, sha256=args.sha256, output=args.output,
        epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
        threshold_rule=args.threshold_rule, max_images_per_split=args.max_images_per_split, cache_dir=args.cache_dir,
        steps_per_epoch=args.steps_per_epoch,
        image_size=args.image_size, frozen_blocks=args.frozen_blocks, augment=args.augment, fakes=args.fakes, ema_momentum=args.ema_momentum,
        flip_average=args.flip_average, distribute=args.distribute, mixed_precision=args.mixed_precision,
        backup_dir=args.backup_dir, verbose=args.verbose,
    )  # fmt: skip
    trainer = TrainModel(config=config)
    try:
        history, evaluation_metrics = trainer.run_training()
    except (DatasetError, TrainingSetupError) as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

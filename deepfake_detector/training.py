"""One training run: data, model, callbacks, threshold choice, test metrics, saved model.

The same run scales out with ``tf.distribute`` (``TrainConfig.distribute``): several GPUs
of one machine (``MirroredStrategy``) or several machines (``MultiWorkerMirroredStrategy``,
configured by ``TF_CONFIG``). Training state is backed up every epoch, so a run that is
killed (a preempted machine) continues from its last finished epoch when started again
with the same command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deepfake_detector import cache, data, evaluation, labels
from deepfake_detector.distribute import (
    STRATEGIES,
    STRATEGY_CLASSES,
    ResumableBackup,
    TrainingSetupError,
    single_device_copy,
    task_name,
    input_shard,
    work_around_keras_multi_worker_gaps,
    backup_dir_for,
    build_training_model,
    is_chief,
    make_strategy,
    read_tf_config,
)
from deepfake_detector.model import (
    PRETRAINED_ARCHITECTURES,
    ModelFileError,
    ModelMetadata,
    flip_averaged,
    freeze_leading_blocks,
    load_model,
    save_model,
)
from deepfake_detector.pipeline import (
    AUGMENTATIONS,
    FAKE_INDEX,
    FAKES,
    REAL_INDEX,
    BlendedSource,
    ImageSource,
    images_only,
    make_dataset,
    open_splits,
    split_landmarks,
)
from deepfake_detector.preprocessing import PreprocessingConfig

log = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    """A training recipe. The defaults are the original tutorial's (``arch='seed'``)."""

    arch: str = "seed"  # "seed": the original 4-block CNN; "mobilenet_v2" (the shipped recipe), "efficientnet_lite0"
    data_dir: str = "data"  # a folder with Train/Validation/Test (downloaded here if empty)
    archive: str | None = None  # a Kaggle zip the user already has
    sha256: str | None = None  # checksum of the downloaded archive, when known
    output: str = "models/deepfake_detector.keras"
    image_size: int = 128  # the original recipe's input side
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-4  # the original recipe; Adam
    optimizer: str = "adam"  # "adam" (original) or "adamw"
    weight_decay: float = 0.0  # AdamW only
    schedule: str = "plateau"  # "plateau": ReduceLROnPlateau x0.1/5 (original); "cosine"
    warmup_epochs: int = 0  # cosine only: linear warm-up
    early_stopping_patience: int = 10  # on val_loss, best weights restored; 0 turns it off
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0  # above 0: the saved weights are an exponential moving average of the trained ones
    augment: str = "none"  # "none", "light", "full" or "selfblend" (pipeline.AUGMENTATIONS)
    fakes: str = "dataset"  # "dataset", "self-blended" (real images and their self-blends only) or "both" (pipeline.FAKES)
    frozen_blocks: int = 0  # pretrained backbones: leading feature blocks kept at their ImageNet weights
    pretrained: bool = True  # ImageNet weights for mobilenet_v2 and efficientnet_lite0
    flip_average: bool = False  # save a model that averages each image's score with its mirror's
    threshold_rule: str = "eer"  # how the decision threshold is chosen on Validation
    seed: int = 1337
    max_images_per_split: int | None = None  # for quick trials; None uses everything
    steps_per_epoch: int | None = None  # cap on training steps per epoch (trials, benchmarks); Validation and Test stay whole
    cache_dir: str | None = None  # where each split's decoded images are cached; None: DATA/.cache (cache.default_cache_dir)
    distribute: str = "none"  # "none": one device; "mirrored": every local GPU (or the CPU); "multiworker": TF_CONFIG
    mixed_precision: bool = False  # mixed_float16 compute on GPUs; the output layer stays float32
    backup_dir: str | None = None  # per-epoch training state for resuming; None: .NAME.backup/ beside output
    verbose: int = 1  # Keras fit: 1 progress bar, 2 one line per epoch, 0 silent

    @classmethod
    def for_arch(cls, arch: str, **overrides) -> "TrainConfig":
        """The recipe defaults for an architecture, then ``overrides`` (None values ignored)."""
        recipe = dict(arch=arch)
        if arch in PRETRAINED_ARCHITECTURES:  # one fine-tuning recipe for both backbones
            recipe.update(
                epochs=15, learning_rate=6e-4, optimizer="adamw", weight_decay=0.02, schedule="cosine",
                warmup_epochs=1, early_stopping_patience=0, label_smoothing=0.05, augment="full",
                flip_average=True, ema_momentum=0.998,
            )  # fmt: skip
        if arch == "mobilenet_v2":
            # The shipped model: 160 px input (the 128 px faces upscaled), blocks 0-3 frozen, which
            # makes its CPU step about as cheap as a fully trained 128 px step.
            recipe.update(image_size=160, frozen_blocks=4)
        if overrides.get("fakes") not in (None, "dataset"):
            recipe.update(augment="selfblend")  # SBI's colour jitter on top of the recipe's
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**recipe)


# ----------------------------------------------------------------------------- training


def prepare_data_dir(config: TrainConfig) -> Path:
    """The dataset root: given, extracted from ``--archive``, or downloaded from Kaggle."""
    directory = Path(config.data_dir)
    archive_name = "deepfake-and-real-images.zip"
    try:
        return data.find_dataset_root(directory)
    except data.DatasetError:
        # Download only into an empty folder or one holding our own partial download.
        ours = {archive_name, archive_name + ".part", "extracted"}
        if directory.exists() and not config.archive and any(p.name not in ours for p in directory.iterdir()):
            raise
    archive = Path(config.archive) if config.archive else directory / archive_name
    if not config.archive:
        log.info("downloading the Kaggle archive to %s", archive)
        data.download(data.KAGGLE_URL, archive, sha256=config.sha256)
    elif config.sha256:
        data._check_sha256(archive, config.sha256, remove=False)
    return data.find_dataset_root(data.extract(archive, directory / "extracted"))


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    if config.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch)
        warmup = config.warmup_epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else config.learning_rate, decay_steps=max(1, total - warmup),
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
        )  # fmt: skip
    elif config.schedule == "plateau":
        learning_rate = config.learning_rate
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}")
    # Weight averaging: the optimizer keeps the average beside the weights (it is backed up
    # with them) and writes it into the model when fit ends, before the threshold is chosen.
    ema = dict(use_ema=True, ema_momentum=config.ema_momentum) if config.ema_momentum else {}
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, **ema)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay, **ema)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.AUC(name="auc"),
        ],
    )


def make_callbacks(config: TrainConfig, checkpoint: Path | None = None) -> list[keras.callbacks.Callback]:
    """Early stopping and the plateau schedule, as the recipe asks; the learning rate is logged.

    With ``checkpoint``, the weights of the best epoch so far (lowest val_loss) are kept there
    while training runs, as the original recipe did.
    """
    callbacks = []
    if checkpoint is not None:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            checkpoint, monitor="val_loss", save_best_only=True, save_weights_only=True))
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=5, min_lr=1e-7))
    callbacks.append(LearningRateLogger())
    return callbacks


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``learning_rate`` (its value at the end of each epoch) to the history."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "learning_rate" not in logs:  # ReduceLROnPlateau already adds it
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))


class ThroughputLogger(keras.callbacks.Callback):
    """Logs when the first training step is done, and each epoch's training images/s after it."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.first_step_logged = False

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.steps = None, 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if not self.first_step_logged:
            log.info("first training step done")
            self.first_step_logged = True
        if self.start is None:  # the epoch's first step (tracing, pipeline warm-up) is left out
            self.start = now
        else:
            self.steps += 1
            self.end = now

    def on_epoch_end(self, epoch, logs=None):
        if self.steps:
            rate = self.steps * self.batch_size / (self.end - self.start)
            log.info("epoch %d: %.1f training images/s over %d steps", epoch + 1, rate, self.steps)


def predict_scores(model: keras.Model, source: ImageSource, batch_size: int = 128) -> np.ndarray:
    """Model outputs, P(class 1), for every image of ``source`` in order (P(fake) in ``TRAINING_CLASS_ORDER``).

    The images stream from ``source`` (a split's cache), a batch at a time.
    """
    dataset = images_only(make_dataset(source, batch_size, training=False))
    return model.predict(dataset, verbose=0).ravel().astype(np.float64)


# ----------------------------------------------------------------------------- scaling out


def check_config(config: TrainConfig) -> None:
    """Refuse, before any work, what this machine cannot run.

    Raises:
        TrainingSetupError: unknown strategy, mixed precision without a GPU, frozen blocks on
            an architecture without them, or a missing or malformed ``TF_CONFIG`` for
            multi-worker training.
    """
    if config.distribute not in STRATEGIES:
        raise TrainingSetupError(f"unknown distribution {config.distribute!r}; choose one of {', '.join(STRATEGIES)}")
    # Listing physical devices does not start the TF runtime, which multi-worker set-up needs untouched.
    if config.mixed_precision and not tf.config.list_physical_devices("GPU"):
        raise TrainingSetupError(
            "mixed precision (mixed_float16) needs a GPU and none is visible; float16 is no faster on CPUs"
        )
    if not 0.0 <= config.ema_momentum < 1.0:
        raise TrainingSetupError(f"the weight-average momentum must be at least 0 (off) and below 1, got {config.ema_momentum}")
    if Path(config.output).suffix != ".keras":
        raise TrainingSetupError(f"--output {config.output}: a model file must end in .keras, or Keras cannot load it back")
    if config.fakes not in FAKES:
        raise TrainingSetupError(f"unknown fakes {config.fakes!r}; choose one of {', '.join(FAKES)}")
    if config.fakes == "both" and config.distribute == "multiworker":
        raise TrainingSetupError("--fakes both cannot be split into equal shares across workers; "
                                 "use dataset or self-blended with --distribute multiworker")  # fmt: skip
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise TrainingSetupError(f"steps per epoch must be at least 1, got {config.steps_per_epoch}")
    if config.augment not in ("none", *AUGMENTATIONS):
        raise TrainingSetupError(f"unknown augmentation {config.augment!r}; choose none, {', '.join(AUGMENTATIONS)}")
    if config.frozen_blocks and config.arch not in PRETRAINED_ARCHITECTURES:
        raise TrainingSetupError(f"frozen blocks are an option of the pretrained backbones "
                                 f"({', '.join(PRETRAINED_ARCHITECTURES)}); {config.arch} has none")  # fmt: skip
    if config.distribute == "multiworker":
        read_tf_config()


# ----------------------------------------------------------------------------- one run


def train(config: TrainConfig) -> tuple[Path | None, dict]:
    """Run one training; returns the saved model's path and its metadata's metrics.

    With several workers every worker trains, but only the chief writes the model, its
    metadata and its plots; the others write them to a temporary folder that is then
    removed (as the TF multi-worker guide does) and return ``None`` as the path.

    Raises:
        TrainingSetupError: a config this machine cannot run (see :func:`check_config`).
        deepfake_detector.data.DatasetError: missing or one-class data.
    """
    check_config(config)
    strategy = make_strategy(config.distribute)  # first: multi-worker set-up needs a fresh runtime
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    chief = is_chief(strategy)
    task = task_name(strategy)
    log.info("distribute: %s (%s), %d replica(s)%s; global batch %d = %d per replica x %d",
             config.distribute, STRATEGY_CLASSES[config.distribute], replicas,
             f", this process is {task}" if task else "", global_batch, config.batch_size, replicas)  # fmt: skip
    if config.mixed_precision:
        log.info("mixed precision: mixed_float16 compute, float32 variables and output")

    # The recipe decides whether a backup can be resumed; where it is written and how chatty
    # the run is do not.
    recipe = {k: v for k, v in dataclasses.asdict(config).items()
              if k not in ("backup_dir", "verbose", "flip_average", "cache_dir")}  # fmt: skip
    backup = ResumableBackup(backup_dir_for(config, strategy), recipe)
    backup.check_same_run()
    # A resumed run re-seeds its shuffles and dropout with the epochs done: restarted with the
    # same seed it would replay the first epochs' batches and masks, which the network has fitted.
    run_seed = config.seed + backup.saved_epoch()
    keras.utils.set_random_seed(run_seed)
    root = prepare_data_dir(config)
    log.info("dataset: %s", root)
    cache_dir = Path(config.cache_dir) if config.cache_dir else cache.default_cache_dir(config.data_dir)
    splits = open_splits(root, config.image_size, cache_dir, config.max_images_per_split, config.seed)
    train_source, validation, blend_landmarks, class_weight = training_sources(splits, config)
    shard = input_shard(strategy)  # several workers: each reads its share of the cache
    train_ds = make_dataset(train_source, global_batch, True, config.augment, run_seed, shard, blend_landmarks)
    val_ds = make_dataset(validation, global_batch, False, shard=shard)
    with strategy.scope():
        model = build_training_model(config)
        if config.frozen_blocks:
            frozen = freeze_leading_blocks(model, config.frozen_blocks)
            log.info("frozen: %s blocks 0-%d (%d layers)", config.arch, config.frozen_blocks - 1, frozen)
        compile_model(model, config, steps_per_epoch=config.steps_per_epoch or len(train_ds))

    # Before the backup in the list: it records the logs the callbacks before it completed.
    # Every worker writes (saving takes part in collective ops); only the chief's files stay.
    output, scratch = Path(config.output), None
    if not chief:
        scratch = Path(tempfile.mkdtemp(prefix="deepfake-detector-worker-"))
        output = scratch / output.name
    best_checkpoint = output.with_name(f".{output.stem}.best.weights.h5")
    callbacks = [*make_callbacks(config, best_checkpoint), ThroughputLogger(global_batch), backup]
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        work_around_keras_multi_worker_gaps(model)
    start = time.time()
    with strategy.scope():
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                  class_weight=class_weight, verbose=config.verbose, callbacks=callbacks)  # fmt: skip
    train_seconds = time.time() - start
    # The plateau recipe restores its best epoch through EarlyStopping; the cosine recipe keeps
    # its last epoch (the schedule has annealed).
    history = backup.history  # every epoch, also those before a resume
    # A plain float32 copy without the optimizer: the saved file is the same whatever the
    # strategy, and a third of the size (AdamW keeps two slots per weight).
    model = single_device_copy(model, config)
    if config.flip_average:
        model = flip_averaged(model)

    threshold, metrics = choose_threshold_and_measure(model, validation, splits["Test"], config.threshold_rule)
    metadata = ModelMetadata(
        arch=config.arch,
        class_names=list(labels.TRAINING_CLASS_ORDER),
        preprocessing=PreprocessingConfig(image_size=config.image_size).to_dict(),
        threshold=threshold,
        threshold_rule=f"{config.threshold_rule} on Validation",
        flip_average=config.flip_average,
        name=output.stem,
        train_config={**dataclasses.asdict(config), "epochs_run": len(history.get("loss", [])),
                      "resumed_from_epoch": backup.initial_epoch + 1 if backup.initial_epoch else None,
                      "replicas": replicas, "global_batch_size": global_batch,
                      "train_seconds": round(train_seconds, 1), "dataset": str(root),
                      "splits": {split: source.info for split, source in splits.items()}, "history": history},
        metrics=metrics,
    )  # fmt: skip
    save_model(model, metadata, output)
    _write_curves(history, output.with_suffix(".curves.png"))
    backup.remove()
    best_checkpoint.unlink(missing_ok=True)  # the saved model holds the weights now
    if task:  # the workers' shared parent folder goes with the last of them
        with contextlib.suppress(OSError):
            backup.directory.parent.rmdir()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("%s done; the chief wrote the model", task)
        return None, metadata.metrics
    return output, metadata.metrics


def training_sources(splits: dict, config: TrainConfig):
    """What ``config.fakes`` trains and validates on: (train source, validation source, the
    landmarks to self-blend the train source's real images with or None, class weights or None).

    "self-blended" leaves the dataset's fakes out of Train and Validation (Validation becomes
    its real images and a fixed self-blend of each), so Test's fakes are a manipulation the
    model never saw. "both" keeps them, so each real image weighs as much as the two fakes
    that come with it, class by class.
    """
    if config.fakes == "dataset":
        return splits["Train"], splits["Validation"], None, None
    train_landmarks = split_landmarks(splits["Train"])
    if config.fakes == "self-blended":
        reals = np.flatnonzero(splits["Train"].labels == REAL_INDEX)
        val_reals = np.flatnonzero(splits["Validation"].labels == REAL_INDEX)
        validation = BlendedSource(cache.Subset(splits["Validation"], val_reals),
                                   split_landmarks(splits["Validation"])[val_reals], config.seed)  # fmt: skip
        log.info("self-blended: %d real training images, each with a fresh self-blend every epoch; "
                 "Validation: %d real images and one self-blend of each", len(reals), len(val_reals))  # fmt: skip
        return cache.Subset(splits["Train"], reals), validation, train_landmarks[reals], None
    n_real = int((splits["Train"].labels == REAL_INDEX).sum())
    n_fake = len(splits["Train"])  # the dataset's fakes (all but n_real) and one self-blend per real image
    total = n_real + n_fake
    class_weight = {REAL_INDEX: total / (2 * n_real), FAKE_INDEX: total / (2 * n_fake)}
    log.info("both: %d real, %d fake training images per epoch (self-blends included); class weights %s",
             n_real, n_fake, {k: round(v, 3) for k, v in class_weight.items()})  # fmt: skip
    return splits["Train"], splits["Validation"], train_landmarks, class_weight


def choose_threshold_and_measure(model: keras.Model, validation: ImageSource, test: ImageSource, rule: str,
                                 class_names=labels.TRAINING_CLASS_ORDER) -> tuple[float, dict]:  # fmt: skip
    """The decision threshold chosen on Validation by ``rule``, and both splits' metrics at it.

    Both splits stream from their sources. Test is scored once, after the choice.
    """

    def fake_probability(source):
        return labels.fake_probability_from_output(predict_scores(model, source), class_names)

    val_scores = fake_probability(validation)
    threshold = evaluation.choose_threshold(validation.labels, val_scores, rule)
    test_metrics = evaluation.compute_metrics(test.labels, fake_probability(test), threshold)
    val_metrics = evaluation.compute_metrics(validation.labels, val_scores, threshold)
    return threshold, {"validation": _short(val_metrics), "test": _short(test_metrics)}


def add_flip_average(model_path: str | Path, data_dir: str | Path, output: str | Path,
                     cache_dir: str | Path | None = None) -> tuple[Path, dict]:  # fmt: skip
    """Save a trained model as :func:`~deepfake_detector.model.flip_averaged`, threshold chosen again.

    What ``flip_average=True`` does at the end of a run, for a model trained without it: the
    threshold is chosen on ``data_dir``'s Validation split by the model's own rule, and the
    metadata's metrics are measured again. Returns the saved path and those metrics.

    Raises:
        deepfake_detector.model.ModelFileError: the model is missing, broken or already flip-averaged.
        deepfake_detector.data.DatasetError: ``data_dir`` lacks a split, or a class folder with
            readable images.
    """
    model, metadata = load_model(model_path)
    if metadata.flip_average:
        raise ModelFileError(f"{model_path}: already flip-averaged")
    root = data.find_dataset_root(Path(data_dir))
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir(data_dir)
    splits = open_splits(root, metadata.image_size, cache_dir, splits=("Validation", "Test"))
    rule = metadata.threshold_rule.removesuffix(" on Validation")
    averaged = flip_averaged(model)
    threshold, metrics = choose_threshold_and_measure(
        averaged, splits["Validation"], splits["Test"], rule, metadata.class_names
    )
    metadata = dataclasses.replace(
        metadata, threshold=threshold, flip_average=True, metrics=metrics, created="", versions={}, name=Path(output).stem,
        train_config={**metadata.train_config, "flip_average": True, "flip_average_added_from": str(model_path)},
    )  # fmt: skip
    return save_model(averaged, metadata, output), metrics


def _short(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "notes")}


def _write_curves(history: dict, path: Path) -> None:
    """Loss, accuracy and AUC per epoch, train and validation, next to the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ("loss", "accuracy", "auc")):
        if key in history:
            ax.plot(range(1, len(history[key]) + 1), history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(range(1, len(history[f"val_{key}"]) + 1), history[f"val_{key}"], label="validation")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

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
import math
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
from deepfake_detector.dataset import ARCHIVE_NAME, DatasetHandler
from deepfake_detector.model import (
    PRETRAINED_ARCHITECTURES,
    BestModelCheckpoint,
    DeepfakeDetectorModel,
    ModelFileError,
    ModelMetadata,
    best_path,
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
    output: str = "deepfake_detector_model.keras"  # the tutorial's file, in the working folder
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


def learning_rate_for(config: TrainConfig, steps_per_epoch: int):
    """The recipe's learning rate: a constant (the plateau recipe) or warm-up then cosine decay."""
    if config.schedule == "plateau":
        return config.learning_rate
    if config.schedule != "cosine":
        raise ValueError(f"unknown schedule {config.schedule!r}")
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else config.learning_rate, decay_steps=max(1, total - warmup),
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
    )  # fmt: skip


def metadata_for(config: TrainConfig, name: str = "deepfake-detector") -> ModelMetadata:
    """What a network trained by ``config`` is, before its threshold is chosen."""
    return ModelMetadata(arch=config.arch, class_names=list(labels.TRAINING_CLASS_ORDER),
                         preprocessing=PreprocessingConfig(image_size=config.image_size).to_dict(), name=name)  # fmt: skip


def compile_model(model: keras.Model | DeepfakeDetectorModel, config: TrainConfig, steps_per_epoch: int) -> None:
    """Compile for ``config``'s recipe (:meth:`DeepfakeDetectorModel.compile_model`).

    With ``ema_momentum``, the optimizer keeps the weight average beside the weights (it is
    backed up with them) and writes it into the model when fit ends, before the threshold is chosen.
    """
    if not isinstance(model, DeepfakeDetectorModel):
        model = DeepfakeDetectorModel(model, metadata_for(config))
    model.compile_model(learning_rate_for(config, steps_per_epoch), optimizer=config.optimizer,
                        weight_decay=config.weight_decay, ema_momentum=config.ema_momentum,
                        label_smoothing=config.label_smoothing)  # fmt: skip


def make_callbacks(config: TrainConfig, best: BestModelCheckpoint | None = None) -> list[keras.callbacks.Callback]:
    """Early stopping and the plateau schedule as the recipe asks (speaking as the tutorial's
    did), the best epoch kept by ``best``, and the learning rate logged."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.1, patience=5, min_lr=1e-7, verbose=1 if config.verbose else 0))
    if best is not None:
        callbacks.append(best)
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


class TrainModel:
    """One training run, from the dataset to the saved model: the tutorial's ``TrainModel``.

    The first seven arguments are the tutorial's and go to :class:`DatasetHandler`
    (``dataset_download_dir`` defaults to ``config.data_dir``); ``config`` is the recipe (the
    tutorial's by default, ``TrainConfig.for_arch`` for the others). ``run_training`` returns
    ``(history, evaluation_metrics)`` as the tutorial's did; afterwards ``output_path`` is the
    saved model (None on a worker that is not the chief) and ``metrics`` its Validation and
    Test metrics at the threshold chosen on Validation.

    The same run scales out with ``tf.distribute`` (``config.distribute``). Training state is
    backed up every epoch, so a run that is killed continues from its last finished epoch
    when started again with the same recipe.
    """

    def __init__(self, dataset_url: str = data.KAGGLE_URL, dataset_download_dir: str | Path | None = None,
                 dataset_file: str = ARCHIVE_NAME, dataset_dir: str | Path | None = None, train_dir: str = "Train",
                 test_dir: str = "Test", val_dir: str = "Validation", *, config: TrainConfig | None = None):  # fmt: skip
        self.config = config or TrainConfig()
        c = self.config
        self.dataset_handler = DatasetHandler(
            dataset_url, dataset_download_dir if dataset_download_dir is not None else c.data_dir, dataset_file,
            dataset_dir, train_dir, test_dir, val_dir, archive=c.archive, sha256=c.sha256, image_size=c.image_size,
            batch_size=c.batch_size, cache_dir=c.cache_dir, max_images_per_split=c.max_images_per_split, seed=c.seed,
        )  # fmt: skip
        self.output_path: Path | None = None
        self.metrics: dict = {}

    def run_training(self, learning_rate: float | None = None, epochs: int | None = None):
        """Download and extract the data if needed, train, choose the threshold, evaluate, save.

        ``learning_rate`` and ``epochs`` override the recipe's (the tutorial's: 1e-4 and 50).
        Returns the Keras ``History`` (every epoch, also those before a resume) and the
        tutorial's ``[loss, accuracy, precision, recall]`` on Test at 0.5, fake positive.

        Raises:
            TrainingSetupError: a config this machine cannot run (see :func:`check_config`),
                before any data is touched.
            deepfake_detector.data.DatasetError: missing, unreadable or one-class data.
        """
        config = dataclasses.replace(self.config, **{k: v for k, v in (("learning_rate", learning_rate),
                                                                        ("epochs", epochs)) if v is not None})  # fmt: skip
        self.config = config
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
        handler = self.dataset_handler
        handler.download_dataset()
        handler.unzip_dataset()
        splits = handler.splits()
        train_source, validation, blend_landmarks, class_weight = training_sources(splits, config)
        shard = input_shard(strategy)  # several workers: each reads its share of the cache
        train_ds = make_dataset(train_source, global_batch, True, config.augment, run_seed, shard, blend_landmarks)
        val_ds = make_dataset(validation, global_batch, False, shard=shard)

        # Every worker writes (saving takes part in collective ops); only the chief's files stay.
        output, scratch = Path(config.output), None
        if not chief:
            scratch = Path(tempfile.mkdtemp(prefix="deepfake-detector-worker-"))
            output = scratch / output.name
        with strategy.scope():
            detector_model = DeepfakeDetectorModel(build_training_model(config), metadata_for(config, output.stem))
            if config.frozen_blocks:
                frozen = freeze_leading_blocks(detector_model.model, config.frozen_blocks)
                log.info("frozen: %s blocks 0-%d (%d layers)", config.arch, config.frozen_blocks - 1, frozen)
            compile_model(detector_model, config, steps_per_epoch=config.steps_per_epoch or len(train_ds))
        model = detector_model.model
        detector_model.metadata.train_config = {k: v for k, v in recipe.items() if k != "output"}
        best = BestModelCheckpoint(detector_model, best_path(output), verbose=1 if config.verbose else 0,
                                   initial_best=min(backup.history.get("val_loss", []), default=math.inf))  # fmt: skip
        # Before the backup in the list: it records the logs the callbacks before it completed.
        callbacks = [*make_callbacks(config, best), ThroughputLogger(global_batch), backup]
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            work_around_keras_multi_worker_gaps(model)
        start = time.time()
        with strategy.scope():
            fitted = detector_model.train_model(train_ds, val_ds, config.epochs, callbacks,
                                                steps_per_epoch=config.steps_per_epoch, class_weight=class_weight,
                                                verbose=config.verbose)  # fmt: skip
        train_seconds = time.time() - start
        # The plateau recipe restores its best epoch through EarlyStopping; the cosine recipe keeps
        # its last epoch (the schedule has annealed).
        history = backup.history  # every epoch, also those before a resume
        fitted.history = history
        # A plain float32 copy without the optimizer: the saved file is the same whatever the
        # strategy, and a third of the size (AdamW keeps two slots per weight).
        model = single_device_copy(model, config)
        if config.flip_average:
            model = flip_averaged(model)
        final = DeepfakeDetectorModel(model, metadata_for(config, output.stem))
        threshold, metrics, test_scores = choose_threshold_and_measure(final, validation, splits["Test"], config.threshold_rule)
        evaluation_metrics = evaluation.tutorial_metrics(splits["Test"].labels, test_scores)
        final.metadata = dataclasses.replace(
            final.metadata,
            threshold=threshold,
            threshold_rule=f"{config.threshold_rule} on Validation",
            flip_average=config.flip_average,
            train_config={**dataclasses.asdict(config), "epochs_run": len(history.get("loss", [])),
                          "resumed_from_epoch": backup.initial_epoch + 1 if backup.initial_epoch else None,
                          "replicas": replicas, "global_batch_size": global_batch,
                          "train_seconds": round(train_seconds, 1), "dataset": str(handler.find()),
                          "splits": {split: source.info for split, source in splits.items()}, "history": history},
            metrics=metrics,
        )  # fmt: skip
        final.save_model(output)
        _write_curves(history, output.with_suffix(".curves.png"))
        backup.remove()
        self.metrics = final.metadata.metrics
        if task:  # the workers' shared parent folder goes with the last of them
            with contextlib.suppress(OSError):
                backup.directory.parent.rmdir()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            log.info("%s done; the chief wrote the model", task)
            self.output_path = None
        else:
            self.output_path = output
        return fitted, evaluation_metrics


def train(config: TrainConfig) -> tuple[Path | None, dict]:
    """``TrainModel(config=config).run_training()``; returns the saved path and the metrics."""
    trainer = TrainModel(config=config)
    trainer.run_training()
    return trainer.output_path, trainer.metrics


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


def choose_threshold_and_measure(detector_model: DeepfakeDetectorModel, validation: ImageSource, test: ImageSource,
                                 rule: str) -> tuple[float, dict, np.ndarray]:  # fmt: skip
    """The decision threshold chosen on Validation by ``rule``, both splits' metrics at it, and
    Test's P(fake) scores.

    Both splits stream from their sources. Test is scored once, after the choice.
    """

    def fake_probability(source):
        return detector_model.fake_probability_of(predict_scores(detector_model.model, source))

    val_scores = fake_probability(validation)
    threshold = evaluation.choose_threshold(validation.labels, val_scores, rule)
    test_scores = fake_probability(test)
    test_metrics = evaluation.compute_metrics(test.labels, test_scores, threshold)
    val_metrics = evaluation.compute_metrics(validation.labels, val_scores, threshold)
    return threshold, {"validation": _short(val_metrics), "test": _short(test_metrics)}, test_scores


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
    splits = DatasetHandler(dataset_download_dir=data_dir, image_size=metadata.image_size, cache_dir=cache_dir).splits(("Validation", "Test"))
    rule = metadata.threshold_rule.removesuffix(" on Validation")
    if rule not in evaluation.THRESHOLD_RULES:  # a fixed threshold (a best-epoch checkpoint, an adopted model)
        rule = TrainConfig.threshold_rule
    averaged = flip_averaged(model)
    threshold, metrics, _ = choose_threshold_and_measure(DeepfakeDetectorModel(averaged, metadata), splits["Validation"],
                                                         splits["Test"], rule)  # fmt: skip
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

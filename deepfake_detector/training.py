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
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from deepfake_detector import cache, labels
from deepfake_detector.callbacks import ResumableBackup, ThroughputLogger, make_callbacks
from deepfake_detector.data import ARCHIVE_NAME, KAGGLE_URL, DatasetHandler
from deepfake_detector.distribute import (
    input_shard,
    is_chief,
    make_strategy,
    read_tf_config,
    task_name,
    work_around_keras_multi_worker_gaps,
)
from deepfake_detector.errors import TrainingSetupError
from deepfake_detector.labels import FAKE_INDEX, REAL_INDEX
from deepfake_detector.metrics import tutorial_metrics
from deepfake_detector.model import BestModelCheckpoint, DeepfakeDetectorModel, ModelMetadata, best_path
from deepfake_detector.networks import build_model, flip_averaged, freeze_leading_blocks
from deepfake_detector.pipeline import BlendedSource, make_dataset, split_landmarks
from deepfake_detector.plots import write_training_curves
from deepfake_detector.preprocessing import PreprocessingConfig
from deepfake_detector.recipes import (
    ARCHITECTURES,
    AUGMENTATIONS,
    DATASET_FAKES,
    FAKES,
    NO_AUGMENTATION,
    OPTIMIZERS,
    PRETRAINED_ARCHITECTURES,
    SCHEDULES,
    STRATEGIES,
    THRESHOLD_RULES,
    TrainConfig,
)
from deepfake_detector.thresholds import choose_threshold_and_measure

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- set-up


def check_config(config: TrainConfig) -> None:
    """Refuse, before any work, what this machine cannot run.

    Raises:
        TrainingSetupError: a value that is not one of its choices (``recipes``), mixed precision
            without a GPU, frozen blocks on an architecture without them, or a missing or
            malformed ``TF_CONFIG`` for multi-worker training.
    """
    for option, value, choices in (
        ("architecture", config.arch, ARCHITECTURES), ("distribution", config.distribute, STRATEGIES),
        ("fakes", config.fakes, FAKES), ("augmentation", config.augment, (NO_AUGMENTATION, *AUGMENTATIONS)),
        ("threshold rule", config.threshold_rule, THRESHOLD_RULES), ("optimizer", config.optimizer, OPTIMIZERS),
        ("schedule", config.schedule, SCHEDULES),
    ):  # fmt: skip
        if value not in choices:
            raise TrainingSetupError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    # Listing physical devices does not start the TF runtime, which multi-worker set-up needs untouched.
    if config.mixed_precision and not tf.config.list_physical_devices("GPU"):
        raise TrainingSetupError(
            "mixed precision (mixed_float16) needs a GPU and none is visible; float16 is no faster on CPUs"
        )
    if not 0.0 <= config.ema_momentum < 1.0:
        raise TrainingSetupError(f"the weight-average momentum must be at least 0 (off) and below 1, got {config.ema_momentum}")
    if Path(config.output).suffix != ".keras":
        raise TrainingSetupError(f"--output {config.output}: a model file must end in .keras, or Keras cannot load it back")
    if config.fakes == "both" and config.distribute == "multiworker":
        raise TrainingSetupError("--fakes both cannot be split into equal shares across workers; "
                                 "use dataset or self-blended with --distribute multiworker")  # fmt: skip
    if not 0.0 <= config.other_faces <= 1.0:
        raise TrainingSetupError(f"--other-faces is a share of the blended fakes, from 0 to 1, got {config.other_faces}")
    if config.other_faces and config.fakes == DATASET_FAKES:
        raise TrainingSetupError(f"--other-faces changes blended fakes, and --fakes {DATASET_FAKES} makes none; "
                                 "use it with --fakes self-blended or both")  # fmt: skip
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise TrainingSetupError(f"steps per epoch must be at least 1, got {config.steps_per_epoch}")
    if config.frozen_blocks and config.arch not in PRETRAINED_ARCHITECTURES:
        raise TrainingSetupError(f"frozen blocks are an option of the pretrained backbones "
                                 f"({', '.join(PRETRAINED_ARCHITECTURES)}); {config.arch} has none")  # fmt: skip
    if config.distribute == "multiworker":
        read_tf_config()


def build_training_model(config: TrainConfig) -> keras.Model:
    """The network to train (:func:`deepfake_detector.networks.build_model`); build it inside the
    strategy's scope. With ``mixed_precision``, float16 compute and a float32 output."""
    return build_model(config.arch, config.image_size, pretrained=config.pretrained,
                       mixed_precision=config.mixed_precision)  # fmt: skip


def single_device_copy(model: keras.Model, config: TrainConfig) -> keras.Model:
    """A plain float32 model holding ``model``'s weights: the same file as a one-device run saves."""
    copy = build_model(config.arch, config.image_size, pretrained=False)
    copy.set_weights(model.get_weights())
    return copy


def backup_dir_for(config: TrainConfig, task: str | None) -> Path:
    """``config.backup_dir`` or ``.NAME.backup/`` beside the output; one sub-folder per worker ``task``.

    Each worker keeps its own copy (they are identical after every synchronised epoch), so
    resuming needs no file system shared between machines and two workers on one machine
    never write the same file.
    """
    output = Path(config.output)
    directory = Path(config.backup_dir) if config.backup_dir else output.with_name(f".{output.stem}.backup")
    return directory / task if task else directory


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

    def __init__(self, dataset_url: str = KAGGLE_URL, dataset_download_dir: str | Path | None = None,
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
            deepfake_detector.errors.DatasetError: missing, unreadable or one-class data.
        """
        config = dataclasses.replace(self.config, **{k: v for k, v in (("learning_rate", learning_rate),
                                                                        ("epochs", epochs)) if v is not None})  # fmt: skip
        self.config = config
        check_config(config)
        strategy = make_strategy(config.distribute, config.cluster_timeout)  # first: multi-worker set-up needs a fresh runtime
        replicas = strategy.num_replicas_in_sync
        global_batch = config.batch_size * replicas
        chief = is_chief(strategy)
        task = task_name(strategy)
        log.info("distribute: %s (%s), %d replica(s)%s; global batch %d = %d per replica x %d",
                 config.distribute, STRATEGIES[config.distribute].tf_name, replicas,
                 f", this process is {task}" if task else "", global_batch, config.batch_size, replicas)  # fmt: skip
        if config.mixed_precision:
            log.info("mixed precision: mixed_float16 compute, float32 variables and output")

        # The recipe decides whether a backup can be resumed; where it is written and how chatty
        # the run is do not.
        recipe = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("backup_dir", "verbose", "flip_average", "cache_dir")}  # fmt: skip
        if not config.other_faces:
            del recipe["other_faces"]  # added later: backups written before it still resume
        backup = ResumableBackup(backup_dir_for(config, task), recipe)
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
        train_ds = make_dataset(train_source, global_batch, True, config.augment, run_seed, shard, blend_landmarks,
                                config.other_faces)  # fmt: skip
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
                                   initial_best=min(backup.saved_history().get("val_loss", []), default=math.inf))  # fmt: skip
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
        evaluation_metrics = tutorial_metrics(splits["Test"].labels, test_scores)
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
        write_training_curves(history, output.with_suffix(".curves.png"))
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
                                   split_landmarks(splits["Validation"])[val_reals], config.seed,
                                   config.other_faces)  # fmt: skip
        log.info("self-blended: %d real training images, each with a fresh self-blend every epoch (%.0f%% of them "
                 "from another real face); Validation: %d real images and one blend of each",
                 len(reals), 100 * config.other_faces, len(val_reals))  # fmt: skip
        return cache.Subset(splits["Train"], reals), validation, train_landmarks[reals], None
    n_real = int((splits["Train"].labels == REAL_INDEX).sum())
    n_fake = len(splits["Train"])  # the dataset's fakes (all but n_real) and one self-blend per real image
    total = n_real + n_fake
    class_weight = {REAL_INDEX: total / (2 * n_real), FAKE_INDEX: total / (2 * n_fake)}
    log.info("both: %d real, %d fake training images per epoch (self-blends included); class weights %s",
             n_real, n_fake, {k: round(v, 3) for k, v in class_weight.items()})  # fmt: skip
    return splits["Train"], splits["Validation"], train_landmarks, class_weight

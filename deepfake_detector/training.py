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

from deepfake_detector import labels
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
from deepfake_detector.metrics import tutorial_metrics
from deepfake_detector.mixing import (
    MEAN_AUC,
    EpochPlan,
    MixedSource,
    SourceValidation,
    make_mixed_dataset,
    parse_mix,
    source_names,
)
from deepfake_detector.model import BestModelCheckpoint, DeepfakeDetectorModel, ModelMetadata, best_path, load_model
from deepfake_detector.networks import build_model, flip_averaged, freeze_leading_blocks
from deepfake_detector.optim import learning_rate_for
from deepfake_detector.pipeline import SplitSource, make_dataset, split_landmarks
from deepfake_detector.plots import write_training_curves
from deepfake_detector.preprocessing import PreprocessingConfig
from deepfake_detector.recipes import (
    ARCHITECTURES,
    AUGMENTATIONS,
    FAKES,
    FRAMINGS,
    OPTIMIZERS,
    PRETRAINED_ARCHITECTURES,
    SCHEDULES,
    SELF_BLENDED_SOURCE,
    STRATEGIES,
    THRESHOLD_RULES,
    DataConfig,
    TrainConfig,
)
from deepfake_detector.thresholds import choose_threshold_and_measure, choose_threshold_and_measure_sources

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- training


def metadata_for(config: TrainConfig, name: str = "deepfake-detector") -> ModelMetadata:
    """What a network trained by ``config`` is, before its threshold is chosen."""
    return ModelMetadata(
        arch=config.arch,
        class_names=list(labels.TRAINING_CLASS_ORDER),
        preprocessing=PreprocessingConfig(image_size=config.image_size).to_dict(),
        name=name,
    )


def compile_model(model: keras.Model | DeepfakeDetectorModel, config: TrainConfig, steps_per_epoch: int) -> None:
    """Compile for ``config``'s recipe (:meth:`DeepfakeDetectorModel.compile_model`).

    With ``ema_momentum``, the optimizer keeps the weight average beside the weights (it is
    backed up with them) and writes it into the model when fit ends, before the threshold is chosen.
    """
    if not isinstance(model, DeepfakeDetectorModel):
        model = DeepfakeDetectorModel(model, metadata_for(config))
    model.compile_model(
        learning_rate_for(config, steps_per_epoch),
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        ema_momentum=config.ema_momentum,
        label_smoothing=config.label_smoothing,
    )


# ----------------------------------------------------------------------------- set-up


def check_config(config: TrainConfig) -> None:
    """Refuse, before any work, what this machine cannot run.

    Raises:
        TrainingSetupError: a value that is not one of its choices (``recipes``), mixed precision
            without a GPU, frozen blocks on an architecture without them, or a missing or
            malformed ``TF_CONFIG`` for multi-worker training.
    """
    for registry, value in (
        (ARCHITECTURES, config.arch),
        (STRATEGIES, config.distribute),
        (FAKES, config.fakes),
        (AUGMENTATIONS, config.augment),
        (THRESHOLD_RULES, config.threshold_rule),
        (OPTIMIZERS, config.optimizer),
        (SCHEDULES, config.schedule),
        (FRAMINGS, config.framing),
    ):
        registry.check(value, TrainingSetupError)
    cluster, fakes = STRATEGIES[config.distribute].cluster, FAKES[config.fakes]
    # Listing physical devices does not start the TF runtime, which multi-worker set-up needs untouched.
    if config.mixed_precision and not tf.config.list_physical_devices("GPU"):
        raise TrainingSetupError(
            "mixed precision (mixed_float16) needs a GPU and none is visible; float16 is no faster on CPUs"
        )
    if not 0.0 <= config.ema_momentum < 1.0:
        raise TrainingSetupError(
            f"the weight-average momentum must be at least 0 (off) and below 1, got {config.ema_momentum}"
        )
    if Path(config.output).suffix != ".keras":
        raise TrainingSetupError(
            f"--output {config.output}: a model file must end in .keras, or Keras cannot load it back"
        )
    if fakes.dataset and fakes.blended and cluster:
        raise TrainingSetupError(
            "--fakes both cannot be split into equal shares across workers; "
            "use dataset or self-blended with --distribute multiworker"
        )
    if not 0.0 <= config.other_faces <= 1.0:
        raise TrainingSetupError(
            f"--other-faces is a share of the blended fakes, from 0 to 1, got {config.other_faces}"
        )
    if config.other_faces and not fakes.blended:
        raise TrainingSetupError(
            f"--other-faces changes blended fakes, and --fakes {config.fakes} makes none; "
            "use it with --fakes self-blended or both"
        )
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise TrainingSetupError(f"steps per epoch must be at least 1, got {config.steps_per_epoch}")
    if config.frozen_blocks and not ARCHITECTURES[config.arch].pretrained:
        raise TrainingSetupError(
            f"frozen blocks are an option of the pretrained backbones "
            f"({', '.join(PRETRAINED_ARCHITECTURES)}); {config.arch} has none"
        )
    if config.multi_source:
        check_sources(config)
    if cluster:
        read_tf_config()


def check_sources(config: TrainConfig) -> None:
    """Refuse a multi-source run that cannot work, before any data is read: names, shares, and
    the options a multi-source run does not take."""
    names, fakes = source_names(config.data_dirs), FAKES[config.fakes]
    if not fakes.dataset:
        raise TrainingSetupError(
            f"--fakes {config.fakes} trains on one --data-dir; with several, use --fakes both "
            "(self-blends as one more source) or dataset"
        )
    parse_mix(config.mix, names + ([SELF_BLENDED_SOURCE] if fakes.blended else []))
    if STRATEGIES[config.distribute].cluster:
        raise TrainingSetupError("a multi-source run trains on one machine; use --distribute none or mirrored")


def build_training_model(config: TrainConfig) -> keras.Model:
    """The network to train (:func:`deepfake_detector.networks.build_model`); build it inside the
    strategy's scope. With ``mixed_precision``, float16 compute and a float32 output."""
    return build_model(
        config.arch, config.image_size, pretrained=config.pretrained, mixed_precision=config.mixed_precision
    )


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


@dataclasses.dataclass
class Run:
    """Where and how one run trains (:func:`start_run`): its strategy, its backup, its seed."""

    strategy: tf.distribute.Strategy
    global_batch: int  # the batch of one step, over every replica
    task: str | None  # this process's task in a cluster (``worker-1``); None alone
    recipe: dict  # recipe_of(config): what the backup must have been written by
    backup: ResumableBackup
    first_epoch: int  # the epochs the backup holds: 0 for a fresh run
    seed: int  # the seed of this run's shuffles and dropout: config.seed + first_epoch


@dataclasses.dataclass
class TrainingData:
    """What one run trains, validates and tests on (:meth:`TrainModel.training_data`).

    A single dataset is validated by Keras (``val_ds``); a multi-source run (``mixing.py``) by
    :class:`~deepfake_detector.mixing.SourceValidation` on each of ``validations``.
    """

    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset | None
    validations: dict[str, SplitSource]  # by source name; one entry for a single dataset
    tests: dict[str, SplitSource]
    class_weight: dict | None
    steps_per_epoch: int | None  # for fit: None uses the whole dataset each epoch
    schedule_steps: int  # steps per epoch, for the learning-rate schedule
    record: dict  # where the data came from and its counts, for the saved model

    @property
    def multi_source(self) -> bool:
        return self.val_ds is None


class TrainModel:
    """One training run, from the dataset to the saved model: the tutorial's ``TrainModel``.

    The first seven arguments are the tutorial's and go to :class:`DatasetHandler`
    (``dataset_download_dir`` defaults to ``config.data_dir``), with the recipe's data part
    (``config.data``); ``config`` is the recipe (the tutorial's by default,
    ``TrainConfig.for_arch`` for the others). ``run_training`` returns ``(history,
    evaluation_metrics)`` as the tutorial's did; afterwards ``output_path`` is the saved model
    (None on a worker that is not the chief) and ``metrics`` its Validation and Test metrics at
    the threshold chosen on Validation.

    With several data folders (``config.data_dir`` a list), the run draws every epoch from all of
    them in shares (:mod:`deepfake_detector.mixing`), keeps the epoch with the best mean of the
    sources' Validation ROC AUCs, and chooses its threshold on their pooled Validation scores.

    The same run scales out with ``tf.distribute`` (``config.distribute``). Training state is
    backed up every epoch, so a run that is killed continues from its last finished epoch
    when started again with the same recipe.
    """

    def __init__(
        self,
        dataset_url: str = KAGGLE_URL,
        dataset_download_dir: str | Path | None = None,
        dataset_file: str = ARCHIVE_NAME,
        dataset_dir: str | Path | None = None,
        train_dir: str = "Train",
        test_dir: str = "Test",
        val_dir: str = "Validation",
        *,
        config: TrainConfig | None = None,
    ):
        self.config = config or TrainConfig()
        folders = [dataset_download_dir] if dataset_download_dir is not None else self.config.data_dirs
        self.dataset_handlers = [
            DatasetHandler(dataset_url, folder, dataset_file, dataset_dir, train_dir, test_dir, val_dir, config=data)
            for folder, data in zip(folders, data_configs(self.config.data, folders))
        ]
        self.dataset_handler = self.dataset_handlers[0]  # the tutorial's one dataset
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
        config = dataclasses.replace(
            self.config, **{k: v for k, v in (("learning_rate", learning_rate), ("epochs", epochs)) if v is not None}
        )
        self.config = config
        check_config(config)
        run = start_run(config)
        data = self.training_data(config, run)
        # Every worker writes (saving takes part in collective ops); only the chief's files stay.
        output, scratch = Path(config.output), None
        if not is_chief(run.strategy):
            scratch = Path(tempfile.mkdtemp(prefix="deepfake-detector-worker-"))
            output = scratch / output.name
        fitted, detector_model, train_seconds = fit(config, run, data, output)
        final, evaluation_metrics = finish_model(detector_model.model, config, output, data)
        final.metadata.train_config = run_record(config, run, data, fitted.history, train_seconds)
        final.save_model(output)
        write_training_curves(fitted.history, output.with_suffix(".curves.png"))
        run.backup.remove()
        self.metrics = final.metadata.metrics
        self._clean_up(run.task, run.backup, scratch, output)
        return fitted, evaluation_metrics

    def _clean_up(self, task: str | None, backup: ResumableBackup, scratch: Path | None, output: Path) -> None:
        if task:  # the workers' shared parent folder goes with the last of them
            with contextlib.suppress(OSError):
                backup.directory.parent.rmdir()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            log.info("%s done; the chief wrote the model", task)
            self.output_path = None
        else:
            self.output_path = output

    def training_data(self, config: TrainConfig, run: Run) -> TrainingData:
        """The datasets of a run: one dataset as the tutorial's, or several sources in shares."""
        for handler in self.dataset_handlers:
            handler.download_dataset()
            handler.unzip_dataset()
        if config.multi_source:
            return self._mixed_data(config, run)
        handler, shard = self.dataset_handler, input_shard(run.strategy)
        splits = handler.splits()
        train_source, validation, blend_landmarks, class_weight = FAKES.load(config.fakes)(splits, config.data)
        # Shuffles, blends and augmentations from the run's seed, re-drawn for a resumed run.
        train_ds = make_dataset(
            train_source,
            run.global_batch,
            True,
            dataclasses.replace(config.data, seed=run.seed),
            shard,
            blend_landmarks,
        )
        name = source_names([str(handler.find())])[0]
        return TrainingData(
            train_ds,
            make_dataset(validation, run.global_batch, False, shard=shard),
            {name: validation},
            {name: splits["Test"]},
            class_weight,
            config.steps_per_epoch,
            config.steps_per_epoch or len(train_ds),
            {"dataset": str(handler.find()), "splits": {split: source.info for split, source in splits.items()}},
        )

    def _mixed_data(self, config: TrainConfig, run: Run) -> TrainingData:
        names, global_batch = source_names(config.data_dirs), run.global_batch
        splits = {name: handler.splits() for name, handler in zip(names, self.dataset_handlers)}
        train = MixedSource({name: split["Train"] for name, split in splits.items()})
        blends = FAKES[config.fakes].blended
        shares = parse_mix(config.mix, names + ([SELF_BLENDED_SOURCE] if blends else []))
        landmarks = np.concatenate([split_landmarks(split["Train"]) for split in splits.values()]) if blends else None
        steps = config.steps_per_epoch or -(-len(train) // global_batch)
        plan = EpochPlan(train, shares, steps * global_batch, config.seed)
        log.info(
            "sources: %s; %d images an epoch: %s",
            ", ".join(names),
            plan.epoch_size,
            ", ".join(f"{name} {count}" for name, count in plan.counts().items()),
        )
        train_ds = make_mixed_dataset(plan, global_batch, run.first_epoch, config.epochs, config.data, landmarks)
        record = {
            "dataset": [str(handler.find()) for handler in self.dataset_handlers],
            "sources": {
                name: {
                    "shares": shares[name],
                    "images_per_epoch": plan.counts()[name],
                    "splits": {role: split.info for role, split in splits[name].items()},
                }
                for name in names
            },
            "epoch_draw": {
                name: {"share": share, "images_per_epoch": plan.counts()[name]} for name, share in shares.items()
            },
            "selection": f"the epoch with the highest mean of the sources' Validation ROC AUCs ({MEAN_AUC})",
        }
        return TrainingData(
            train_ds,
            None,
            {name: split["Validation"] for name, split in splits.items()},
            {name: split["Test"] for name, split in splits.items()},
            None,
            steps,
            steps,
            record,
        )


def data_configs(data: DataConfig, folders: list) -> list[DataConfig]:
    """``data`` for each data folder of a run. One ``cache_dir`` for several datasets becomes a
    folder each, named by the dataset's folder, since a cache is named by its split's folder."""
    if len(folders) == 1 or not data.cache_dir:
        return [data] * len(folders)
    return [
        dataclasses.replace(data, cache_dir=str(Path(data.cache_dir) / Path(folder).resolve().name))
        for folder in folders
    ]


def start_run(config: TrainConfig) -> Run:
    """The strategy (first: multi-worker set-up needs a fresh runtime), the backup (a different
    run's refused before any data is loaded) and the seed of a run of ``config``, set."""
    strategy = make_strategy(config.distribute, config.cluster_timeout)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    task = task_name(strategy)
    log_strategy(config, strategy, global_batch, task)
    recipe = recipe_of(config)
    backup = ResumableBackup(backup_dir_for(config, task), recipe)
    backup.check_same_run()
    # A resumed single-dataset run re-seeds its shuffles and dropout with the epochs done: restarted
    # with the same seed it would replay the first epochs' batches and masks, which the network has
    # fitted. A multi-source run's epochs are drawn by their number, so it continues the same sequence.
    first_epoch = backup.saved_epoch()
    keras.utils.set_random_seed(config.seed + first_epoch)
    return Run(strategy, global_batch, task, recipe, backup, first_epoch, config.seed + first_epoch)


def fit(config: TrainConfig, run: Run, data: TrainingData, output: Path):
    """Build the network and fit it; returns Keras's ``History`` (with every epoch's logs, also
    those before a resume), the model and the seconds ``fit`` took."""
    detector_model = build_detector_model(config, run.strategy, output, data.schedule_steps)
    detector_model.metadata.train_config = {k: v for k, v in run.recipe.items() if k != "output"}
    callbacks = training_callbacks(config, detector_model, output, run.backup, data, run.global_batch)
    if isinstance(run.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        work_around_keras_multi_worker_gaps(detector_model.model)
    start = time.time()
    with run.strategy.scope():
        fitted = detector_model.train_model(
            data.train_ds,
            data.val_ds,
            config.epochs,
            callbacks,
            steps_per_epoch=data.steps_per_epoch,
            class_weight=data.class_weight,
            verbose=config.verbose,
        )
    train_seconds = time.time() - start
    fitted.history = run.backup.history  # every epoch, also those before a resume
    return fitted, detector_model, train_seconds


def run_record(config: TrainConfig, run: Run, data: TrainingData, history: dict, train_seconds: float) -> dict:
    """What the saved model says of how it was trained: the recipe, the run and its data."""
    return {
        **dataclasses.asdict(config),
        "epochs_run": len(history.get("loss", [])),
        "resumed_from_epoch": run.backup.initial_epoch + 1 if run.backup.initial_epoch else None,
        "replicas": run.strategy.num_replicas_in_sync,
        "global_batch_size": run.global_batch,
        "train_seconds": round(train_seconds, 1),
        **data.record,
        "history": history,
    }


def recipe_of(config: TrainConfig) -> dict:
    """The config fields that decide whether a backup can be resumed; where it is written and
    how chatty the run is do not."""
    recipe = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("backup_dir", "verbose", "flip_average", "cache_dir", "cluster_timeout")
    }
    for added_later, default in (("other_faces", 0.0), ("mix", None), ("framing", "whole")):
        if recipe[added_later] == default:
            del recipe[added_later]  # backups written before it existed still resume
    return recipe


def log_strategy(config: TrainConfig, strategy, global_batch: int, task: str | None) -> None:
    replicas = strategy.num_replicas_in_sync
    log.info(
        "distribute: %s (%s), %d replica(s)%s; global batch %d = %d per replica x %d",
        config.distribute,
        STRATEGIES[config.distribute].tf_name,
        replicas,
        f", this process is {task}" if task else "",
        global_batch,
        config.batch_size,
        replicas,
    )
    if config.mixed_precision:
        log.info("mixed precision: mixed_float16 compute, float32 variables and output")


def build_detector_model(config: TrainConfig, strategy, output: Path, schedule_steps: int) -> DeepfakeDetectorModel:
    """The network to train, frozen and compiled as the recipe says, inside the strategy's scope."""
    with strategy.scope():
        detector_model = DeepfakeDetectorModel(build_training_model(config), metadata_for(config, output.stem))
        if config.frozen_blocks:
            frozen = freeze_leading_blocks(detector_model.model, config.frozen_blocks)
            log.info("frozen: %s blocks 0-%d (%d layers)", config.arch, config.frozen_blocks - 1, frozen)
        compile_model(detector_model, config, steps_per_epoch=schedule_steps)
    return detector_model


def training_callbacks(
    config: TrainConfig,
    detector_model: DeepfakeDetectorModel,
    output: Path,
    backup: ResumableBackup,
    data: TrainingData,
    global_batch: int,
) -> list:
    """The recipe's callbacks, the best epoch kept, throughput logs, and the backup last (it
    records the logs of the callbacks before it). A multi-source run keeps the epoch with the
    best mean of the sources' Validation ROC AUCs; a single dataset, the lowest val_loss."""
    verbose = 1 if config.verbose else 0
    if not data.multi_source:
        best = BestModelCheckpoint(
            detector_model,
            best_path(output),
            verbose=verbose,
            initial_best=min(backup.saved_history().get("val_loss", []), default=math.inf),
        )
        return [*make_callbacks(config, best), ThroughputLogger(global_batch), backup]
    best = BestModelCheckpoint(
        detector_model,
        best_path(output),
        monitor=MEAN_AUC,
        verbose=verbose,
        initial_best=max(backup.saved_history().get(MEAN_AUC, []), default=-math.inf),
        higher_is_better=True,
    )
    validation = SourceValidation(data.validations, best, batch_size=2 * global_batch)
    return [validation, *make_callbacks(config), ThroughputLogger(global_batch), backup]


def finish_model(model: keras.Model, config: TrainConfig, output: Path, data: TrainingData):
    """The model to save: a plain float32 copy (the best epoch's, for a multi-source run), flip-averaged
    if the recipe says so, with its threshold chosen on Validation and its metrics; and the
    tutorial's four numbers on Test.

    The plateau recipe restores its best epoch through EarlyStopping; the cosine recipe keeps its
    last epoch (the schedule has annealed). A multi-source run takes the epoch its checkpoint kept.
    """
    # A plain float32 copy without the optimizer: the saved file is the same whatever the
    # strategy, and a third of the size (AdamW keeps two slots per weight).
    if data.multi_source and best_path(output).is_file():
        model = load_model(best_path(output))[0]
    model = single_device_copy(model, config)
    if config.flip_average:
        model = flip_averaged(model)
    final = DeepfakeDetectorModel(model, metadata_for(config, output.stem))
    if data.multi_source:
        threshold, metrics, test_labels, test_scores = choose_threshold_and_measure_sources(
            final, data.validations, data.tests, config.threshold_rule
        )
        rule = f"{config.threshold_rule} on the pooled Validation scores, each source weighted equally"
    else:
        (validation,), (test,) = data.validations.values(), data.tests.values()
        threshold, metrics, test_scores = choose_threshold_and_measure(final, validation, test, config.threshold_rule)
        test_labels, rule = test.labels, f"{config.threshold_rule} on Validation"
    final.metadata = dataclasses.replace(
        final.metadata,
        threshold=threshold,
        threshold_rule=rule,
        selection_rule=data.record.get("selection", ""),
        flip_average=config.flip_average,
        metrics=metrics,
    )
    return final, tutorial_metrics(test_labels, test_scores)


def train(config: TrainConfig) -> tuple[Path | None, dict]:
    """``TrainModel(config=config).run_training()``; returns the saved path and the metrics."""
    trainer = TrainModel(config=config)
    trainer.run_training()
    return trainer.output_path, trainer.metrics

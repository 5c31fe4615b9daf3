"""Training beyond one device: tf.distribute strategies, mixed precision, and resuming.

Everything here is TensorFlow's own machinery (``MirroredStrategy``,
``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``, ``BackupAndRestore``);
:mod:`deepfake_detector.training` calls it for one run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from deepfake_detector.files import write_atomically
from deepfake_detector.model import build_model

if TYPE_CHECKING:
    from deepfake_detector.training import TrainConfig

log = logging.getLogger(__name__)

STRATEGY_CLASSES = {"none": "default strategy", "mirrored": "MirroredStrategy", "multiworker": "MultiWorkerMirroredStrategy"}
STRATEGIES = tuple(STRATEGY_CLASSES)
#: The model's output layer (see model.py); it stays float32 under mixed precision.
OUTPUT_LAYER = "fake_score"


class TrainingSetupError(ValueError):
    """A training set-up this machine cannot run; the message says what to change."""


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that also keeps the per-epoch history and refuses another run's backup.

    Every epoch the weights, the optimizer state (its step count drives the cosine schedule)
    and the epoch number are written to ``directory``; a run started again with the same
    config restores them and continues with the next epoch. The history of the epochs
    before the interruption is kept beside them, so the saved model reports every epoch.
    The backup is not removed when ``fit`` returns but by :meth:`remove`, once the model is
    saved: a crash between the two must not lose the finished training.
    """

    HISTORY_FILE = "history.json"
    RUN_FILE = "run.json"

    def __init__(self, directory: str | Path, run: dict):
        # double_checkpoint: a kill while the weights are written falls back to the epoch before.
        super().__init__(str(directory), save_freq="epoch", double_checkpoint=True, delete_checkpoint=False)
        self.directory = Path(directory)
        self.run = run
        self.history: dict[str, list[float]] = {}
        self.initial_epoch = 0

    def saved_epoch(self) -> int:
        """How many epochs the backup holds (0: none, a fresh run)."""
        metadata = Path(self._training_metadata_path)
        return int(json.loads(metadata.read_text())["epoch"]) if metadata.exists() else 0

    def check_same_run(self) -> None:
        """Refuse a backup left by a different config (before any data is loaded).

        Raises:
            TrainingSetupError: the directory holds the backup of a different run.
        """
        run_file = self.directory / self.RUN_FILE
        if not (run_file.exists() and self.saved_epoch()):
            return
        saved = json.loads(run_file.read_text())
        differ = sorted(k for k in set(saved) | set(self.run) if saved.get(k) != self.run.get(k))
        if differ:
            raise TrainingSetupError(
                f"{self.directory} holds the backup of a different run ({', '.join(differ)} differ); "
                f"run the same command again, or delete {self.directory} to start over"
            )

    def _load_model(self):
        super()._load_model()
        self.initial_epoch = self.saved_epoch()
        if not self.initial_epoch:
            return
        history_file = self.directory / self.HISTORY_FILE
        saved = json.loads(history_file.read_text()) if history_file.exists() else {}
        # The history is written before the weights, so it may hold one epoch more: cut it.
        self.history = {key: values[: self.initial_epoch] for key, values in saved.items()}
        log.info("resuming from epoch %d: %d epoch(s) done, restored from %s",
                 self.initial_epoch + 1, self.initial_epoch, self.directory)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(np.asarray(value)))
        _write_json_atomically(self.directory / self.RUN_FILE, self.run)
        _write_json_atomically(self.directory / self.HISTORY_FILE, self.history)
        super().on_epoch_end(epoch, logs)

    def remove(self) -> None:
        """Delete the backup (after a successful run)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _write_json_atomically(path: Path, value) -> None:
    write_atomically(path, json.dumps(value))


def read_tf_config() -> dict:
    """The ``TF_CONFIG`` environment variable that describes a multi-worker cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise TrainingSetupError(
            'multi-worker training needs TF_CONFIG, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}, set on every machine with its own index'
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        task_type, index = tf_config["task"]["type"], int(tf_config["task"]["index"])
        if not isinstance(workers, list) or task_type not in tf_config["cluster"]:
            raise ValueError(f"task type {task_type!r} is not in the cluster")
        if not 0 <= index < len(tf_config["cluster"][task_type]):
            raise ValueError(f"task index {index} is outside the {task_type} list")
    except (ValueError, KeyError, TypeError) as error:
        raise TrainingSetupError(f"TF_CONFIG is not a usable cluster description: {error}") from error
    return tf_config


def make_strategy(distribute: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for a ``TrainConfig.distribute`` value.

    ``mirrored`` replicates over every visible GPU or, with none, every visible CPU device
    (one, unless logical CPU devices were configured). ``multiworker`` must be created before
    TensorFlow runs anything in the process: it configures the runtime's collective ops.
    """
    if distribute == "none":
        return tf.distribute.get_strategy()
    if distribute == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if distribute == "multiworker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingSetupError(f"unknown distribution {distribute!r}; choose one of {', '.join(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the results: the only one, the ``chief``, or worker 0 without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
    )


def task_name(strategy: tf.distribute.Strategy) -> str | None:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return None
    return f"{resolver.task_type}-{resolver.task_id}"


def input_shard(strategy: tf.distribute.Strategy) -> tuple[int, int] | None:
    """``(workers, this worker's index)`` when several processes train together, else None.

    Each worker then reads only its share of every epoch (``pipeline.make_dataset``).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return None
    cluster = resolver.cluster_spec().as_dict()
    tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
    if len(tasks) < 2:
        return None
    return len(tasks), tasks.index((resolver.task_type, resolver.task_id))


def backup_dir_for(config: TrainConfig, strategy: tf.distribute.Strategy) -> Path:
    """``config.backup_dir`` or ``.NAME.backup/`` beside the output; one sub-folder per worker.

    Each worker keeps its own copy (they are identical after every synchronised epoch), so
    resuming needs no file system shared between machines and two workers on one machine
    never write the same file.
    """
    output = Path(config.output)
    directory = Path(config.backup_dir) if config.backup_dir else output.with_name(f".{output.stem}.backup")
    task = task_name(strategy)
    return directory / task if task else directory


def build_training_model(config: TrainConfig) -> keras.Model:
    """The network to train: float32, or with ``mixed_precision`` float16 compute and a float32 output.

    Build inside the strategy's scope. A float16 sigmoid rounds scores near 0 and 1 and its
    log-loss overflows, so the output layer computes in float32 (the TF mixed-precision guide's
    advice); layers keep float32 variables either way, so the weights drop into a float32 copy.
    """
    if not config.mixed_precision:
        return build_model(config.arch, config.image_size, pretrained=config.pretrained)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model(config.arch, config.image_size, pretrained=config.pretrained)
        if model.get_layer(OUTPUT_LAYER).compute_dtype != "float32":
            model = _with_float32_output(model)
    finally:
        keras.config.set_dtype_policy(previous)
    if model.outputs[0].dtype != "float32":
        raise RuntimeError(f"the {OUTPUT_LAYER} layer did not become float32 under mixed precision")
    return model


def _with_float32_output(model: keras.Model) -> keras.Model:
    """The same network (same layer objects, same weights) with the output layer rebuilt as float32."""
    old_output = model.get_layer(OUTPUT_LAYER)

    def clone(layer):
        if layer is not old_output:
            return layer
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    rebuilt.get_layer(OUTPUT_LAYER).set_weights(old_output.get_weights())
    return rebuilt


def work_around_keras_multi_worker_gaps(model: keras.Model) -> None:
    """Let ``fit`` run under ``MultiWorkerMirroredStrategy`` (Keras 3.15; keras-team/keras issue 20585).

    Two gaps: ``fit`` builds the model by reducing a nested batch across workers, which
    tf.distribute refuses; and each step's logged values are reduced with ``axis=0``, which
    scalars lack. A model with no recorded strategy is built while tracing instead (``fit``
    runs inside the strategy's scope, so data, steps and variables are still distributed), and
    the step's scalars get a length-1 axis for that reduction to remove. The values are
    metric results, already summed across workers, so their mean over workers is unchanged.
    """
    model._distribute_strategy = None

    def with_axis(step):
        def wrapped(data):
            return {k: tf.reshape(v, [1]) if v.shape.rank == 0 else v for k, v in step(data).items()}

        return wrapped

    model.train_step = with_axis(model.train_step)
    model.test_step = with_axis(model.test_step)


def single_device_copy(model: keras.Model, config: TrainConfig) -> keras.Model:
    """A plain float32 model holding ``model``'s weights: the same file as a one-device run saves."""
    copy = build_model(config.arch, config.image_size, pretrained=False)
    copy.set_weights(model.get_weights())
    return copy

"""The Keras callbacks of a training run: the recipe's schedule, logs, and the backup that resumes it.

:func:`make_callbacks` gives what a recipe asks for (early stopping, its schedule's callbacks, the
best epoch kept); :class:`ResumableBackup` backs the run up every epoch, so a run that is killed
(a preempted machine) continues from its last finished epoch when started again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from deepfake_detector.errors import TrainingSetupError
from deepfake_detector.files import write_atomically
from deepfake_detector.optim import schedule_of
from deepfake_detector.recipes import TrainConfig

log = logging.getLogger(__name__)


def make_callbacks(config: TrainConfig, best: keras.callbacks.Callback | None = None) -> list[keras.callbacks.Callback]:
    """Early stopping and the schedule's callbacks as the recipe asks (the plateau schedule's speak
    as the tutorial's did), the best epoch kept by ``best``, and the learning rate logged."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
            )
        )
    callbacks += schedule_of(config).callbacks(config)
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

    def saved_history(self) -> dict[str, list[float]]:
        """The per-epoch history of the epochs the backup holds (empty for a fresh run).

        Readable before ``fit`` starts, so the best-epoch checkpoint of a resumed run
        carries on from the best epoch before the interruption.
        """
        epochs = self.saved_epoch()
        history_file = self.directory / self.HISTORY_FILE
        if not epochs or not history_file.exists():
            return {}
        # The history is written before the weights, so it may hold one epoch more: cut it.
        return {key: values[:epochs] for key, values in json.loads(history_file.read_text()).items()}

    def _load_model(self):
        super()._load_model()
        self.initial_epoch = self.saved_epoch()
        if not self.initial_epoch:
            return
        self.history = self.saved_history()
        log.info(
            "resuming from epoch %d: %d epoch(s) done, restored from %s",
            self.initial_epoch + 1,
            self.initial_epoch,
            self.directory,
        )

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(np.asarray(value)))
        write_atomically(self.directory / self.RUN_FILE, json.dumps(self.run))
        write_atomically(self.directory / self.HISTORY_FILE, json.dumps(self.history))
        super().on_epoch_end(epoch, logs)

    def remove(self) -> None:
        """Delete the backup (after a successful run)."""
        shutil.rmtree(self.directory, ignore_errors=True)

"""The recipes' optimizers and learning-rate schedules, in Keras.

Each is the implementation of an entry of ``recipes.OPTIMIZERS`` or ``recipes.SCHEDULES``,
which name them here by their dotted paths: the optimizer is built by
:meth:`deepfake_detector.model.DeepfakeDetectorModel.compile_model`, the schedule's rate is what
a run compiles with (:func:`learning_rate_for`) and its callbacks join the run's
(:func:`deepfake_detector.callbacks.make_callbacks`).
"""

from __future__ import annotations

import keras

from deepfake_detector.recipes import SCHEDULES, TrainConfig


def adam(learning_rate, weight_decay: float = 0.0, **ema) -> keras.optimizers.Optimizer:
    """Adam, the original recipe's; ``weight_decay`` is AdamW's only, so unused here."""
    return keras.optimizers.Adam(learning_rate, **ema)


def adamw(learning_rate, weight_decay: float = 0.0, **ema) -> keras.optimizers.Optimizer:
    """AdamW: Adam with decoupled weight decay."""
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **ema)


class Schedule:
    """How the learning rate moves: the rate to compile with (a number or a Keras schedule), and the
    callbacks that change it while the run fits. By default a constant rate and no callbacks."""

    def learning_rate(self, config: TrainConfig, steps_per_epoch: int):
        return config.learning_rate

    def callbacks(self, config: TrainConfig) -> list[keras.callbacks.Callback]:
        return []


class Plateau(Schedule):
    """The original recipe's: constant, cut tenfold after 5 epochs without a better val_loss."""

    def callbacks(self, config: TrainConfig) -> list[keras.callbacks.Callback]:
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.1, patience=5, min_lr=1e-7, verbose=1 if config.verbose else 0
            )
        ]


class WarmupCosine(Schedule):
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at the last step."""

    def learning_rate(self, config: TrainConfig, steps_per_epoch: int):
        total = max(1, config.epochs * steps_per_epoch)
        warmup = config.warmup_epochs * steps_per_epoch
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else config.learning_rate,
            decay_steps=max(1, total - warmup),
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )


def schedule_of(config: TrainConfig) -> Schedule:
    """The recipe's schedule (``config.schedule``, a name in ``recipes.SCHEDULES``)."""
    return SCHEDULES.load(config.schedule)()


def learning_rate_for(config: TrainConfig, steps_per_epoch: int):
    """The rate a run of ``config`` compiles with: a constant, or a schedule over its steps."""
    return schedule_of(config).learning_rate(config, steps_per_epoch)

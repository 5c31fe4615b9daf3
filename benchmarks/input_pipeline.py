"""Training input pipeline: images/s of training steps fed three ways, same model and batch.

    python -m benchmarks.input_pipeline [--steps 20] [--runs 3] [--batch-size 64]

1. the original loader: keras.utils.image_dataset_from_directory, no cache or prefetch;
2. ours: deepfake_detector.pipeline.make_dataset streaming the split's on-disk cache, decoded once
   by the shared preprocessing (build time reported separately), with and without the shipped
   recipe's augmentation;
3. tensors already in memory: model.fit on a NumPy array (the ceiling).
The model is the original 4-block CNN at 128 px. Medians of --runs runs of --steps steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np

from benchmarks.common import LFW_FACESWAP
from deepfake_detector.data import DatasetHandler
from deepfake_detector.networks import build_model
from deepfake_detector.pipeline import make_dataset
from deepfake_detector.recipes import DataConfig, TrainConfig
from deepfake_detector.training import compile_model


class StepTimer(keras.callbacks.Callback):
    def __init__(self, skip: int):
        super().__init__()
        self.skip, self.times = skip, []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def rate(model, data, steps: int, batch_size: int, skip: int = 3) -> float:
    """Images/s over ``steps`` training steps after ``skip`` warm-up steps."""
    timer = StepTimer(skip)
    if isinstance(data, tuple):
        model.fit(
            *data, batch_size=batch_size, epochs=1, steps_per_epoch=None, verbose=0, callbacks=[timer], shuffle=True
        )
    else:
        model.fit(data.take(steps + skip), epochs=1, verbose=0, callbacks=[timer])
    times = timer.times[skip : skip + steps + 1]
    return (len(times) - 1) * batch_size / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    size, batch = 128, args.batch_size
    config = TrainConfig()
    model = build_model("seed", size)
    compile_model(model, config, steps_per_epoch=100)

    original = keras.utils.image_dataset_from_directory(
        LFW_FACESWAP / "Train", image_size=(size, size), batch_size=batch, label_mode="binary", seed=1
    ).repeat()
    start = time.perf_counter()
    train = DatasetHandler(dataset_download_dir=LFW_FACESWAP, config=DataConfig(image_size=size)).splits(("Train",))[
        "Train"
    ]
    decode_seconds = time.perf_counter() - start
    ours = make_dataset(train, batch, training=True, config=DataConfig(augment="none", seed=0)).repeat()
    ours_augmented = make_dataset(train, batch, training=True, config=DataConfig(augment="full", seed=0)).repeat()
    n = (args.steps + 3) * batch
    in_memory = (train.read(np.arange(n)).astype(np.float32), train.labels[:n, None].astype(np.float32))

    feeds = {
        "original loader (image_dataset_from_directory)": lambda: rate(model, original, args.steps, batch),
        "ours (tf.data over decoded images)": lambda: rate(model, ours, args.steps, batch),
        "ours with augmentation": lambda: rate(model, ours_augmented, args.steps, batch),
        "tensors in memory (model.fit on arrays)": lambda: rate(model, in_memory, args.steps, batch),
    }
    results = {name: [] for name in feeds}
    for _ in range(args.runs):
        for name, feed in feeds.items():
            results[name].append(feed())
    medians = {name: statistics.median(r) for name, r in results.items()}
    print(f"seed CNN at {size} px, batch {batch}, {args.steps} steps x {args.runs} runs (median images/s)")
    for name, value in medians.items():
        print(f"{name:50s} {value:7.1f} images/s")
    original_rate, ours_rate, _, memory_rate = medians.values()
    print(f"ours / original loader = {ours_rate / original_rate:.2f} (target >= 1)")
    print(f"ours / in-memory       = {ours_rate / memory_rate:.2f} (target >= 0.90)")
    print(
        f"opening the cache of {len(train)} training images (built now if it was not yet): {decode_seconds:.1f} s "
        f"({len(train) / decode_seconds:.0f} images/s)"
    )


if __name__ == "__main__":
    main()

"""Scaling out: MirroredStrategy, two workers with TF_CONFIG, resuming a killed run, mixed precision.

Distributed runs happen in subprocesses: logical devices and the multi-worker runtime must be
configured before TensorFlow starts, which in the test process it already has.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import image_bytes, make_dataset, synthetic_image, toy_features

REPO = Path(__file__).resolve().parent.parent
SIZE = 32  # pixels: small enough that a subprocess epoch takes about a second


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _train_command(data_dir: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        "--image-size",
        str(SIZE),
        "--verbose",
        "2",
        *flags,
    ]


def _metadata(path: Path):
    from deepfake_detector.model import read_metadata

    return read_metadata(path)


# ----------------------------------------------------------------------------- MirroredStrategy

# Two logical CPU devices stand in for two GPUs; the script goes through the pieces train() uses
# (strategy, model, compile, input pipeline, callbacks) without its evaluation and saving, which
# the two-worker test covers. Dropout is switched off and BatchNormalization frozen (inference
# mode): those legitimately differ between one batch and two half batches (per-replica masks;
# per-replica batch statistics, Keras BN not being synchronised). Training is full-batch (16
# images: one batch of 16, or 8 on each replica), because under a strategy Keras draws one
# batch from the dataset to build the model before fitting, which advances the reshuffling
# dataset by an epoch: the same images in another order. With one step per epoch order cannot matter.
MIRRORED_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from deepfake_detector import pipeline, training
from deepfake_detector.cache import ArraySource
from deepfake_detector.recipes import DataConfig
from tests.helpers import synthetic_image

rng = np.random.default_rng(0)
labels = np.arange(24) %% 2
images = np.stack([np.asarray(synthetic_image(bool(fake), rng, %(size)d)) for fake in labels])
results = {}
for distribute, batch_size in (("none", 16), ("mirrored", 8)):
    config = training.TrainConfig(image_size=%(size)d, epochs=3, batch_size=batch_size, learning_rate=1e-3,
                                  early_stopping_patience=0, distribute=distribute, seed=3)
    keras.utils.set_random_seed(config.seed)
    strategy = training.make_strategy(config.distribute)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    train_ds = pipeline.make_dataset(ArraySource(images[:16], labels[:16]), global_batch, True, DataConfig(seed=config.seed))
    val_ds = pipeline.make_dataset(ArraySource(images[16:], labels[16:]), global_batch, False)
    with strategy.scope():
        model = training.build_training_model(config)
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        training.compile_model(model, config, steps_per_epoch=len(train_ds))
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=0,
                        callbacks=training.make_callbacks(config))
    results[distribute] = {"replicas": strategy.num_replicas_in_sync, "global_batch": global_batch,
                           "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.slow
def test_mirrored_over_two_devices_trains_like_one_device():
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT % {"size": SIZE}],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS ", 1)[1])
    one, mirrored = results["none"], results["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert one["global_batch"] == mirrored["global_batch"] == 16
    assert one["history"]["val_loss"][-1] < one["history"]["val_loss"][0] - 0.02  # it trained
    # Tolerance: the same 16 images and initial weights, and the replicas' gradients are
    # averaged, so only float32 summation order differs: measured 2e-7 relative (float32
    # epsilon: 1.2e-7). 1e-5 leaves a 50x margin; a real fault (gradients summed instead of
    # averaged, a replica on the wrong images, the loss of one replica reported) moves these
    # losses by more than 1%.
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(mirrored["history"][key], one["history"][key], rtol=1e-5, err_msg=key)


# ----------------------------------------------------------------------------- two workers


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes(tmp_path):
    # 20 training images in global batches of 8 (4 per worker): the last batch is partial.
    data_dir = make_dataset(tmp_path / "data", {"Train": 10, "Validation": 4, "Test": 4})
    output = tmp_path / "out" / "model.keras"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                _train_command(data_dir, output, "--distribute", "multiworker", "--epochs", "1", "--batch-size", "4"),
                env=_env(TF_CONFIG=json.dumps(tf_config), TMPDIR=str(scratch)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=240)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for index, (process, log) in enumerate(zip(processes, logs)):
        assert process.returncode == 0, f"worker {index}:\n{log[-3000:]}"
        assert "MultiWorkerMirroredStrategy), 2 replica(s), this process is worker-" in log
    assert "saved " in logs[0] and "the chief worker saved the model" in logs[1]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.keras"))
    assert written == [Path("out/model.keras"), Path("out/model_best.keras")]
    # no backups left; the best epoch is kept as the tutorial did
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.curves.png", "model.keras", "model_best.keras"]
    assert not any((tmp_path / "tmp1").iterdir())  # the non-chief's scratch output was removed
    metadata = _metadata(output)
    assert metadata.train_config["replicas"] == 2 and metadata.train_config["global_batch_size"] == 8
    assert len(metadata.train_config["history"]["loss"]) == 1


# ----------------------------------------------------------------------------- preemption


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_finished_epoch(tmp_path, caplog, capsys):
    import train
    from deepfake_detector.detector import Detector

    data_dir = make_dataset(tmp_path / "data", {"Train": 20, "Validation": 4, "Test": 4})
    output = tmp_path / "out" / "model.keras"
    command = _train_command(data_dir, output, "--epochs", "4", "--batch-size", "8")
    backup_state = output.with_name(".model.backup") / "training_metadata.json"

    first = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            if backup_state.exists() and json.loads(backup_state.read_text() or "{}").get("epoch", 0) >= 2:
                break
            time.sleep(0.05)
    finally:
        first.kill()  # a preempted machine: no clean-up of any kind
        first.wait()
    assert json.loads(backup_state.read_text())["epoch"] == 2, "the run was not stopped after its second epoch"
    assert not output.exists()

    # The same command again (in this process, which saves starting TensorFlow a second time).
    caplog.set_level("INFO", logger="deepfake_detector")
    assert train.main(train.get_args_parser().parse_args(command[2:])) == 0
    assert "resuming from epoch 3: 2 epoch(s) done" in caplog.text
    out = capsys.readouterr().out
    epochs = [line.split()[1] for line in out.splitlines() if line.startswith("Epoch ") and "/" in line.split()[1]]
    assert epochs == ["3/4", "4/4"]
    train_config = _metadata(output).train_config
    # The best-epoch checkpoint carries on from the best Validation loss before the kill.
    best_before = min(train_config["history"]["val_loss"][:2])
    assert re.search(rf"Epoch 3: val_loss (improved|did not improve) from {best_before:.5f}\b", out), out
    assert train_config["epochs_run"] == 4 and train_config["resumed_from_epoch"] == 3
    assert all(len(values) == 4 for values in train_config["history"].values())
    assert not output.with_name(".model.backup").exists()

    detector = Detector.from_path(output)
    prediction = detector.predict(image_bytes(synthetic_image(True, np.random.default_rng(1), SIZE)))
    assert 0.0 <= prediction.fake_probability <= 1.0


class _Preempted(Exception):
    """The machine taken away mid-run."""


def _preempt_after(epochs: int):
    """A callback that stops training, as a preemption would, when epoch ``epochs + 1`` begins."""
    import keras

    class Preempt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == epochs:
                raise _Preempted

    return Preempt()


@pytest.mark.slow
def test_cosine_learning_rate_continues_across_a_resume(tmp_path):
    """The step-based schedule picks up where it was: the optimizer's step count is restored."""
    import keras

    from deepfake_detector import training

    config = training.TrainConfig(epochs=4, schedule="cosine", warmup_epochs=1, learning_rate=1e-3)
    x, y = toy_features()
    steps = 3  # 24 samples in batches of 8

    def run(*extra_callbacks) -> training.ResumableBackup:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
        training.compile_model(model, config, steps_per_epoch=steps)
        backup = training.ResumableBackup(tmp_path / "backup", {"run": 1})
        backup.check_same_run()
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=config.epochs,
            verbose=0,
            callbacks=[*training.make_callbacks(config), backup, *extra_callbacks],
        )
        return backup

    with pytest.raises(_Preempted):
        run(_preempt_after(2))
    backup = run()
    assert backup.initial_epoch == 2 and len(backup.history["loss"]) == 4
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=(config.epochs - 1) * steps, warmup_target=1e-3, warmup_steps=steps
    )
    expected = [float(schedule(epoch * steps)) for epoch in (1, 2, 3, 4)]
    # A step count restarted at 0 would repeat the warm-up: 1e-3 after epoch 3, not 2.5e-4.
    np.testing.assert_allclose(backup.history["learning_rate"], expected, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_weight_average_continues_across_a_resume(tmp_path):
    """The moving average of the weights is optimizer state: a resumed run ends where an unbroken one does."""
    import keras

    from deepfake_detector import training

    config = training.TrainConfig(epochs=3, optimizer="adamw", learning_rate=0.05, ema_momentum=0.8)
    x, y = toy_features()

    def run(backup_dir, *extra_callbacks):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
        training.compile_model(model, config, steps_per_epoch=3)
        backup = training.ResumableBackup(backup_dir, {"run": 1})
        model.fit(
            x, y, batch_size=8, epochs=config.epochs, shuffle=False, verbose=0, callbacks=[backup, *extra_callbacks]
        )
        return model.get_weights()

    unbroken = run(tmp_path / "unbroken")
    with pytest.raises(_Preempted):
        run(tmp_path / "resumed", _preempt_after(2))
    for a, b in zip(run(tmp_path / "resumed"), unbroken):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_backup_of_a_different_run_is_refused(tmp_path):
    from deepfake_detector.callbacks import ResumableBackup
    from deepfake_detector.errors import TrainingSetupError

    directory = tmp_path / "backup"
    directory.mkdir()
    (directory / ResumableBackup.RUN_FILE).write_text(json.dumps({"epochs": 4, "seed": 1}))
    ResumableBackup(directory, {"epochs": 6, "seed": 1}).check_same_run()  # no epoch backed up yet: a fresh run
    (directory / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    ResumableBackup(directory, {"epochs": 4, "seed": 1}).check_same_run()  # the same command resumes
    with pytest.raises(TrainingSetupError, match="different run \\(epochs differ\\)"):
        ResumableBackup(directory, {"epochs": 6, "seed": 1}).check_same_run()


# ----------------------------------------------------------------------------- set-up errors


def test_mixed_precision_is_refused_without_a_gpu(tmp_path, capsys):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    import train

    args = train.get_args_parser().parse_args(
        ["--mixed-precision", "--data-dir", str(tmp_path), "--output", str(tmp_path / "m.keras")]
    )
    assert train.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train.py: mixed precision (mixed_float16) needs a GPU") and "\n" not in error
    assert not any(tmp_path.iterdir())


def test_multiworker_needs_a_valid_tf_config(monkeypatch):
    from deepfake_detector.errors import TrainingSetupError
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import check_config

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TrainingSetupError, match="needs TF_CONFIG"):
        check_config(TrainConfig(distribute="multiworker"))
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(TrainingSetupError, match="index 3 is outside"):
        check_config(TrainConfig(distribute="multiworker"))


def test_mixed_precision_model_keeps_a_float32_output():
    """Layers compute in float16, the sigmoid in float32; the weights fit the plain float32 network."""
    import keras

    from deepfake_detector.networks import OUTPUT_LAYER
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import build_training_model, single_device_copy

    config = TrainConfig(image_size=SIZE, mixed_precision=True)
    model = build_training_model(config)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    assert model.outputs[0].dtype == "float32"
    assert model.get_layer(OUTPUT_LAYER).compute_dtype == "float32"
    assert {layer.compute_dtype for layer in model.layers if isinstance(layer, keras.layers.Conv2D)} == {"float16"}
    assert model.dtype_policy.name == "mixed_float16"  # so compile() adds loss scaling

    plain = single_device_copy(model, config)
    assert plain.get_layer(OUTPUT_LAYER).compute_dtype == "float32" and plain.dtype_policy.name == "float32"
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in model.layers]
    for mixed_layer, plain_layer in zip(model.layers, plain.layers):  # every weight lands in its own layer
        for mixed_weight, plain_weight in zip(mixed_layer.get_weights(), plain_layer.get_weights(), strict=True):
            np.testing.assert_array_equal(mixed_weight, plain_weight)
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3)).astype("float32")
    mixed, full = np.asarray(model(images, training=False), "float32"), np.asarray(plain(images, training=False))
    assert mixed.dtype == full.dtype == np.float32
    np.testing.assert_allclose(mixed, full, atol=2e-2)  # float16 rounding only


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_stops_with_a_clear_error(tmp_path):
    """Worker 1 exited at start (a bad argument); worker 0 waited for it forever, deaf to SIGTERM."""
    data_dir = make_dataset(tmp_path / "data", {"Train": 4, "Validation": 2, "Test": 2})
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}
    process = subprocess.Popen(
        _train_command(
            data_dir,
            tmp_path / "model.keras",
            "--distribute",
            "multiworker",
            "--epochs",
            "1",
            "--cluster-timeout",
            "15",
        ),
        env=_env(TF_CONFIG=json.dumps(tf_config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log = process.communicate(timeout=240)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, log[-3000:]  # killed: the wait holds the GIL and ignores SIGTERM
    errors = [line for line in log.splitlines() if "the cluster did not start within 15 s" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR "), log[-3000:]
    assert f"worker 1 ({workers[1]}) not listening" in errors[0] and "worker 0" not in errors[0]

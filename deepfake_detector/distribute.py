"""Training beyond one device: ``tf.distribute`` strategies and which process does what.

Everything here is TensorFlow's own machinery (``MirroredStrategy``, and
``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment variable) and
takes plain values; :mod:`deepfake_detector.training` calls it for one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import tensorflow as tf

from deepfake_detector.errors import TrainingSetupError
from deepfake_detector.recipes import STRATEGIES, TrainConfig


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


def make_strategy(distribute: str, cluster_timeout: float = TrainConfig.cluster_timeout) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for a ``TrainConfig.distribute`` value (``recipes.STRATEGIES``).

    Raises:
        TrainingSetupError: no such strategy, or (``multiworker``) no usable ``TF_CONFIG``, or
            a cluster that did not start in time.
    """
    return STRATEGIES.load(distribute, TrainingSetupError)(cluster_timeout)


def one_device(cluster_timeout: float) -> tf.distribute.Strategy:
    """TensorFlow's default strategy: this process's one device."""
    return tf.distribute.get_strategy()


def mirrored(cluster_timeout: float) -> tf.distribute.Strategy:
    """Replicas on every visible GPU or, with none, every visible CPU device (one, unless logical
    CPU devices were configured)."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def multiworker(cluster_timeout: float) -> tf.distribute.Strategy:
    """One process per machine of ``TF_CONFIG``. It must be created before TensorFlow runs anything
    in the process: it configures the runtime's collective ops, and waits for every worker to
    start, for at most ``cluster_timeout`` seconds (:func:`_cluster_deadline`)."""
    with _cluster_deadline(read_tf_config(), cluster_timeout):
        return tf.distribute.MultiWorkerMirroredStrategy()


@contextlib.contextmanager
def _cluster_deadline(tf_config: dict, timeout: float):
    """Have the process killed, with a one-line error naming the tasks not listening, if the block
    has not finished after ``timeout`` s (:mod:`deepfake_detector.watchdog`: the wait for a task
    that never starts holds the GIL in TensorFlow's C++ runtime, so no thread of ours could)."""
    tasks = [
        f"{kind} {index}={address}"
        for kind, addresses in tf_config["cluster"].items()
        for index, address in enumerate(addresses)
    ]
    message = f"the cluster did not start within {timeout:g} s"
    watchdog = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("watchdog.py")), str(os.getpid()), str(timeout), message, *tasks],
        stdin=subprocess.PIPE,
    )
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def _cluster_resolver(strategy: tf.distribute.Strategy):
    """The strategy's cluster resolver when this process is one task of a cluster, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return None if resolver is None or resolver.task_type is None else resolver


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the results: the only one, the ``chief``, or worker 0 without a chief."""
    resolver = _cluster_resolver(strategy)
    if resolver is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
    )


def task_name(strategy: tf.distribute.Strategy) -> str | None:
    """``worker-1``, ``chief-0``...: this process's task in a cluster, or None alone."""
    resolver = _cluster_resolver(strategy)
    return None if resolver is None else f"{resolver.task_type}-{resolver.task_id}"


def input_shard(strategy: tf.distribute.Strategy) -> tuple[int, int] | None:
    """``(workers, this worker's index)`` when several processes train together, else None.

    Each worker then reads only its share of every epoch (``pipeline.make_dataset``).
    """
    resolver = _cluster_resolver(strategy)
    if resolver is None:
        return None
    cluster = resolver.cluster_spec().as_dict()
    tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
    if len(tasks) < 2:
        return None
    return len(tasks), tasks.index((resolver.task_type, resolver.task_id))


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

"""The training recipes' parts: augmentation policies and frozen MobileNetV2 blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import synthetic_image, toy_features


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return np.asarray(synthetic_image(True, np.random.default_rng(5), 64))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["full", "light"])
def test_augmentation_is_seeded_label_preserving_and_keeps_the_image(face, name):
    import tensorflow as tf

    from deepfake_detector.augment import augment_image
    from deepfake_detector.cache import ArraySource
    from deepfake_detector.pipeline import make_dataset
    from deepfake_detector.recipes import AUGMENTATIONS, DataConfig

    def augmented(seed: int) -> np.ndarray:
        return augment_image(tf.constant(face), tf.constant([seed, 0], tf.int64), AUGMENTATIONS[name]).numpy()

    outputs = [augmented(seed) for seed in range(40)]
    assert all(out.shape == face.shape and out.dtype == np.uint8 for out in outputs)
    np.testing.assert_array_equal(augmented(3), outputs[3])  # same seed, same image
    assert len({out.tobytes() for out in outputs}) > 30
    flipped = face[:, ::-1].astype(int)
    closer_to_flip = [np.abs(out - flipped).mean() < np.abs(out - face.astype(int)).mean() for out in outputs]
    assert 5 < sum(closer_to_flip) < 35  # about half are mirrored
    # A shift of at most 1/16 of the side: every output still looks like the face (or its mirror).
    assert max(min(np.abs(out - face.astype(int)).mean(), np.abs(out - flipped).mean()) for out in outputs) < 40

    images = np.stack([face] * 8)
    targets = np.array([0, 1] * 4)
    batch_images, batch_targets = next(
        iter(make_dataset(ArraySource(images, targets), 8, training=True, config=DataConfig(augment=name, seed=1)))
    )
    assert batch_images.shape == images.shape and batch_images.dtype == tf.uint8
    assert sorted(batch_targets.numpy()[:, 0].tolist()) == sorted(targets.astype(float).tolist())


@pytest.mark.slow
def test_frozen_blocks_keep_their_weights_and_the_saved_copy_matches():
    import keras

    from deepfake_detector.networks import freeze_leading_blocks
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import build_training_model, compile_model, single_device_copy

    config = TrainConfig.for_arch("mobilenet_v2", image_size=32, pretrained=False, frozen_blocks=4)
    model = build_training_model(config)
    assert freeze_leading_blocks(model, config.frozen_blocks) > 0
    backbone = model.get_layer("mobilenet_v2")
    frozen = [layer for layer in backbone.layers if layer.weights and not layer.trainable]
    assert {layer.name.split("_")[1] for layer in frozen} == {"0", "1", "2", "3"}
    assert all(layer.trainable for layer in backbone.layers if layer.name.startswith(("features_4_", "features_18")))
    before = {layer.name: [w.numpy().copy() for w in layer.weights] for layer in backbone.layers if layer.weights}

    compile_model(model, config, steps_per_epoch=2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (8, 1)).astype("float32")
    for _ in range(2):
        model.train_on_batch(x, y)
    for layer in backbone.layers:
        if not layer.weights:
            continue
        same = all(np.array_equal(a, w.numpy()) for a, w in zip(before[layer.name], layer.weights))
        assert same == (not layer.trainable), layer.name  # frozen BatchNorm statistics too

    copy = single_device_copy(model, config)
    assert all(layer.trainable for layer in copy.layers)
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(copy, keras.Model)


def test_frozen_blocks_and_unknown_augmentations_are_refused():
    from deepfake_detector.errors import TrainingSetupError
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import check_config

    with pytest.raises(TrainingSetupError, match="mobilenet_v2"):
        check_config(TrainConfig(arch="seed", frozen_blocks=2))
    with pytest.raises(TrainingSetupError, match="unknown augmentation 'strong'"):
        check_config(TrainConfig(augment="strong"))
    with pytest.raises(TrainingSetupError, match="must end in .keras"):
        check_config(TrainConfig(output="runs/seed"))
    with pytest.raises(TrainingSetupError, match="unknown fakes"):
        check_config(TrainConfig(fakes="gan"))
    with pytest.raises(TrainingSetupError, match="steps per epoch"):
        check_config(TrainConfig(steps_per_epoch=0))
    with pytest.raises(TrainingSetupError, match="--fakes dataset makes none"):
        check_config(TrainConfig(other_faces=0.5))
    with pytest.raises(TrainingSetupError, match="from 0 to 1, got 1.5"):
        check_config(TrainConfig(fakes="self-blended", other_faces=1.5))


def test_the_model_cards_command_is_the_shipped_models_recipe():
    """The training command in models/README.md, parsed by train.py, is the recipe saved in the
    shipped model: the card says how to train what ships."""
    import dataclasses
    import re
    import shlex

    import train
    from deepfake_detector.detector import DEFAULT_MODEL_PATH
    from deepfake_detector.model import read_metadata

    card = (Path(__file__).resolve().parent.parent / "models" / "README.md").read_text()
    command = re.search(r"```bash\n(python train\.py [^`]*?)\n```", card).group(1).replace("\\\n", " ")
    args = train.get_args_parser().parse_args(shlex.split(command)[2:])
    recipe = dataclasses.asdict(train.config_from(args))
    shipped = read_metadata(DEFAULT_MODEL_PATH)
    where_and_how_loud = {
        "data_dir",
        "output",
        "backup_dir",
        "verbose",
        "archive",
        "sha256",
        "cache_dir",
        "cluster_timeout",
    }
    # The data sets by name: the card reads them where scripts.rebuild_data writes them.
    assert [Path(d).name for d in recipe["data_dir"]] == [Path(d).name for d in shipped.train_config["data_dir"]]
    differing = {
        k: (v, shipped.train_config.get(k))
        for k, v in recipe.items()
        if k not in where_and_how_loud and shipped.train_config.get(k) != v
    }
    assert differing == {}
    assert shipped.arch == "mobilenet_v2" and shipped.flip_average and shipped.image_size == recipe["image_size"]
    assert shipped.framing == "face"


@pytest.mark.slow
def test_weight_averaging_saves_the_moving_average_of_the_trained_weights():
    """With ``ema_momentum`` the model ends with the running average of its weights after each step."""
    import keras

    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import compile_model

    momentum = 0.8
    config = TrainConfig(optimizer="adamw", weight_decay=0.01, learning_rate=0.05, ema_momentum=momentum)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    compile_model(model, config, steps_per_epoch=3)
    x, y = toy_features()

    trained = []  # the weights the optimizer produced, after every step

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trained.append([w.numpy().copy() for w in model.trainable_weights])

    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[Record()])
    assert len(trained) == 6
    average = trained[0]  # the first step starts the average at the weights themselves
    for step in trained[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step)]
    for saved, expected, last in zip(model.trainable_weights, average, trained[-1]):
        np.testing.assert_allclose(saved.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(saved.numpy(), last)  # not simply the last step's weights


def test_weight_average_momentum_out_of_range_is_refused():
    from deepfake_detector.errors import TrainingSetupError
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import check_config

    assert TrainConfig.for_arch("mobilenet_v2").ema_momentum == 0.998 and TrainConfig().ema_momentum == 0.0
    for momentum in (1.0, -0.1):
        with pytest.raises(TrainingSetupError, match="weight-average momentum"):
            check_config(TrainConfig(ema_momentum=momentum))

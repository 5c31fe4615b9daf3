"""Architectures, and .keras files that carry (and check) their own metadata."""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from deepfake_detector import model as model_module
from deepfake_detector.errors import ModelFileError
from deepfake_detector.model import METADATA_ENTRY, ModelMetadata, load_model, read_metadata, save_model
from deepfake_detector.networks import build_model
from deepfake_detector.preprocessing import PreprocessingConfig

SIZE = 32


def _metadata(size: int = SIZE, **overrides) -> ModelMetadata:
    fields = dict(
        arch="seed",
        class_names=["real", "fake"],
        preprocessing=PreprocessingConfig(image_size=size).to_dict(),
        threshold=0.37,
        threshold_rule="youden on validation",
        train_config={"epochs": 3, "learning_rate": 1e-4, "arch": "seed"},
        metrics={"val_auc": 0.91, "test_accuracy": 0.88},
    )
    fields.update(overrides)
    return ModelMetadata(**fields)


@pytest.fixture(scope="module")
def seed_model() -> keras.Model:
    return build_model("seed", SIZE)


@pytest.fixture(scope="module")
def saved(seed_model, tmp_path_factory) -> Path:
    return save_model(seed_model, _metadata(), tmp_path_factory.mktemp("saved") / "good.keras")


def _rewrite_metadata(source: Path, target: Path, change) -> Path:
    """Copy a saved model, passing its metadata dict through ``change``."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in archive.namelist():
            data = archive.read(name)
            if name == METADATA_ENTRY:
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta).encode()
            out.writestr(name, data)
    return target


# ----------------------------------------------------------------------------- architectures


def test_seed_cnn_has_the_original_layer_stack(seed_model):
    kinds = [layer.__class__.__name__ for layer in seed_model.layers]
    assert kinds[:14] == ["InputLayer", "Rescaling"] + ["Conv2D", "BatchNormalization", "MaxPooling2D"] * 4
    assert kinds[14:] == ["Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense", "Dense"]
    convs = [layer for layer in seed_model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert all(c.activation is keras.activations.relu for c in convs)
    pools = [layer for layer in seed_model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert all(p.pool_size == (2, 2) for p in pools)
    dense = [layer for layer in seed_model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [512, 256, 128, 1]
    assert all(d.activation is keras.activations.relu for d in dense[:3])
    assert dense[-1].activation is keras.activations.sigmoid
    dropouts = [layer for layer in seed_model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.rate for d in dropouts] == [0.5, 0.5]
    assert tuple(seed_model.inputs[0].shape) == (None, SIZE, SIZE, 3)
    assert tuple(seed_model.outputs[0].shape) == (None, 1)


def test_seed_cnn_output_is_a_probability(seed_model):
    batch = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype("float32")
    scores = np.asarray(seed_model(batch, training=False))
    assert scores.shape == (3, 1)
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.slow
def test_mobilenet_v2_builds_without_weights():
    net = build_model("mobilenet_v2", 64, pretrained=False)
    assert tuple(net.inputs[0].shape) == (None, 64, 64, 3)
    assert tuple(net.outputs[0].shape) == (None, 1)
    assert net.layers[-1].activation is keras.activations.sigmoid
    backbone = net.get_layer("mobilenet_v2")
    assert tuple(backbone.outputs[0].shape) == (None, 2, 2, 1280)
    out = np.asarray(net(np.zeros((1, 64, 64, 3), "float32"), training=False))
    assert out.shape == (1, 1) and 0 <= out[0, 0] <= 1


def test_unknown_architecture():
    with pytest.raises(ValueError, match="resnet"):
        build_model("resnet", SIZE)


# ----------------------------------------------------------------------------- save / load


def test_round_trip_keeps_predictions_and_metadata(seed_model, saved):
    batch = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3)).astype("float32")
    before = np.asarray(seed_model(batch, training=False))
    loaded, meta = load_model(saved)
    after = np.asarray(loaded(batch, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert before.std() > 0  # distinct scores, so matching them means the weights came back

    expected = _metadata()
    assert meta.arch == "seed"
    assert meta.class_names == ["real", "fake"]
    assert meta.threshold == pytest.approx(0.37)
    assert meta.threshold_rule == expected.threshold_rule
    assert meta.preprocessing == PreprocessingConfig(image_size=SIZE).to_dict()
    assert meta.image_size == SIZE
    assert meta.train_config == expected.train_config
    assert meta.metrics == expected.metrics
    assert meta.format == model_module.METADATA_FORMAT
    assert meta.versions["tensorflow"] == __import__("tensorflow").__version__
    assert meta.versions["keras"] == keras.__version__
    created = dt.datetime.fromisoformat(meta.created)
    assert created.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 3600
    assert read_metadata(saved) == meta


def test_saved_file_is_readable_like_any_new_file(saved):
    umask = os.umask(0o022)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_save_refuses_metadata_that_does_not_fit(seed_model, tmp_path):
    with pytest.raises(ModelFileError, match="input"):
        save_model(seed_model, _metadata(size=48), tmp_path / "wrong.keras")
    assert list(tmp_path.iterdir()) == []


def _assert_one_line_with_path(error: ModelFileError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message


def test_read_metadata_missing_file(tmp_path):
    path = tmp_path / "absent.keras"
    with pytest.raises(ModelFileError) as info:
        read_metadata(path)
    _assert_one_line_with_path(info.value, path)


def test_read_metadata_not_a_zip(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("this is not a model\n")
    with pytest.raises(ModelFileError) as info:
        read_metadata(path)
    _assert_one_line_with_path(info.value, path)


def test_read_metadata_plain_keras_save(seed_model, tmp_path):
    path = tmp_path / "plain.keras"
    seed_model.save(path)
    with pytest.raises(ModelFileError, match=METADATA_ENTRY) as info:
        read_metadata(path)
    _assert_one_line_with_path(info.value, path)


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: m.update(class_names=["cat", "dog"]), "class names"),
        (lambda m: m.update(threshold=1.5), "threshold"),
        (lambda m: m.update(threshold=-0.1), "threshold"),
        (lambda m: m.update(format="something-else/9"), "format"),
        (lambda m: m["preprocessing"].pop("image_size"), "image_size"),
        (lambda m: m.update(unexpected_field=1), "unexpected_field"),
    ],
    ids=["cat-dog", "threshold-1.5", "threshold-negative", "format", "no-image-size", "unknown-key"],
)
def test_read_metadata_bad_fields(saved, tmp_path, change, needle):
    path = _rewrite_metadata(saved, tmp_path / "bad.keras", change)
    for reader in (read_metadata, load_model):
        with pytest.raises(ModelFileError, match=needle) as info:
            reader(path)
        _assert_one_line_with_path(info.value, path)


def test_read_metadata_accepts_reversed_class_order(saved, tmp_path):
    path = _rewrite_metadata(saved, tmp_path / "reversed.keras", lambda m: m.update(class_names=["fake", "real"]))
    assert read_metadata(path).class_names == ["fake", "real"]


def test_image_size_not_matching_the_network(saved, tmp_path):
    """read_metadata never loads the network, so this mismatch is caught by load_model."""

    def change(meta):
        meta["preprocessing"]["image_size"] = 64

    path = _rewrite_metadata(saved, tmp_path / "size.keras", change)
    assert read_metadata(path).image_size == 64
    with pytest.raises(ModelFileError, match="input") as info:
        load_model(path)
    _assert_one_line_with_path(info.value, path)


@pytest.mark.slow
def test_unloadable_network_error_is_one_line(saved, tmp_path):
    """Keras's own multi-line errors (weights of another shape) are folded onto one line."""
    other = save_model(build_model("seed", 48), _metadata(size=48), tmp_path / "other.keras")
    path = tmp_path / "mixed.keras"
    with zipfile.ZipFile(saved) as good, zipfile.ZipFile(other) as bad, zipfile.ZipFile(path, "w") as out:
        for name in good.namelist():
            out.writestr(name, bad.read(name) if name.endswith(".weights.h5") else good.read(name))
    with pytest.raises(ModelFileError, match="cannot load the network") as info:
        load_model(path)
    _assert_one_line_with_path(info.value, path)


# ----------------------------------------------------------------------------- atomic save


def _fail_in_keras_save(monkeypatch):
    original = keras.Model.save

    def broken(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 half a model")
        raise RuntimeError("disk full")

    assert original is not broken
    monkeypatch.setattr(keras.Model, "save", broken)


def _fail_appending_metadata(monkeypatch):
    original = zipfile.ZipFile

    def zip_file(file, mode="r", *args, **kwargs):
        if mode == "a":
            raise RuntimeError("disk full")
        return original(file, mode, *args, **kwargs)

    monkeypatch.setattr(model_module.zipfile, "ZipFile", zip_file)


def _fail_renaming(monkeypatch):
    def replace(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("sabotage", [_fail_in_keras_save, _fail_appending_metadata, _fail_renaming])
def test_failed_save_keeps_the_previous_model(seed_model, saved, tmp_path, monkeypatch, sabotage):
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "best.keras"
    target.write_bytes(saved.read_bytes())
    good_bytes = target.read_bytes()
    sabotage(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(seed_model, _metadata(threshold=0.9), target)
    monkeypatch.undo()
    assert target.read_bytes() == good_bytes
    assert sorted(p.name for p in folder.iterdir()) == ["best.keras"]  # no temp files, hidden or not
    assert read_metadata(target).threshold == pytest.approx(0.37)


def test_failed_first_save_leaves_nothing(seed_model, tmp_path, monkeypatch):
    _fail_in_keras_save(monkeypatch)
    with pytest.raises(RuntimeError):
        save_model(seed_model, _metadata(), tmp_path / "new.keras")
    assert list(tmp_path.iterdir()) == []


def test_successful_save_replaces_the_previous_model(seed_model, saved, tmp_path):
    target = tmp_path / "best.keras"
    target.write_bytes(saved.read_bytes())
    save_model(seed_model, _metadata(threshold=0.9), target)
    assert read_metadata(target).threshold == pytest.approx(0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras"]

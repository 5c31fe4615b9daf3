"""``export.py --format adopt``: a model trained by the original tutorial's code becomes one of ours.

The model here is trained as the tutorial trained its own: a Sequential network that
starts with ``Rescaling(1./127)``, fed by ``image_dataset_from_directory`` (classes sorted
by folder name, so its sigmoid is P(real)). Fake images are red, real ones blue: a model
that learns anything learns that, so a fake image labelled real means the class order is
wired backwards somewhere.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TUTORIAL_SIZE = 128


# Each test here needs a network trained with the tutorial's own loader (seconds): all slow.
pytestmark = pytest.mark.slow


def tutorial_style_image(fake: bool, rng: np.random.Generator) -> Image.Image:
    """A small smooth image, not square, far from 128 px: red for fake, blue for real."""
    width, height = (int(v) for v in rng.integers(20, 48, size=2))
    corners = rng.integers(0, 90, size=(3, 3, 3)).astype(np.uint8)
    corners[..., 0 if fake else 2] += 160
    return Image.fromarray(corners).resize((width, height), Image.Resampling.BILINEAR)


def noisy_image(seed: int) -> Image.Image:
    """Pixel noise: nearest neighbour and Lanczos resize it very differently."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (45, 61, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tutorial_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tutorial-data")
    rng = np.random.default_rng(5)
    for split, count in (("Train", 16), ("Validation", 6), ("Test", 3)):
        for folder, fake in (("Real", False), ("Fake", True)):
            (root / split / folder).mkdir(parents=True)
            for i in range(count):
                tutorial_style_image(fake, rng).save(root / split / folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tutorial_model_path(tutorial_data, tmp_path_factory) -> Path:
    """A small network of the tutorial's kind, trained and saved the tutorial's way (no metadata)."""
    import keras

    keras.utils.set_random_seed(3)
    train_data = keras.utils.image_dataset_from_directory(
        tutorial_data / "Train",
        labels="inferred",
        color_mode="rgb",
        seed=42,
        batch_size=8,
        image_size=(TUTORIAL_SIZE, TUTORIAL_SIZE),
    )
    assert train_data.class_names == ["Fake", "Real"]  # so the sigmoid is P(real)
    model = keras.Sequential(
        [
            keras.layers.Input(shape=(TUTORIAL_SIZE, TUTORIAL_SIZE, 3)),
            keras.layers.Rescaling(1.0 / 127, name="rescaling"),
            keras.layers.Conv2D(8, (3, 3), strides=1, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(pool_size=(4, 4), strides=4),
            keras.layers.Conv2D(8, (3, 3), strides=1, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(pool_size=(4, 4), strides=4),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.Precision(), keras.metrics.Recall()],
    )
    model.fit(train_data, epochs=5, verbose=0)
    path = tmp_path_factory.mktemp("tutorial-model") / "deepfake_detector_model.keras"
    model.save(path)
    return path


def run_export(argv: list[str]) -> int:
    import export

    return export.main(export.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def adopted_path(tutorial_model_path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("adopted") / "tutorial.keras"
    assert run_export(["--model", str(tutorial_model_path), "--format", "adopt", "--output", str(output)]) == 0
    return output


def tutorial_p_real(model_path: Path, image_paths: list[Path]) -> np.ndarray:
    """The tutorial's inference.py, step for step: load_img, img_to_array, model.predict."""
    import keras

    model = keras.models.load_model(model_path)
    arrays = [
        keras.utils.img_to_array(keras.utils.load_img(p, target_size=(TUTORIAL_SIZE, TUTORIAL_SIZE)))
        for p in image_paths
    ]
    return np.array([model.predict(np.expand_dims(a, axis=0), verbose=0)[0][0] for a in arrays], np.float64)


def test_adopted_metadata_says_how_the_tutorial_used_the_model(adopted_path, tutorial_model_path):
    from deepfake_detector.model import read_metadata

    metadata = read_metadata(adopted_path)
    assert metadata.arch == "tutorial"
    assert metadata.class_names == ["fake", "real"]
    assert metadata.preprocessing["image_size"] == TUTORIAL_SIZE and metadata.preprocessing["resample"] == "nearest"
    assert metadata.threshold == 0.5 and metadata.threshold_rule == "fixed 0.5 (tutorial)"
    assert not metadata.flip_average and metadata.metrics == {}
    assert metadata.name == "tutorial" and metadata.train_config["adopted_from"] == str(tutorial_model_path)


def test_adopted_model_scores_as_the_tutorial_did_in_both_runtimes(
    adopted_path, tutorial_model_path, tutorial_data, tmp_path
):
    from deepfake_detector.detector import Detector
    from deepfake_detector.preprocessing import load_image

    noisy = [tmp_path / f"noise_{seed}.png" for seed in range(2)]
    for seed, path in enumerate(noisy):
        noisy_image(seed).save(path)
    held_out = sorted((tutorial_data / "Test").glob("*/*.png"))
    paths = held_out + noisy
    p_real = tutorial_p_real(tutorial_model_path, paths)
    for runtime in ("keras", "tflite"):
        detector = Detector.from_path(adopted_path, runtime=runtime)
        predictions = [detector.predict(path) for path in paths]
        # The tutorial's sigmoid is P(real): ours must be its complement, on its nearest-neighbour resize.
        np.testing.assert_allclose([p.fake_probability for p in predictions], 1.0 - p_real, atol=1e-5)
        expected = ["fake" if path.parent.name == "Fake" else "real" for path in held_out]
        assert [p.label for p in predictions[: len(held_out)]] == expected, runtime
    # The comparison tells the resize filters apart: with Lanczos the noisy input is another image.
    nearest = detector.preprocess(noisy[0]).astype(int)
    assert np.abs(nearest - load_image(noisy[0], TUTORIAL_SIZE).astype(int)).mean() > 20
    assert detector.describe()["arch"] == "tutorial"
    assert detector.heatmaps(nearest[None].astype(np.uint8)).shape == (1, TUTORIAL_SIZE, TUTORIAL_SIZE)


def test_loading_the_tutorials_file_names_the_adopt_command(tutorial_model_path):
    from deepfake_detector.detector import Detector
    from deepfake_detector.errors import ModelFileError

    with pytest.raises(ModelFileError) as info:
        Detector.from_path(tutorial_model_path)
    message = str(info.value)
    assert "has no deepfake_detector.json" in message and "\n" not in message
    assert f"python export.py --model {tutorial_model_path} --format adopt --output NEW.keras" in message


def test_adopt_with_data_dir_chooses_the_threshold_on_validation(
    adopted_path, tutorial_model_path, tutorial_data, tmp_path
):
    from deepfake_detector import metrics
    from deepfake_detector.detector import Detector
    from deepfake_detector.model import read_metadata

    output = tmp_path / "chosen.keras"
    argv = [
        "--model",
        str(tutorial_model_path),
        "--format",
        "adopt",
        "--output",
        str(output),
        "--data-dir",
        str(tutorial_data),
    ]
    assert run_export(argv) == 0
    metadata = read_metadata(output)
    assert metadata.threshold_rule == "eer on Validation"

    # The same choice, made from the plain adopted model scoring Validation image by image.
    fixed = Detector.from_path(adopted_path)
    paths = sorted((tutorial_data / "Validation").glob("*/*.png"))
    y_true = np.array([path.parent.name == "Fake" for path in paths], np.int64)
    scores = np.array([fixed.predict(path).fake_probability for path in paths])
    assert metadata.threshold == pytest.approx(metrics.choose_threshold(y_true, scores, "eer"), abs=1e-6)
    validation = metadata.metrics["validation"]
    assert (validation["n_real"], validation["n_fake"]) == (6, 6)
    assert validation["threshold"] == pytest.approx(metadata.threshold)
    assert validation["roc_auc"] == pytest.approx(metrics.compute_metrics(y_true, scores)["roc_auc"])
    assert Detector.from_path(output).threshold == pytest.approx(metadata.threshold)


@pytest.fixture(scope="module")
def wrong_models(tmp_path_factory) -> dict[str, Path]:
    """Keras files adopt must refuse: two softmax classes, a linear score, any input size."""
    import keras

    folder = tmp_path_factory.mktemp("wrong-models")

    def save(name: str, input_shape, *head) -> Path:
        model = keras.Sequential([keras.layers.Input(shape=input_shape), keras.layers.GlobalAveragePooling2D(), *head])
        model.save(folder / name)
        return folder / name

    return {
        "two classes": save("softmax.keras", (128, 128, 3), keras.layers.Dense(2, activation="softmax")),
        "linear": save("linear.keras", (128, 128, 3), keras.layers.Dense(1)),
        "any size": save("any_size.keras", (None, None, 3), keras.layers.Dense(1, activation="sigmoid")),
    }


def test_adopt_refuses_what_it_cannot_adopt(adopted_path, tutorial_model_path, wrong_models, tmp_path, capsys):
    notes = tmp_path / "notes.keras"
    notes.write_text("this is not a model\n")
    no_keras = tmp_path / "other.keras"
    with zipfile.ZipFile(no_keras, "w") as archive:
        archive.writestr("readme.txt", "a zip, but not a Keras model")
    output = tmp_path / "new.keras"
    cases = [
        (adopted_path, output, "already has deepfake_detector.json"),
        (notes, output, "not a .keras model file"),
        (no_keras, output, "cannot load the network"),
        (tmp_path / "missing.keras", output, "no such model file"),
        (wrong_models["two classes"], output, "adopt takes one sigmoid score"),
        (wrong_models["linear"], output, "adopt takes one sigmoid score"),
        (wrong_models["any size"], output, "adopt takes a square RGB image of fixed size"),
        (tutorial_model_path, tmp_path / "new.h5", "does not end in .keras"),
        (tutorial_model_path, tutorial_model_path, "is the model being adopted"),
        (tutorial_model_path, output, "holds Real/ or Fake/ itself"),  # --data-dir below
    ]
    for model, out, message in cases:
        argv = ["--model", str(model), "--format", "adopt", "--output", str(out)]
        if message.startswith("holds"):
            argv += ["--data-dir", str(tmp_path / "photos")]
            (tmp_path / "photos" / "Real").mkdir(parents=True)
        assert run_export(argv) == 2, message
        error = capsys.readouterr().err.strip()
        assert error.startswith("export.py: ") and message in error and "\n" not in error, error
    assert not output.exists() and not (tmp_path / "new.h5").exists()
    # Flip averaging chooses its threshold from the training cache, resized with Lanczos.
    argv = [
        "--model",
        str(adopted_path),
        "--format",
        "flip-averaged",
        "--data-dir",
        str(tmp_path),
        "--output",
        str(output),
    ]
    assert run_export(argv) == 2
    assert "resizes with 'nearest'" in capsys.readouterr().err and not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.keras", "other.keras", "photos"]  # no temp files left


def test_nearest_resize_is_keras_load_imgs_default(tmp_path):
    import keras

    from deepfake_detector.preprocessing import PreprocessingConfig, load_image

    path = tmp_path / "noise.png"
    noisy_image(1).save(path)
    expected = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(TUTORIAL_SIZE, TUTORIAL_SIZE)))
    assert np.array_equal(load_image(path, TUTORIAL_SIZE, "nearest").astype(np.float32), expected)
    with pytest.raises(ValueError, match="unknown resample 'bicubic'"):
        load_image(path, TUTORIAL_SIZE, "bicubic")
    with pytest.raises(ValueError, match="unknown resample"):
        PreprocessingConfig(resample="bicubic")


def test_a_model_naming_an_unknown_resample_is_refused_on_load(adopted_path, tmp_path):
    from deepfake_detector.errors import ModelFileError
    from deepfake_detector.model import METADATA_ENTRY, read_metadata

    changed = tmp_path / "bicubic.keras"
    with zipfile.ZipFile(adopted_path) as source, zipfile.ZipFile(changed, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == METADATA_ENTRY:
                metadata = json.loads(content)
                metadata["preprocessing"]["resample"] = "bicubic"
                content = json.dumps(metadata).encode()
            target.writestr(item, content)
    with pytest.raises(ModelFileError, match="bad metadata: unknown resample 'bicubic'"):
        read_metadata(changed)


def test_the_batch_cli_and_evaluation_resize_as_the_model_says(adopted_path, tmp_path):
    """inference.py predict, evaluate.py and the web page's face path score as Detector.predict does."""
    from deepfake_detector import batch, evaluation, faces
    from deepfake_detector.detector import Detector
    from deepfake_detector.preprocessing import open_image

    for folder, seed in (("Real", 0), ("Fake", 1)):
        (tmp_path / folder).mkdir()
        noisy_image(seed).save(tmp_path / folder / "noise.png")
    detector = Detector.from_path(adopted_path)
    paths = [str(tmp_path / "Real" / "noise.png"), str(tmp_path / "Fake" / "noise.png")]
    expected = [detector.predict(path).fake_probability for path in paths]
    rows = list(batch.score_files(detector, paths))
    np.testing.assert_allclose([row.fake_probability for row in rows], expected, atol=1e-5)
    scored = evaluation.score_folder(detector, tmp_path)
    np.testing.assert_allclose(scored.fake_probability["clean"], expected, atol=1e-5)

    class NoFaces:
        def find(self, image):
            return []

    found = faces.model_inputs(open_image(paths[0]), NoFaces(), detector.image_size, resample=detector.resample)
    assert np.array_equal(found.inputs[0], detector.preprocess(paths[0]))

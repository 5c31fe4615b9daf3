"""The original's worst bug: the page said "Fake" for P(real) > 0.5. Fake must be positive."""

import io

import numpy as np
import pytest

from deepfake_detector import labels
from deepfake_detector.detector import Detector
from deepfake_detector.model import ModelMetadata, load_model
from tests.helpers import image_bytes, synthetic_image


def test_fake_index_follows_saved_order():
    assert labels.fake_index(["real", "fake"]) == 1
    assert labels.fake_index(["Fake", "Real"]) == 0
    with pytest.raises(ValueError):
        labels.fake_index(["cat", "dog"])


def test_the_model_applies_its_saved_class_order():
    """DeepfakeDetectorModel.fake_probability is the one place the class order is applied."""
    import keras

    from deepfake_detector.model import DeepfakeDetectorModel

    inputs = keras.Input((4, 4, 3))
    constant = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(np.log(9.0))
    )  # sigmoid = 0.9
    network = keras.Model(inputs, constant(keras.layers.Flatten()(inputs)))
    images = np.zeros((2, 4, 4, 3), np.float32)
    ours = DeepfakeDetectorModel(network, ModelMetadata(arch="test", preprocessing={"image_size": 4}))
    tutorial = DeepfakeDetectorModel(
        network, ModelMetadata(arch="test", class_names=["fake", "real"], preprocessing={"image_size": 4})
    )
    np.testing.assert_allclose(ours.fake_probability(images), 0.9, rtol=1e-5)
    np.testing.assert_allclose(tutorial.fake_probability(images), 0.1, rtol=1e-4)
    assert ours.output_is_fake and not tutorial.output_is_fake
    with pytest.raises(ValueError):
        tutorial.compile_model()  # our labels would train it backwards
    with pytest.raises(ValueError):
        DeepfakeDetectorModel(network, ModelMetadata(arch="test", class_names=["cat", "dog"]))


def test_trained_model_calls_fakes_fake_python_api(detector):
    rng = np.random.default_rng(99)
    fakes = [detector.predict(image_bytes(synthetic_image(True, rng))) for _ in range(10)]
    reals = [detector.predict(image_bytes(synthetic_image(False, rng))) for _ in range(10)]
    assert all(p.label == "fake" and p.fake_probability > 0.5 for p in fakes), fakes
    assert all(p.label == "real" and p.fake_probability < 0.5 for p in reals), reals


def test_trained_model_calls_fakes_fake_http_api(client, fake_png, real_png):
    fake = client.post("/api/predict", data={"file": (io.BytesIO(fake_png), "a.png")}).get_json()
    real = client.post("/api/predict", data={"file": (io.BytesIO(real_png), "b.png")}).get_json()
    assert fake["label"] == "fake" and fake["fake_probability"] > 0.5
    assert real["label"] == "real" and real["fake_probability"] < 0.5


@pytest.mark.parametrize(
    "runtime", ["keras", pytest.param("tflite", marks=pytest.mark.slow)]
)  # tflite: two conversions
def test_saved_class_order_is_read_back(trained_model_path, fake_png, runtime):
    """A model whose class 1 is 'real' must have its output flipped, from the metadata alone."""
    model, metadata = load_model(trained_model_path)
    flipped = ModelMetadata(**{**metadata.__dict__, "class_names": ["fake", "real"]})
    normal = Detector(model, metadata, runtime=runtime).predict(fake_png).fake_probability
    inverted = Detector(model, flipped, runtime=runtime).predict(fake_png).fake_probability
    assert normal > 0.5
    assert inverted == pytest.approx(1.0 - normal, abs=1e-5)

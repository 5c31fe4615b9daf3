"""The SavedModel and TFLite exports score images as the Keras model does (Detector.predict)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import IMAGE_SIZE, image_bytes, synthetic_image


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    """Two fakes and two reals, already at the model size: the export must be exact for them."""
    rng = np.random.default_rng(11)
    return [image_bytes(synthetic_image(fake, rng, IMAGE_SIZE)) for fake in (True, False, True, False)]


@pytest.fixture(scope="module")
def keras_probabilities(detector, pngs) -> np.ndarray:
    probabilities = np.array([detector.predict(png).fake_probability for png in pngs])
    # Fakes score above reals: the comparisons below are not between near-constant outputs.
    assert min(probabilities[[0, 2]]) > max(probabilities[[1, 3]]) + 0.1
    return probabilities


@pytest.mark.slow
def test_savedmodel_scores_encoded_images_like_the_keras_model(trained_model_path, pngs, keras_probabilities, tmp_path):
    import tensorflow as tf

    from deepfake_detector.export import export_savedmodel
    from deepfake_detector.model import METADATA_ENTRY, read_metadata

    output = export_savedmodel(trained_model_path, tmp_path / "serving" / "deepfake" / "1")
    serve = tf.saved_model.load(str(output)).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["image_bytes"]
    assert serve.structured_input_signature[1]["image_bytes"].dtype == tf.string

    result = serve(image_bytes=tf.constant(pngs))
    assert list(result) == ["fake_probability"]
    fake_probability = result["fake_probability"].numpy()
    assert fake_probability.dtype == np.float32 and fake_probability.shape == (len(pngs),)
    np.testing.assert_allclose(fake_probability, keras_probabilities, atol=1e-4)

    # The metadata travels with the export and is the model's own.
    exported = json.loads((output / METADATA_ENTRY).read_text())
    assert exported == json.loads(read_metadata(trained_model_path).to_json())
    assert not [p.name for p in output.parent.iterdir() if p.name != "1"]  # no staging folder left

    # Other sizes and formats in one batch: resized in TF ops, close to PIL's Lanczos.
    rng = np.random.default_rng(12)
    big = synthetic_image(True, rng, 96)
    mixed = [image_bytes(big, "JPEG", quality=95), image_bytes(big.resize((70, 50)), "PNG")]
    assert serve(image_bytes=tf.constant(mixed))["fake_probability"].shape == (2,)


def test_tf_resize_stays_close_to_pil_lanczos():
    """What "within resampling differences" means for a downscaled image, in pixel levels."""
    from deepfake_detector.export import decode_and_resize
    from deepfake_detector.preprocessing import load_image

    encoded = image_bytes(synthetic_image(True, np.random.default_rng(3), 120))
    ours = decode_and_resize(encoded, IMAGE_SIZE).numpy().astype(int)
    pil = load_image(encoded, IMAGE_SIZE).astype(int)
    difference = np.abs(ours - pil)
    assert ours.shape == pil.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    # Measured: mean 0.1 level, 99% of values within 1, up to 9 where Lanczos rings at the
    # fake square's hard edges (PIL rounds between its two passes, TF does not).
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 1 and difference.max() <= 16


@pytest.mark.parametrize("size", [(45, 61), (300, 200), (128, 129)], ids=["up", "down", "one-pixel-off"])
def test_tf_nearest_resize_picks_the_same_pixels_as_pil(size):
    """An adopted tutorial model's "nearest" resize is exact in the SavedModel too."""
    from deepfake_detector.export import decode_and_resize
    from deepfake_detector.preprocessing import load_image

    noise = np.random.default_rng(4).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    encoded = image_bytes(Image.fromarray(noise))
    ours = decode_and_resize(encoded, 128, "nearest").numpy()
    assert ours.dtype == np.uint8 and np.array_equal(ours, load_image(encoded, 128, "nearest"))


@pytest.mark.slow
def test_tflite_scores_preprocessed_images_like_the_keras_model(
    trained_model_path, pngs, keras_probabilities, tmp_path
):
    from ai_edge_litert.interpreter import Interpreter

    from deepfake_detector.export import TFLITE_FILE, export_tflite
    from deepfake_detector.model import METADATA_ENTRY
    from deepfake_detector.preprocessing import load_image

    output = export_tflite(trained_model_path, tmp_path / "tflite")
    assert sorted(p.name for p in output.iterdir()) == sorted([METADATA_ENTRY, TFLITE_FILE])
    runner = Interpreter(model_path=str(output / TFLITE_FILE)).get_signature_runner()
    fake_probability = np.array(
        [runner(image=load_image(png, IMAGE_SIZE)[None])["fake_probability"][0] for png in pngs]
    )
    np.testing.assert_allclose(fake_probability, keras_probabilities, atol=1e-4)


@pytest.mark.slow
def test_tflite_runtime_scores_like_the_keras_runtime(trained_model_path, pngs, keras_probabilities):
    """The server's runtime: converted at load time, one image per call, safe across threads."""
    from concurrent.futures import ThreadPoolExecutor

    from deepfake_detector.detector import Detector
    from deepfake_detector.preprocessing import load_image

    lite = Detector.from_path(trained_model_path, runtime="tflite", threads=2)
    assert lite.describe()["runtime"] == "tflite"
    single = np.array([lite.predict(png).fake_probability for png in pngs])
    np.testing.assert_allclose(single, keras_probabilities, atol=1e-4)
    batch = np.stack([load_image(png, IMAGE_SIZE) for png in pngs])
    np.testing.assert_allclose(lite.scores(batch), keras_probabilities, atol=1e-4)
    with ThreadPoolExecutor(4) as pool:  # four request threads sharing one interpreter
        concurrent = list(pool.map(lambda i: lite.predict(pngs[i % len(pngs)]).fake_probability, range(40)))
    np.testing.assert_allclose(concurrent, np.resize(keras_probabilities, 40), atol=1e-4)
    with pytest.raises(ValueError, match="unknown runtime"):
        Detector.from_path(trained_model_path, runtime="onnx")


@pytest.mark.slow
def test_tflite_conversion_is_cached_per_model_file(
    trained_model_path, pngs, keras_probabilities, tmp_path, monkeypatch, caplog
):
    """The second start reads the cached flatbuffer; a corrupt cache file is converted again."""
    import logging
    import shutil

    from deepfake_detector import tflite
    from deepfake_detector.detector import Detector
    from deepfake_detector.tflite import cache_dir

    monkeypatch.setenv("DEEPFAKE_DETECTOR_CACHE", str(tmp_path / "cache"))
    model_path = shutil.copy(trained_model_path, tmp_path / "model.keras")
    Detector.from_path(model_path, runtime="tflite")
    cached = list(cache_dir().glob("*.tflite"))
    assert len(cached) == 1 and cache_dir() == tmp_path / "cache"

    def no_conversion(*args):
        raise AssertionError("converted again although the cache holds this model")

    with monkeypatch.context() as patch:
        patch.setattr(tflite, "tflite_flatbuffer", no_conversion)
        with caplog.at_level(logging.INFO, logger="deepfake_detector.tflite"):
            again = Detector.from_path(model_path, runtime="tflite")
    assert "read from the cache" in caplog.text
    np.testing.assert_allclose([again.predict(png).fake_probability for png in pngs], keras_probabilities, atol=1e-4)

    cached[0].write_bytes(b"not a flatbuffer")
    repaired = Detector.from_path(model_path, runtime="tflite")
    np.testing.assert_allclose([repaired.predict(png).fake_probability for png in pngs], keras_probabilities, atol=1e-4)
    assert cached[0].read_bytes()[4:8] == b"TFL3"  # rewritten with a real flatbuffer


def test_export_cli_refuses_a_used_folder_and_a_missing_model(trained_model_path, tmp_path, capsys):
    import export

    used = tmp_path / "used"
    used.mkdir()
    (used / "saved_model.pb").write_bytes(b"an earlier version")
    for model, output, message in (
        (trained_model_path, used, "exists and is not empty"),
        (tmp_path / "missing.keras", tmp_path / "new", "no such model file"),
    ):
        args = export.get_args_parser().parse_args(["--model", str(model), "--output", str(output)])
        assert export.main(args) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("export.py: ") and message in error and "\n" not in error
    assert (used / "saved_model.pb").read_bytes() == b"an earlier version"
    assert not (tmp_path / "new").exists()

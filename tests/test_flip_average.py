"""Test-time flip averaging: in the graph, saved and described, on both runtimes, explained."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import IMAGE_SIZE, image_bytes, synthetic_image


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Two fakes and two reals, preprocessed, none of them mirror-symmetric."""
    from deepfake_detector.preprocessing import load_image

    rng = np.random.default_rng(21)
    images = [load_image(image_bytes(synthetic_image(fake, rng, IMAGE_SIZE)), IMAGE_SIZE) for fake in (True, False) * 2]
    return np.stack(images)


@pytest.fixture(scope="module")
def averaged_path(trained_model_path, tiny_dataset, tmp_path_factory):
    """The tiny trained model made flip-averaged through export.py, as a user would."""
    import export

    output = tmp_path_factory.mktemp("flip") / "tiny.flip.keras"
    args = export.get_args_parser().parse_args(
        [
            "--model",
            str(trained_model_path),
            "--format",
            "flip-averaged",
            "--data-dir",
            str(tiny_dataset),
            "--output",
            str(output),
        ]
    )
    assert export.main(args) == 0
    return output


def test_the_graph_averages_each_image_with_its_mirror(trained_model_path, faces):
    from deepfake_detector.model import load_model
    from deepfake_detector.networks import flip_average_member, flip_averaged

    model, _ = load_model(trained_model_path)
    averaged = flip_averaged(model)
    x = faces.astype("float32")
    plain, mirrored = model(x).numpy(), model(x[:, :, ::-1]).numpy()
    assert np.abs(plain - mirrored).max() > 1e-4  # the mirror is a different input to the member
    np.testing.assert_allclose(averaged(x).numpy(), (plain + mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(averaged(x[:, :, ::-1]).numpy(), averaged(x).numpy(), atol=1e-6)
    assert flip_average_member(averaged) is model and flip_average_member(model) is None
    with pytest.raises(ValueError, match="already flip-averaged"):
        flip_averaged(averaged)


def test_one_pass_runs_the_member_once_on_the_images_and_their_mirrors(trained_model_path, faces):
    """What the TFLite conversion runs: one pass over 2N, the scores of the saved two-pass form."""
    from deepfake_detector.model import load_model
    from deepfake_detector.networks import MirrorMean, WithMirror, flip_average_member, flip_averaged, one_pass

    model, _ = load_model(trained_model_path)
    averaged = flip_averaged(model)
    fast = one_pass(averaged)
    calls = []
    model_call = model.call
    model.call = lambda images, *args, **kwargs: calls.append(images.shape[0]) or model_call(images, *args, **kwargs)
    try:
        x = faces.astype("float32")
        got = fast(x).numpy()
        assert calls == [2 * len(faces)]
        calls.clear()
        expected = averaged(x).numpy()
        assert calls == [len(faces)] * 2  # the saved form: two passes
    finally:
        del model.call
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [type(layer) for layer in fast.layers[1:]] == [WithMirror, type(model), MirrorMean]
    assert flip_average_member(fast) is None and one_pass(model) is model


@pytest.mark.slow
def test_the_tflite_conversion_runs_one_pass(averaged_path, faces):
    """The converted graph holds the face and its mirror as one batch of two, with the Keras scores."""
    from ai_edge_litert.interpreter import Interpreter

    from deepfake_detector.detector import Detector
    from deepfake_detector.model import load_model
    from deepfake_detector.tflite import LiteModel, tflite_flatbuffer

    model, metadata = load_model(averaged_path)
    flatbuffer = tflite_flatbuffer(model, metadata)
    interpreter = Interpreter(model_content=flatbuffer)
    shapes = [tuple(detail["shape"]) for detail in interpreter.get_tensor_details()]
    size = metadata.image_size
    assert (2, size, size, 3) in shapes and (1, size, size, 3) in shapes
    expected = Detector(model, metadata, runtime="keras", warm_up=False).scores(faces)
    np.testing.assert_allclose(LiteModel(flatbuffer)(faces), expected, atol=1e-4)


@pytest.mark.slow
def test_export_cli_saves_it_with_a_threshold_chosen_again_on_validation(
    averaged_path, trained_model_path, tiny_dataset, faces
):
    from deepfake_detector import metrics
    from deepfake_detector.model import load_model, read_metadata
    from deepfake_detector.networks import flip_average_member, flip_averaged
    from deepfake_detector.thresholds import predict_scores

    model, metadata = load_model(averaged_path)
    before = read_metadata(trained_model_path)
    assert metadata.flip_average and not before.flip_average
    assert flip_average_member(model) is not None
    # the member's trained weights came back from the file
    expected = flip_averaged(load_model(trained_model_path)[0])(faces.astype("float32")).numpy()
    np.testing.assert_allclose(model(faces.astype("float32")).numpy(), expected, atol=1e-6)
    assert metadata.train_config["flip_average"] and metadata.threshold_rule == before.threshold_rule
    # Decoded here without the cache export.py used: the same images either way.
    validation, test_split = (_decoded(tiny_dataset / split) for split in ("Validation", "Test"))
    val_scores = predict_scores(model, validation)
    assert metadata.threshold == pytest.approx(metrics.choose_threshold(validation.labels, val_scores, "eer"))
    test = metrics.compute_metrics(test_split.labels, predict_scores(model, test_split), metadata.threshold)
    assert metadata.metrics["test"]["roc_auc"] == pytest.approx(test["roc_auc"])
    assert metadata.metrics["test"]["accuracy"] == pytest.approx(test["accuracy"])


def _decoded(folder):
    from deepfake_detector.cache import ArraySource
    from deepfake_detector.decoding import decode_images
    from deepfake_detector.labels import labelled_files

    paths, targets = labelled_files(folder)
    images, kept, failures = decode_images(paths, IMAGE_SIZE)
    assert not failures
    return ArraySource(images, targets)


@pytest.mark.slow
def test_both_runtimes_score_it_alike_and_mirror_images_alike(averaged_path, faces):
    from deepfake_detector.detector import Detector

    keras_runtime = Detector.from_path(averaged_path, runtime="keras")
    lite = Detector.from_path(averaged_path, runtime="tflite")
    assert keras_runtime.describe()["flip_average"] and lite.describe()["flip_average"]
    scores = keras_runtime.scores(faces)
    assert min(scores[[0, 2]]) > max(scores[[1, 3]])  # fakes above reals, as before
    np.testing.assert_allclose(lite.scores(faces), scores, atol=1e-4)
    np.testing.assert_allclose(lite.scores(faces[:, :, ::-1].copy()), scores, atol=1e-4)


@pytest.mark.slow
def test_heatmaps_explain_the_member_and_mirror_with_the_image(averaged_path, faces):
    from deepfake_detector.explain import Explainer
    from deepfake_detector.model import DeepfakeDetectorModel

    detector_model = DeepfakeDetectorModel.load(averaged_path)
    explainer = Explainer(detector_model)
    assert explainer.method == "grad-cam" and explainer.mirrored
    maps = explainer.heatmaps(faces)
    assert maps.shape == (4, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(maps).all()
    np.testing.assert_allclose(explainer.heatmaps(faces[:, :, ::-1].copy()), maps[:, :, ::-1], atol=1e-4)


@pytest.mark.slow
def test_refusals(averaged_path, trained_model_path, tiny_dataset, tmp_path, capsys):
    import export
    from deepfake_detector.errors import ModelFileError
    from deepfake_detector.model import load_model, save_model

    for extra, message in (
        ([], "needs --data-dir"),
        (["--data-dir", str(tiny_dataset), "--model", str(averaged_path)], "already flip-averaged"),
        (["--data-dir", str(tmp_path / "nothing")], "nothing"),
    ):
        argv = ["--model", str(trained_model_path), "--format", "flip-averaged", "--output", str(tmp_path / "x.keras")]
        assert export.main(export.get_args_parser().parse_args(argv + extra)) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("export.py: ") and message in error and "\n" not in error
    assert not (tmp_path / "x.keras").exists()

    model, metadata = load_model(averaged_path)
    metadata.flip_average = False  # a file whose description does not fit its network
    with pytest.raises(ModelFileError, match="flip_average=False but the network is flip-averaged"):
        save_model(model, metadata, tmp_path / "liar.keras")


@pytest.mark.slow
def test_the_mobilenet_recipe_saves_flip_averaged_models(tiny_dataset, tmp_path):
    from deepfake_detector.model import load_model
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import train

    assert TrainConfig.for_arch("mobilenet_v2").flip_average
    assert not TrainConfig.for_arch("seed").flip_average
    config = TrainConfig(
        arch="seed",
        data_dir=str(tiny_dataset),
        output=str(tmp_path / "m.keras"),
        image_size=32,
        epochs=1,
        batch_size=16,
        early_stopping_patience=0,
        flip_average=True,
        verbose=0,
    )
    path, metrics = train(config)
    model, metadata = load_model(path)
    assert metadata.flip_average and metadata.train_config["flip_average"]
    assert set(metrics) == {"validation", "test"}

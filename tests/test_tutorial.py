"""The original tutorial's path, through its own names only.

Its ``train.py`` main block runs as written (``../shared/docs/original-tutorial.txt``), but for
the dataset URL, a tiny archive of the Kaggle layout served from 127.0.0.1, and one epoch;
then its ``inference.py`` main block's ``InferenceModel`` serves what it saved.
"""

from __future__ import annotations

import functools
import http.server
import math
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_dataset


@pytest.fixture()
def served_archive(tmp_path):
    """A zip holding ``Dataset/Train|Validation|Test/Real|Fake``, as Kaggle's does, on a local web server."""
    source = make_dataset(tmp_path / "source" / "Dataset", {"Train": 24, "Validation": 8, "Test": 8}, seed=3)
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "archive.zip", "w") as archive:
        for path in sorted(source.rglob("*.png")):
            archive.write(path, path.relative_to(source.parent).as_posix())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/archive.zip", source
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_the_tutorials_main_blocks_train_and_serve(served_archive, tmp_path, monkeypatch):
    url, source = served_archive
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    from train import TrainModel

    # ---- the tutorial's train.py main block (its URL and 50 epochs replaced)
    dataset_url = url
    dataset_download_dir = "./data"
    dataset_file = "dataset.zip"
    dataset_dir = "./data/Dataset"
    train_dir = "Train"
    test_dir = "Test"
    val_dir = "Validation"
    trainer = TrainModel(
        dataset_url=dataset_url,
        dataset_download_dir=dataset_download_dir,
        dataset_file=dataset_file,
        dataset_dir=dataset_dir,
        train_dir=train_dir,
        test_dir=test_dir,
        val_dir=val_dir,
    )
    history, evaluation_metrics = trainer.run_training(learning_rate=0.0001, epochs=1)
    # ----

    assert (work / "data" / "dataset.zip").is_file()  # downloaded where the tutorial put it
    assert len(history.history["loss"]) == 1
    loss, accuracy, precision, recall = evaluation_metrics
    assert math.isfinite(loss) and loss > 0
    assert all(0.0 <= value <= 1.0 for value in (accuracy, precision, recall))
    assert (work / "data" / "Dataset" / "Train" / "Real").is_dir()  # where the tutorial said it would be
    assert not (work / "data" / "extracted").exists()
    assert (work / "deepfake_detector_model.keras").is_file()
    assert (work / "deepfake_detector_model_best.keras").is_file()

    # ---- the tutorial's inference.py main block, without run()
    from inference import InferenceModel

    model_path = "deepfake_detector_model.keras"
    inference_model = InferenceModel(model_path)
    # ----
    assert inference_model.model.metadata.class_names == ["real", "fake"]
    assert inference_model.model.image_size == 128
    fake_probability, percentage = inference_model.predict_image(source / "Test" / "Fake" / "fake_0.png")
    assert 0.0 <= fake_probability <= 1.0 and percentage == pytest.approx(100 * fake_probability)
    # The tutorial's own call, self.model.predict(img_array), on images at the model's size: P(fake).
    from deepfake_detector.preprocessing import load_image

    batch = np.stack(
        [load_image(source / "Test" / folder / f"{folder.lower()}_0.png", 128) for folder in ("Real", "Fake")]
    )
    predicted = inference_model.model.predict(batch)
    assert predicted.shape == (2, 1)
    np.testing.assert_allclose(predicted[:, 0], inference_model.detector.scores(batch), atol=1e-4)
    page = inference_model.app.test_client().get("/")
    assert page.status_code == 200
    health = inference_model.app.test_client().get("/healthz").get_json()
    assert health["model"] == "deepfake_detector_model.keras"
    assert "given" in health["origin"]

    # The best epoch so far is a model inference.py loads too (threshold 0.5 until one is chosen).
    best = InferenceModel("deepfake_detector_model_best.keras", runtime="keras")
    assert best.model.threshold == 0.5 and best.model.metadata.flip_average is False


def test_inference_serves_the_model_train_py_just_wrote(trained_model_path, tmp_path, monkeypatch):
    """As in the tutorial: with no --model, ``deepfake_detector_model.keras`` in the working
    folder is served (and said so); without one, the shipped model."""
    from deepfake_detector.cli import default_model
    from deepfake_detector.detector import DEFAULT_MODEL_PATH

    monkeypatch.chdir(tmp_path)
    path, origin = default_model("inference.py")
    assert path == DEFAULT_MODEL_PATH and origin.startswith("shipped")
    (tmp_path / "deepfake_detector_model.keras").write_bytes(Path(trained_model_path).read_bytes())
    path, origin = default_model("inference.py")
    assert path.name == "deepfake_detector_model.keras" and origin.startswith("trained here")
    # One rule: evaluate.py and export.py measure and export the shipped model, unless told otherwise.
    for prog in ("evaluate.py", "export.py"):
        assert default_model(prog) == (DEFAULT_MODEL_PATH, "shipped with the repository")
    assert default_model("evaluate.py", "x.keras") == (Path("x.keras"), "given by --model")
    # Reports record the shipped model by its place in the repository, not this machine's path.
    from deepfake_detector.cli import report_path

    assert report_path(DEFAULT_MODEL_PATH) == "models/deepfake_detector.keras"
    assert report_path(tmp_path / "m.keras") == str(tmp_path / "m.keras")

    from inference import InferenceModel

    served = InferenceModel(runtime="keras")
    assert served.model_path.name == "deepfake_detector_model.keras"
    assert served.app.test_client().get("/healthz").get_json()["origin"].startswith("trained here")
    assert "trained here" in served.app.test_client().get("/").get_data(as_text=True)


@pytest.mark.slow
def test_python_train_py_writes_the_tutorials_files_and_prints_its_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    """``python train.py``: the model and its best epoch in the working folder (never over the
    shipped model), the full line, then the tutorial's ``evaluation metrics: [...]``."""
    import train
    from deepfake_detector.detector import DEFAULT_MODEL_PATH

    shipped_before = DEFAULT_MODEL_PATH.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    args = train.get_args_parser().parse_args(
        ["--data-dir", str(tiny_dataset), "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--verbose", "0"]
    )
    assert train.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("saved deepfake_detector_model.keras | test: loss")
    assert out[-1].startswith("evaluation metrics: [") and len(out[-1].split(",")) == 4
    assert (tmp_path / "deepfake_detector_model.keras").is_file()
    assert (tmp_path / "deepfake_detector_model_best.keras").is_file()
    assert DEFAULT_MODEL_PATH.stat().st_mtime_ns == shipped_before


@pytest.mark.slow
def test_evaluate_py_extracts_a_dataset_archive_first(served_archive, tmp_path, trained_model_path, capsys):
    """The one command README gives for measuring a model on the Kaggle zip."""
    import evaluate

    url, source = served_archive
    archive = tmp_path / "served" / "archive.zip"
    args = evaluate.get_args_parser().parse_args(
        ["--model", str(trained_model_path), "--archive", str(archive), "--data-dir", str(tmp_path / "kaggle")]
    )
    assert evaluate.main(args) == 0
    assert (tmp_path / "kaggle" / "extracted" / "Dataset" / "Test" / "Fake").is_dir()
    assert "on " + str(tmp_path / "kaggle" / "extracted" / "Dataset" / "Test") in capsys.readouterr().out

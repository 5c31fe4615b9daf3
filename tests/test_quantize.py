"""Int8 serving: the quantized copy is checked on every Test split, kept only within the rule, served when kept."""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from tests.helpers import IMAGE_SIZE, image_bytes, synthetic_image


def export_int8(model_path, output, *data_dirs) -> int:
    import export

    argv = ["--model", str(model_path), "--format", "int8", "--output", str(output)]
    for data_dir in data_dirs:
        argv += ["--data-dir", str(data_dir)]
    return export.main(export.get_args_parser().parse_args(argv))


@pytest.mark.slow
def test_an_int8_copy_within_the_rule_is_stored_and_served(trained_model_path, tiny_dataset, tmp_path, caplog):
    from deepfake_detector.detector import Detector
    from deepfake_detector.model import read_metadata
    from deepfake_detector.quantize import MAX_AUC_DROP
    from deepfake_detector.tflite import INT8_ENTRY

    output = tmp_path / "tiny.int8.keras"
    assert export_int8(trained_model_path, output, tiny_dataset) == 0
    figures = read_metadata(output).int8
    (source,) = figures["sources"]
    measured = figures["sources"][source]
    assert measured["n"] == 32 and measured["float"] == pytest.approx(1.0) and measured["int8"] > 0.9
    assert figures["served"] == (figures["max_drop"] <= MAX_AUC_DROP) and figures["served"]
    with zipfile.ZipFile(output) as archive:
        flatbuffer = archive.read(INT8_ENTRY)
    assert flatbuffer[4:8] == b"TFL3" and len(flatbuffer) == figures["flatbuffer_bytes"]

    float_detector = Detector.from_path(trained_model_path, runtime="tflite")
    with caplog.at_level(logging.INFO, logger="deepfake_detector.tflite"):
        int8_detector = Detector.from_path(output, runtime="tflite")
    assert "the int8 copy in the model file" in caplog.text
    described = int8_detector.describe()
    assert described["precision"] == "int8" and described["int8"] == json.loads(json.dumps(figures))
    assert float_detector.describe()["precision"] == "float32" and float_detector.describe()["int8"] is None
    rng = np.random.default_rng(5)
    pngs = [image_bytes(synthetic_image(fake, rng, IMAGE_SIZE)) for fake in (True, False, True, False)]
    float_scores = np.array([float_detector.predict(png).fake_probability for png in pngs])
    int8_scores = np.array([int8_detector.predict(png).fake_probability for png in pngs])
    assert not np.array_equal(float_scores, int8_scores)  # really another network
    np.testing.assert_allclose(int8_scores, float_scores, atol=0.1)
    assert [s >= int8_detector.threshold for s in int8_scores] == [True, False, True, False]


@pytest.mark.slow
def test_an_int8_copy_outside_the_rule_is_not_stored_and_the_log_says_why(
    trained_model_path, tiny_dataset, tmp_path, monkeypatch, caplog
):
    from deepfake_detector import quantize
    from deepfake_detector.detector import Detector
    from deepfake_detector.model import read_metadata
    from deepfake_detector.tflite import INT8_ENTRY

    monkeypatch.setattr(quantize, "MAX_AUC_DROP", -1.0)  # no copy can pass: it would have to gain AUC
    output = tmp_path / "tiny.float.keras"
    assert export_int8(trained_model_path, output, tiny_dataset) == 0
    assert read_metadata(output).int8["served"] is False
    with zipfile.ZipFile(output) as archive:
        assert INT8_ENTRY not in archive.namelist()
    with caplog.at_level(logging.INFO, logger="deepfake_detector.tflite"):
        detector = Detector.from_path(output, runtime="tflite")
    assert detector.describe()["precision"] == "float32"
    assert "the int8 copy was not kept (largest Test ROC AUC drop" in caplog.text


def test_int8_refuses_without_data_and_over_its_own_file(trained_model_path, tmp_path, capsys):
    for output, data_dirs, message in (
        (tmp_path / "a.keras", [], "int8 needs --data-dir"),
        (tmp_path / "a", [tmp_path], "int8 writes a new .keras file"),
        (trained_model_path, [tmp_path], "int8 writes a new .keras file"),
    ):
        assert export_int8(trained_model_path, output, *data_dirs) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("export.py: ") and message in error and "\n" not in error


def test_flip_averaged_and_adopt_take_one_data_dir(trained_model_path, tmp_path, capsys):
    import export

    for fmt in ("flip-averaged", "adopt"):
        argv = ["--model", str(trained_model_path), "--format", fmt, "--output", str(tmp_path / "x.keras")]
        args = export.get_args_parser().parse_args(argv + ["--data-dir", "a", "--data-dir", "b"])
        assert export.main(args) == 2
        assert f"{fmt} takes one --data-dir, not 2" in capsys.readouterr().err

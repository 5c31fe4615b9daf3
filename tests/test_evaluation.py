"""Metrics on hand-computable cases, perturbations, and ``evaluate.py`` end to end."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector import evaluation, perturbations
from deepfake_detector.errors import DatasetError, PerturbationSpecError
from deepfake_detector.metrics import METRIC_KEYS, choose_threshold, compute_metrics, format_table
from deepfake_detector.perturbations import Perturbation, parse_spec
from deepfake_detector.preprocessing import load_image, open_image
from tests.helpers import image_bytes, synthetic_image

REPO = Path(__file__).resolve().parent.parent
#: The documented top-level keys of ``evaluate.py --json`` (besides "perturbations").
CONTEXT_KEYS = {"model", "model_path", "data_dir", "split", "n_skipped", "skipped"}

REAL, FAKE = [0] * 3, [1] * 3


# ----------------------------------------------------------------------------- metrics


def test_perfect_model():
    m = compute_metrics(REAL + FAKE, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], threshold=0.5)
    assert m["accuracy"] == 1 and m["balanced_accuracy"] == 1 and m["f1"] == 1
    assert m["roc_auc"] == 1 and m["average_precision"] == 1 and m["eer"] == 0
    assert m["tpr_at_fpr_1"] == 1 and m["tpr_at_fpr_5"] == 1
    assert m["confusion_matrix"]["rows_true_columns_predicted"] == [[3, 0], [0, 3]]
    assert m["notes"] == [] and set(m) == set(METRIC_KEYS)


def test_inverted_model():
    m = compute_metrics(REAL + FAKE, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1], threshold=0.5)
    assert m["accuracy"] == 0 and m["roc_auc"] == 0 and m["eer"] == 1
    assert m["real_accuracy"] == 0 and m["fake_accuracy"] == 0 and m["tpr_at_fpr_5"] == 0


def test_constant_model():
    m = compute_metrics(REAL + FAKE, [0.5] * 6, threshold=0.5)
    assert m["roc_auc"] == 0.5 and m["eer"] == 0.5
    # 0.5 >= threshold: everything is called fake.
    assert m["accuracy"] == 0.5 and m["real_accuracy"] == 0 and m["fake_accuracy"] == 1
    assert m["precision"] == 0.5 and m["recall"] == 1


def test_hand_computed_example():
    # real 0.1 0.2 0.3 0.6 | fake 0.4 0.7 0.8 0.9. At 0.5: TN 3, FP 1 (0.6), FN 1 (0.4), TP 3.
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    m = compute_metrics(y, s, threshold=0.5)
    assert m["confusion_matrix"]["rows_true_columns_predicted"] == [[3, 1], [1, 3]]
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "real_accuracy", "fake_accuracy"):
        assert m[key] == pytest.approx(0.75), key
    assert m["roc_auc"] == pytest.approx(15 / 16)  # only the pair (fake 0.4, real 0.6) is misordered
    assert m["average_precision"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)
    assert m["eer"] == pytest.approx(0.25)  # cut at 0.6: FPR 1/4 (0.6), FNR 1/4 (0.4)
    assert m["tpr_at_fpr_1"] == pytest.approx(0.75)  # cut at 0.7: no real flagged, 3 of 4 fakes
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.7, 0.4, 0.4, 0.7, 0.8, 0.9]))
    assert m["log_loss"] == pytest.approx(expected_loss)
    # The stored threshold and 0.5 are reported separately.
    low = compute_metrics(y, s, threshold=0.35)
    assert low["accuracy"] == pytest.approx(7 / 8) and low["accuracy_at_0_5"] == pytest.approx(0.75)
    assert low["threshold"] == 0.35 and low["precision"] == pytest.approx(4 / 5) and low["recall"] == 1


@pytest.mark.parametrize("rule", ["eer", "balanced_accuracy"])
def test_choose_threshold_falls_between_separated_classes(rule):
    y, s = [0, 0, 0, 1, 1, 1], [0.05, 0.1, 0.3, 0.6, 0.7, 0.95]
    threshold = choose_threshold(y, s, rule)
    assert 0.3 < threshold < 0.6
    assert compute_metrics(y, s, threshold)["accuracy"] == 1
    with pytest.raises(ValueError):
        choose_threshold([1, 1], [0.2, 0.9], rule)


def test_only_fake_images():
    m = compute_metrics([1, 1, 1], [0.9, 0.8, 0.2], threshold=0.5)
    assert m["n_real"] == 0 and m["n_fake"] == 3
    assert m["accuracy"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["roc_auc"] is None and m["eer"] is None and m["precision"] is None
    assert m["notes"] and "only fake" in m["notes"][0]


def test_only_real_images():
    m = compute_metrics([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.9], threshold=0.5)
    assert m["accuracy"] == pytest.approx(3 / 4) and m["real_accuracy"] == pytest.approx(3 / 4)
    assert m["roc_auc"] is None and m["recall"] is None and m["fake_accuracy"] is None
    assert m["notes"] and "only real" in m["notes"][0]
    assert m["confusion_matrix"]["rows_true_columns_predicted"] == [[3, 1], [0, 0]]


def test_no_images_does_not_crash():
    m = compute_metrics([], [], threshold=0.5)
    assert m["n_real"] == m["n_fake"] == 0 and m["accuracy"] is None and m["notes"] == ["no images"]


def test_format_table_has_a_column_per_condition():
    clean = compute_metrics([0, 1], [0.2, 0.8])
    fake_only = compute_metrics([1], [0.8])
    table = format_table({"clean": clean, "jpeg:50": fake_only})
    header, *rows = table.splitlines()
    assert header.split() == ["metric", "clean", "jpeg:50"]
    roc = next(row for row in rows if row.startswith("roc_auc"))
    assert roc.split() == ["roc_auc", "1.0000", "-"]


# ----------------------------------------------------------------------------- perturbations


def detailed_image(size: int = 96) -> Image.Image:
    """Fine random texture over smooth colour: plenty of high-frequency content to lose."""
    rng = np.random.default_rng(5)
    smooth = np.asarray(synthetic_image(False, rng, size), np.float64)
    noise = rng.normal(0, 40, size=(size, size, 1))
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def high_frequency_energy(image: Image.Image) -> float:
    """Mean squared difference between horizontal and vertical neighbours."""
    a = np.asarray(image, np.float64)
    return float(np.mean(np.diff(a, axis=0) ** 2) + np.mean(np.diff(a, axis=1) ** 2))


def test_jpeg_quality_controls_size_and_pixels():
    image = detailed_image()
    low, high = perturbations.jpeg(image, 30), perturbations.jpeg(image, 95)
    assert len(low) < len(high)
    decoded = open_image(low)
    assert decoded.size == image.size
    assert np.abs(np.asarray(decoded, np.int16) - np.asarray(image, np.int16)).mean() > 2


def test_blur_removes_high_frequencies():
    image = detailed_image()
    blurred = perturbations.blur(image, 2)
    assert blurred.size == image.size and not np.array_equal(np.asarray(blurred), np.asarray(image))
    assert high_frequency_energy(blurred) < 0.3 * high_frequency_energy(image)
    assert high_frequency_energy(perturbations.blur(image, 1)) > high_frequency_energy(blurred)


def test_resize_keeps_size_but_loses_detail():
    image = detailed_image()
    half = perturbations.downscale(image, 0.5)
    assert half.size == image.size
    assert high_frequency_energy(half) < 0.7 * high_frequency_energy(image)
    assert high_frequency_energy(perturbations.downscale(image, 0.25)) < high_frequency_energy(half)


def test_parse_spec():
    found = parse_spec("jpeg:30,50,75,90;blur:1,2;resize:0.5,0.25")
    assert [p.name for p in found] == [
        "jpeg:30",
        "jpeg:50",
        "jpeg:75",
        "jpeg:90",
        "blur:1",
        "blur:2",
        "resize:0.5",
        "resize:0.25",
    ]
    assert found[0] == Perturbation("jpeg", 30) and parse_spec(" JPEG:50 ; jpeg:50 ") == [Perturbation("jpeg", 50)]
    for bad in ("", "noise:1", "jpeg", "jpeg:", "jpeg:abc", "jpeg:0", "jpeg:50.5", "blur:-1", "resize:2", "resize:nan"):
        with pytest.raises(PerturbationSpecError):
            parse_spec(bad)


def test_perturbed_and_clean_images_share_the_preprocessing_path():
    # An EXIF-rotated JPEG: decoding once and preprocessing the PIL image equals load_image(bytes).
    image = detailed_image().resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    encoded = image_bytes(image, "JPEG", quality=90, exif=exif.tobytes())
    original = open_image(encoded)
    assert original.size == (64, 96)
    assert np.array_equal(load_image(original, 32), load_image(encoded, 32))


# ----------------------------------------------------------------------------- folders


def test_resolve_folder(tiny_dataset, tmp_path):
    assert evaluation.resolve_folder(tiny_dataset) == (tiny_dataset / "Test", "Test")
    assert evaluation.resolve_folder(tiny_dataset, "Validation") == (tiny_dataset / "Validation", "Validation")
    assert evaluation.resolve_folder(tiny_dataset / "Train") == (tiny_dataset / "Train", None)
    (tmp_path / "only_test" / "Test" / "Fake").mkdir(parents=True)
    assert evaluation.resolve_folder(tmp_path / "only_test")[1] == "Test"
    with pytest.raises(DatasetError, match="no Real/ or Fake/"):
        evaluation.resolve_folder(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        evaluation.resolve_folder(tmp_path / "missing")


@pytest.mark.slow
def test_folder_with_only_fake_images(detector, tiny_dataset, tmp_path):
    folder = tmp_path / "fakes"
    shutil.copytree(tiny_dataset / "Test" / "Fake", folder / "Fake")
    (folder / "Fake" / "broken.png").write_bytes(b"not an image")
    scored = evaluation.score_folder(detector, folder, parse_spec("blur:1"), batch_size=5)
    # Same numbers as scoring each file on its own through the detector.
    singles = [detector.predict(path).fake_probability for path in scored.paths]
    np.testing.assert_allclose(scored.fake_probability["clean"], singles, atol=1e-5)
    assert set(scored.fake_probability) == {"clean", "blur:1"}

    report = evaluation.evaluate_folder(detector, folder, batch_size=5, plots_dir=tmp_path / "plots")
    assert report["n_real"] == 0 and report["n_fake"] == 16 and report["accuracy"] > 0.8
    assert report["roc_auc"] is None and "only fake" in report["notes"][0]
    assert report["n_skipped"] == 1 and report["skipped"][0]["path"].endswith("broken.png")
    assert "not an image" in report["skipped"][0]["reason"]
    assert "perturbations" not in report
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion_matrix.png", "score_histogram.png"]


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_evaluate_script_end_to_end(trained_model_path, tiny_dataset, tmp_path):
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    result = run_evaluate(
        "--model",
        str(trained_model_path),
        "--data-dir",
        str(tiny_dataset),
        "--json",
        str(report_path),
        "--plots",
        str(plots),
        "--perturb",
        "jpeg:50;blur:1",
        "--batch-size",
        "8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert set(report) == CONTEXT_KEYS | set(METRIC_KEYS) | {"perturbations"}
    assert report["split"] == "Test" and report["data_dir"] == str(tiny_dataset / "Test")
    assert report["model_path"] == str(trained_model_path) and report["model"] == trained_model_path.name
    assert report["n_real"] == report["n_fake"] == 16 and report["n_skipped"] == 0 and report["skipped"] == []
    assert report["roc_auc"] > 0.9 and report["notes"] == []
    assert list(report["perturbations"]) == ["jpeg:50", "blur:1"]
    for metrics in report["perturbations"].values():
        assert set(metrics) == set(METRIC_KEYS) and metrics["n_real"] == 16
        assert metrics["threshold"] == report["threshold"] and math.isfinite(metrics["roc_auc"])
    header = next(line for line in result.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "clean", "jpeg:50", "blur:1"]
    for name in ("roc.png", "confusion_matrix.png", "score_histogram.png"):
        with Image.open(plots / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 300
            image.load()
            assert np.asarray(image.convert("L")).std() > 5  # something is drawn


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (["--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
        (["--data-dir", "{tmp}"], "no Real/ or Fake/"),
        (["--data-dir", "{data}", "--perturb", "jpeg:500"], "--perturb"),
    ],
)
def test_evaluate_script_bad_input(args, words, tmp_path, tiny_dataset):
    args = [a.format(tmp=tmp_path, data=tiny_dataset) for a in args]
    result = run_evaluate("--model", str(tmp_path / "no_model.keras"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: ") and words in lines[0], result.stderr


def test_evaluate_script_missing_model(tiny_dataset, tmp_path, capsys):
    import evaluate

    missing = tmp_path / "no_model.keras"
    args = evaluate.get_args_parser().parse_args(["--model", str(missing), "--data-dir", str(tiny_dataset)])
    assert evaluate.main(args) == 2
    assert (
        capsys.readouterr().err
        == f"evaluate.py: no model at {missing}; train one with `python train.py --data-dir DATA` or pass --model PATH\n"
    )


@pytest.mark.slow
def test_evaluate_script_one_row_per_source_and_a_pooled_row(trained_model_path, tmp_path):
    from tests.helpers import make_dataset

    one = make_dataset(tmp_path / "one", {"Test": 6}, seed=1)
    two = make_dataset(tmp_path / "two", {"Test": 10}, seed=2)
    report_path = tmp_path / "report.json"
    result = run_evaluate(
        "--model",
        str(trained_model_path),
        "--data-dir",
        str(one),
        "--data-dir",
        str(two),
        "--json",
        str(report_path),
        "--perturb",
        "jpeg:50",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert list(report["sources"]) == ["one", "two"] and report["split"] == "Test"
    assert report["sources"]["one"]["n_real"] == 6 and report["sources"]["two"]["n_fake"] == 10
    assert report["pooled"]["n_real"] == 16 and report["pooled"]["n_fake"] == 16
    for row in (*report["sources"].values(), report["pooled"]):
        assert row["threshold"] == report["threshold"] and "jpeg:50" in row["perturbations"]
    # Printed: a table per condition, one row per source and the pooled row.
    lines = result.stdout.splitlines()
    clean = lines.index("[clean]")
    assert lines[clean + 1].split()[:3] == ["source", "n_real", "n_fake"]
    assert [line.split()[0] for line in lines[clean + 2 : clean + 5]] == ["one", "two", "pooled"]
    assert lines[clean + 4].split()[1:3] == ["16", "16"] and "[jpeg:50]" in lines

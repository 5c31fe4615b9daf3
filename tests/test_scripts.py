"""The entry scripts: ``--help`` without TensorFlow, options read from the recipes, one way to fail."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Runs a script as ``python SCRIPT ARGS`` would, then says which heavy libraries it imported.
HELP_PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    assert done.code in (0, None), done.code
print("heavy:", sorted(name for name in ("tensorflow", "keras", "sklearn") if name in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["train.py"],
        ["inference.py"],
        ["inference.py", "serve"],
        ["inference.py", "predict"],
        ["evaluate.py"],
        ["export.py"],
    ],
    ids=" ".join,
)
def test_help_does_not_import_tensorflow(argv):
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, str(REPO / argv[0]), *argv[1:], "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "heavy: []"


def test_train_py_offers_the_recipes_choices_and_builds_the_config_from_them():
    import train
    from deepfake_detector.recipes import ARCHITECTURES, STRATEGIES, TrainConfig

    parser = train.get_args_parser()
    actions = {action.dest: action for action in parser._actions}
    assert list(actions["arch"].choices) == list(ARCHITECTURES)
    assert list(actions["distribute"].choices) == list(STRATEGIES)
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert set(actions) - {"help"} <= fields  # every option is a recipe field, passed on by name
    argv = ["--arch", "mobilenet_v2", "--epochs", "3", "--fakes", "both", "--no-flip-average", "--data-dir", "d"]
    config = train.config_from(parser.parse_args(argv))
    expected = TrainConfig.for_arch("mobilenet_v2", epochs=3, fakes="both", flip_average=False, data_dir="d")
    assert config == expected and config.augment == "selfblend" and config.image_size == 160
    assert train.config_from(parser.parse_args([])) == TrainConfig()  # the tutorial's recipe


def test_every_choice_has_an_implementation():
    """Every registry entry that names an implementation loads it, and it does its kind's job."""
    from deepfake_detector import metrics, optim, recipes
    from deepfake_detector.registry import Registry

    registries = [value for value in vars(recipes).values() if isinstance(value, Registry)]
    assert {registry.kind for registry in registries} >= {
        "architecture",
        "augmentation",
        "distribution",
        "optimizer",
        "schedule",
        "threshold rule",
        "runtime",
        "export format",
    }
    for registry in registries:
        for entry in registry.values():
            if entry.implementation is not None:
                assert callable(entry.load()), (registry.kind, entry.name)
    assert all(recipes.ARCHITECTURES[arch].pretrained for arch in recipes.PRETRAINED_ARCHITECTURES)
    for rule in recipes.THRESHOLD_RULES:
        assert 0.0 <= metrics.choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], rule) <= 1.0
    for name in recipes.OPTIMIZERS:
        assert recipes.OPTIMIZERS.load(name)(1e-3, 0.01).learning_rate.numpy() == pytest.approx(1e-3)
    for name in recipes.SCHEDULES:
        assert issubclass(recipes.SCHEDULES.load(name), optim.Schedule)
    assert [name for name, policy in recipes.AUGMENTATIONS.items() if not policy.changes_images] == ["none"]


def test_inference_py_serves_without_a_command_and_predicts_with_one():
    import inference

    parser = inference.get_args_parser()
    assert parser.parse_args([]).command is None
    served = parser.parse_args(["--port", "8080", "--runtime", "keras"])
    assert (served.command, served.port, served.runtime) == (None, 8080, "keras")
    assert parser.parse_args(["serve", "--port", "8081"]).port == 8081
    predicted = parser.parse_args(["predict", "a.jpg", "photos", "--no-faces"])
    assert (predicted.command, predicted.paths, predicted.no_faces) == ("predict", ["a.jpg", "photos"], True)


@pytest.mark.parametrize(
    "argv, prog, message",
    [
        (["--model", "missing.keras"], "inference.py", "missing.keras: no such model file"),
        (
            ["serve", "--keep-uploads", "--keep-uploads-max-mb", "-1"],
            "inference.py",
            "--keep-uploads-max-mb must be 0 or more",
        ),
        (
            ["serve", "--keep-uploads", "--keep-uploads-max-files", "-1"],
            "inference.py",
            "--keep-uploads-max-files must be 0 or more",
        ),
        (["predict", "--model", "missing.keras", "a.jpg"], "inference.py predict", "missing.keras: no such model file"),
    ],
)
def test_inference_py_fails_in_one_line_with_status_2(argv, prog, message, tmp_path, capsys, monkeypatch):
    import inference

    monkeypatch.chdir(tmp_path)
    assert inference.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"{prog}: {message}"


def test_every_error_has_an_exit_code_and_an_http_status():
    from deepfake_detector import errors

    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    assert len(classes) >= 11
    for error_class in classes:
        assert issubclass(error_class, errors.DeepfakeDetectorError)
        assert error_class.exit_code == 2 and 400 <= error_class.http_status < 600
    assert errors.UnsupportedFormatError.http_status == 415 and issubclass(errors.ImageError, ValueError)

"""What the entry scripts share: one way to exit on a user's error, and help texts made from the recipes.

Every script (``train.py``, ``inference.py``, ``evaluate.py``, ``export.py``) reports an error
the user can act on as one line, ``SCRIPT: message``, on stderr, and exits with status 2.
Help texts list the choices (the registries' entries) and defaults of
:mod:`deepfake_detector.recipes`, so they cannot drift from what runs. Nothing here imports TensorFlow: ``--help`` stays instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from deepfake_detector.errors import DeepfakeDetectorError
from deepfake_detector.recipes import ARCHITECTURES, TrainConfig

USAGE_ERROR = DeepfakeDetectorError.exit_code
#: The model shipped with the repository (its card: models/README.md).
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "deepfake_detector.keras"
#: What ``python train.py`` writes in the working folder, as the tutorial's did.
TRAINED_MODEL = Path("deepfake_detector_model.keras")
#: The scripts that use the model ``python train.py`` just wrote when there is one (the tutorial
#: trained, then served what it trained); the others measure and export the shipped one.
PREFER_TRAINED = ("inference.py",)


def default_model(prog: str, given: str | Path | None = None) -> tuple[Path, str]:
    """The one rule for which model a script uses, and why (each script says so): the one
    given; else, for ``inference.py``, ``./deepfake_detector_model.keras`` when ``train.py`` wrote
    one here; else the shipped model."""
    if given is not None:
        return Path(given), "given by --model"
    if prog in PREFER_TRAINED and TRAINED_MODEL.is_file():
        return TRAINED_MODEL, "trained here by python train.py"
    return SHIPPED_MODEL, "shipped with the repository"


def report_path(path: str | Path) -> str:
    """``path`` as a report records it: relative to the repository when inside it (the shipped
    model is ``models/deepfake_detector.keras`` on every machine), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(SHIPPED_MODEL.parent.parent))
    except ValueError:
        return str(path)


def fail(prog: str, message, status: int = USAGE_ERROR) -> int:
    """Print ``PROG: message`` on stderr; returns ``status``, by default that of a user's error."""
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def run(prog: str, main: Callable[..., int], *args) -> int:
    """``main(*args)``, with any :class:`~deepfake_detector.errors.DeepfakeDetectorError` it raises
    reported by :func:`fail`."""
    try:
        return main(*args)
    except DeepfakeDetectorError as error:
        return fail(prog, error, error.exit_code)


def _description(choice) -> str:
    return choice if isinstance(choice, str) else choice.help


def choices_help(choices: Mapping, default=None) -> str:
    """``name: what it is`` for each choice of a registry (or a dict of help texts), separated by
    semicolons, the default marked."""
    return "; ".join(
        f"{name}: {_description(choice)}" + (" (default)" if name == default else "")
        for name, choice in choices.items()
    )


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_defaults(field: str) -> str:
    """``default: 50 (seed), 15 (mobilenet_v2, efficientnet_lite0)``: a ``TrainConfig`` field's
    value in each architecture's recipe (``TrainConfig.for_arch``)."""
    by_value: dict = {}
    for arch in ARCHITECTURES:
        by_value.setdefault(getattr(TrainConfig.for_arch(arch), field), []).append(arch)
    if len(by_value) == 1:
        return f"default: {_shown(next(iter(by_value)))}"
    return "default: " + ", ".join(f"{_shown(value)} ({', '.join(archs)})" for value, archs in by_value.items())

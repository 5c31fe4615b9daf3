"""The registry: one entry per choice, its implementation imported only when asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_detector.registry import Entry, Registry


def test_an_entry_holds_its_name_help_and_implementation():
    registry = Registry("colour")
    registry.register("red", help="warm", implementation="colorsys:rgb_to_hsv")
    registry.register("none", help="nothing to run")
    assert list(registry) == ["red", "none"] == list(registry.names()) and "red" in registry and len(registry) == 2
    assert registry["red"] == Entry(name="red", help="warm", implementation="colorsys:rgb_to_hsv")
    import colorsys

    assert registry.load("red") is colorsys.rgb_to_hsv
    with pytest.raises(LookupError, match="none has no implementation"):
        registry.load("none")


def test_unknown_and_twice_registered_names_are_refused():
    registry = Registry("colour")
    registry.register("red", help="warm")
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        registry.register("red", help="again")
    with pytest.raises(KeyError):
        registry.check("blue", KeyError)
    with pytest.raises(ValueError, match="unknown colour 'blue'; choose one of red"):
        registry.load("blue")


def test_the_recipes_registries_are_read_without_importing_their_implementations():
    """Names and help of every choice come without TensorFlow, Keras or scikit-learn (``--help``)."""
    probe = (
        "import sys; from deepfake_detector import recipes\n"
        "assert all(len(r) for r in vars(recipes).values() if isinstance(r, recipes.Registry))\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"

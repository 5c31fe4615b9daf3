"""The one place that knows the classes.

Training assigns integer labels in ``TRAINING_CLASS_ORDER`` (so ``fake`` is 1 and the
sigmoid output is P(fake)); that order is saved with every model and read back, and
:meth:`deepfake_detector.model.DeepfakeDetectorModel.fake_probability` applies it, so every
number a user sees is a ``fake_probability``.
"""

from __future__ import annotations

REAL = "real"
FAKE = "fake"
#: Integer label of each class during training: index 0 is real, index 1 is fake.
TRAINING_CLASS_ORDER: tuple[str, str] = (REAL, FAKE)
#: The folder that holds each class in a dataset split (``Train/Real``, ``Train/Fake``).
FOLDER_NAMES: dict[str, str] = {REAL: "Real", FAKE: "Fake"}


def fake_index(class_names) -> int:
    """Which output class is fake in a saved class order; checks the order is ours."""
    class_names = [str(name).lower() for name in class_names]
    if sorted(class_names) != sorted(TRAINING_CLASS_ORDER):
        raise ValueError(f"class names {class_names} are not {list(TRAINING_CLASS_ORDER)}")
    return class_names.index(FAKE)


def label_for(fake_probability: float, threshold: float) -> str:
    """The verdict for a fake probability: fake at or above the threshold."""
    return FAKE if fake_probability >= threshold else REAL

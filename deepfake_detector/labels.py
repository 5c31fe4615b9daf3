"""The one place that knows the classes: their order, their folders, and the labelled files.

Training assigns integer labels in ``TRAINING_CLASS_ORDER`` (so ``fake`` is 1 and the
sigmoid output is P(fake)); that order is saved with every model and read back, and
:meth:`deepfake_detector.model.DeepfakeDetectorModel.fake_probability` applies it, so every
number a user sees is a ``fake_probability``. A split folder holds each class in a folder of
its own (``FOLDER_NAMES``); :func:`labelled_files` lists them with their integer labels.
"""

from __future__ import annotations

from pathlib import Path

from deepfake_detector.errors import DatasetError
from deepfake_detector.preprocessing import IMAGE_SUFFIXES

REAL = "real"
FAKE = "fake"
#: Integer label of each class during training: index 0 is real, index 1 is fake.
TRAINING_CLASS_ORDER: tuple[str, str] = (REAL, FAKE)
REAL_INDEX = TRAINING_CLASS_ORDER.index(REAL)
FAKE_INDEX = TRAINING_CLASS_ORDER.index(FAKE)
#: What the page calls each verdict. A face below the threshold is not certified real: it shows
#: no sign of the fakes the model was measured on, which is all a detector can say.
VERDICT_WORDS: dict[str, str] = {FAKE: "Fake", REAL: "No sign of the fakes it knows"}
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


def labelled_files(
    folder: str | Path, require_both: bool = True, suffixes: frozenset[str] = IMAGE_SUFFIXES
) -> tuple[list[str], list[int]]:
    """Image files under ``folder/Real`` and ``folder/Fake`` (recursively, sorted) and their
    integer labels in ``TRAINING_CLASS_ORDER``; no file is opened.

    With ``require_both`` a missing or empty class folder is an error; without it either
    may be missing, but not both. ``suffixes``: the files taken (images by default; videos
    for a folder of videos).

    Raises:
        DatasetError: a class folder missing or empty (with ``require_both``), or no images at all.
    """
    folder = Path(folder)
    paths, targets = [], []
    for index, class_name in enumerate(TRAINING_CLASS_ORDER):
        class_dir = folder / FOLDER_NAMES[class_name]
        if not class_dir.is_dir():
            if require_both:
                raise DatasetError(f"no {FOLDER_NAMES[class_name]}/ folder under {folder}")
            continue
        found = sorted(str(p) for p in class_dir.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        if not found and require_both:
            raise DatasetError(f"{class_dir} has no {'images' if suffixes == IMAGE_SUFFIXES else 'files to score'}")
        paths += found
        targets += [index] * len(found)
    if not paths:
        raise DatasetError(f"no images under {folder}/Real or {folder}/Fake")
    return paths, targets

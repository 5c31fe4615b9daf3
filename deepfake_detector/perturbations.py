"""Image degradations for robustness checks: JPEG recompression, Gaussian blur, down-and-up scaling.

Each one acts on a decoded full-size image (``preprocessing.open_image``) and returns
something ``preprocessing.load_image`` accepts, so a perturbed image reaches the model
through the same resize as a clean one. A spec such as ``"jpeg:30,50;blur:1,2;resize:0.5"``
names the conditions; :func:`parse_spec` turns it into :class:`Perturbation` objects.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageFilter

from deepfake_detector.errors import PerturbationSpecError
from deepfake_detector.preprocessing import RESAMPLE

KINDS = ("jpeg", "blur", "resize")
_EXAMPLES = {"jpeg": "jpeg:50,90", "blur": "blur:1,2", "resize": "resize:0.5"}


def jpeg(image: Image.Image, quality: int) -> bytes:
    """The image re-encoded as JPEG at ``quality`` (1-100), as an upload site would."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return image.filter(ImageFilter.GaussianBlur(radius=float(sigma)))


def downscale(image: Image.Image, factor: float) -> Image.Image:
    """Shrink by ``factor`` (0 < factor <= 1) and scale back to the original size.

    The size is unchanged but the detail finer than the reduced resolution is gone, as
    after a thumbnail is blown up again.
    """
    width, height = image.size
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(small, RESAMPLE).resize((width, height), RESAMPLE)


_APPLY = {"jpeg": jpeg, "blur": blur, "resize": downscale}


@dataclass(frozen=True)
class Perturbation:
    """One condition, e.g. ``Perturbation("jpeg", 50)``; ``name`` is ``"jpeg:50"``."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def apply(self, image: Image.Image) -> Image.Image | bytes:
        """The perturbed image (JPEG gives encoded bytes) for ``preprocessing.load_image``."""
        return _APPLY[self.kind](image, self.value)


def _check(kind: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PerturbationSpecError(f"{kind}:{text!r} is not a number") from None
    if not math.isfinite(value):
        raise PerturbationSpecError(f"{kind}:{text} is not a finite number")
    if kind == "jpeg" and not (value == int(value) and 1 <= value <= 100):
        raise PerturbationSpecError(f"jpeg quality must be a whole number from 1 to 100, got {text}")
    if kind == "blur" and not 0 < value <= 100:
        raise PerturbationSpecError(f"blur sigma must be above 0 and at most 100 pixels, got {text}")
    if kind == "resize" and not 0 < value <= 1:
        raise PerturbationSpecError(f"resize factor must be above 0 and at most 1, got {text}")
    return int(value) if kind == "jpeg" else value


def parse_spec(spec: str) -> list[Perturbation]:
    """``"jpeg:30,50;blur:1;resize:0.5"`` -> perturbations in that order, duplicates dropped.

    Raises:
        PerturbationSpecError: unknown kind, missing or out-of-range values.
    """
    found: list[Perturbation] = []
    for part in (spec or "").split(";"):
        part = part.strip()
        if not part:
            continue
        kind, colon, values = part.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise PerturbationSpecError(f"unknown perturbation {kind!r} in {spec!r}; use {', '.join(KINDS)}")
        texts = [text.strip() for text in values.split(",") if text.strip()]
        if not colon or not texts:
            raise PerturbationSpecError(f"{kind} needs values, e.g. {_EXAMPLES[kind]}")
        for text in texts:
            perturbation = Perturbation(kind, _check(kind, text))
            if perturbation not in found:
                found.append(perturbation)
    if not found:
        raise PerturbationSpecError(f"no perturbation in {spec!r}; e.g. 'jpeg:50,90;blur:1;resize:0.5'")
    return found

"""The page's pictures (``deepfake_detector/previews.py``): boxes drawn where the faces are, in
their label's colour, at the preview's scale; tests/test_web.py and test_video.py see them on the page."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from deepfake_detector import labels
from deepfake_detector.faces import FaceBox
from deepfake_detector.previews import LABEL_COLOURS, data_url, draw_faces, preview_data_url


def scored(box: FaceBox, label: str, fake_probability: float) -> SimpleNamespace:
    """What drawing reads of a FaceScore: its box and its prediction."""
    return SimpleNamespace(box=box, prediction=SimpleNamespace(label=label, fake_probability=fake_probability))


def decoded(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_boxes_are_drawn_in_their_labels_colour_at_the_previews_scale():
    picture = Image.new("RGB", (400, 200), (128, 128, 128))
    faces = [scored(FaceBox(100, 100, 100, 80), labels.FAKE, 0.9), scored(FaceBox(300, 100, 80, 80), labels.REAL, 0.1)]
    draw_faces(picture, faces, scale=0.5)  # drawn on a half-size copy
    pixels = np.asarray(picture)
    assert tuple(pixels[70, 50]) == LABEL_COLOURS[labels.FAKE]  # the left edge of (50, 50, 50, 40)
    assert tuple(pixels[70, 150]) == LABEL_COLOURS[labels.REAL]  # the left edge of (150, 50, 40, 40)
    assert tuple(pixels[70, 75]) == (128, 128, 128)  # inside a box: left as it was


def test_a_preview_is_a_small_jpeg_and_an_image_without_faces_is_not_drawn_on():
    image = Image.new("RGB", (1000, 500), (30, 90, 150))
    preview = decoded(preview_data_url(image, SimpleNamespace(faces=[])))
    assert preview.format == "JPEG" and preview.size == (384, 192)
    assert np.abs(np.asarray(preview, np.int16) - (30, 90, 150)).max() <= 3
    assert decoded(data_url(np.zeros((8, 8, 3), np.uint8))).size == (8, 8)

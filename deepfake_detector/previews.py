"""The pictures the page shows of a scored upload, drawn on the server.

A photo's preview is a re-encoded JPEG (never the client's bytes) with each face's box, number,
label and score drawn on it; a video's page has each track's face, the sampled frames with the
tracks' boxes, and the data of its plot (drawn in the browser by ``static/video.js``). Drawing
here, not in a script, keeps the page's strict Content-Security-Policy intact.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deepfake_detector import labels

if TYPE_CHECKING:  # drawing needs neither TensorFlow nor PyAV
    from deepfake_detector.detector import FaceScore, ImageScore
    from deepfake_detector.video import VideoScore

#: Box colours on the preview, as in style.css.
LABEL_COLOURS = {labels.FAKE: (179, 38, 30), labels.REAL: (27, 110, 58)}


def data_url(image: Image.Image | np.ndarray, quality: int = 85) -> str:
    """A JPEG data URL of an image (for the page)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def preview_data_url(image: Image.Image, analysis: ImageScore | None = None, side: int = 384) -> str:
    """A re-encoded JPEG of the upload, for the page to show (never the client's bytes), with
    each face's box, number, label and percentage drawn on it."""
    preview = image.copy()
    preview.thumbnail((side, side))
    if analysis is not None and analysis.faces:
        draw_faces(preview, analysis.faces, preview.width / image.width)
    return data_url(preview)


def video_page(analysis: VideoScore) -> dict:
    """What the page shows for a video: the answer, each track's face (its highest-scoring
    crop), the sampled frames with the tracks' boxes, and the plot's data (drawn by video.js)."""
    result = analysis.to_dict()
    track_of = {id(face.face): index for index, track in enumerate(analysis.tracks) for face in track.faces}
    for entry, track in zip(result["tracks"], analysis.tracks):
        best = max(track.faces, key=lambda face: face.face.prediction.fake_probability)
        entry["face_image"] = data_url(best.face.crop)
    frames = []
    for frame in analysis.frames:
        picture = frame.thumbnail.copy()
        if frame.analysis.faces:
            numbers = [track_of.get(id(face), 0) + 1 for face in frame.analysis.faces]
            draw_faces(picture, frame.analysis.faces, picture.width / frame.image_width, numbers)
        frames.append({"time_s": round(frame.sampled.time_s, 2), "image": data_url(picture)})
    plot = {
        "threshold": analysis.prediction.threshold,
        "duration_s": analysis.facts.duration_s,
        "tracks": [
            {"times": [f["time_s"] for f in t["frames"]], "scores": [f["fake_probability"] for f in t["frames"]]}
            for t in result["tracks"]
        ],
    }
    return {"result": result, "frames": frames, "plot": plot}


def draw_faces(
    preview: Image.Image, face_scores: list[FaceScore], scale: float, numbers: list[int] | None = None
) -> None:
    """Draw each face's box and its label (number, verdict, percentage) onto ``preview``, whose
    size is the scored image's times ``scale``; ``numbers`` default to 1, 2, ..."""
    draw = ImageDraw.Draw(preview)
    font = ImageFont.load_default(size=max(12, round(preview.width / 24)))
    line = max(2, round(preview.width / 160))
    for number, face in zip(numbers or range(1, len(face_scores) + 1), face_scores):
        colour = LABEL_COLOURS[face.prediction.label]
        x, y, width, height = (value * scale for value in face.box.as_list())
        draw.rectangle((x, y, x + width, y + height), outline=colour, width=line)
        word = labels.FOLDER_NAMES[face.prediction.label]  # "Fake" or "Real"
        text = f"{number} {word} {face.prediction.fake_probability * 100:.1f}%"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_width, text_height = right - left + 6, bottom - top + 4
        label_y = y - text_height if y - text_height >= 0 else y + height  # above, else below the box
        label_x = min(max(0, x), max(0, preview.width - text_width))
        draw.rectangle((label_x, label_y, label_x + text_width, label_y + text_height), fill=colour)
        draw.text((label_x + 3 - left, label_y + 2 - top), text, fill=(255, 255, 255), font=font)

"""Faces followed through a video's sampled frames: which face in one frame is which in the next.

Each sampled frame's faces are linked to the tracks seen in the last ``MAX_GAP + 1`` frames, where
each track is expected to have moved on at its last speed: box overlap first, then landmark
distance, one to one by :func:`scipy.optimize.linear_sum_assignment`. A face left over starts a
track; a face seen in one frame only is a track of one. A track's score is the mean of its frame
scores (:mod:`deepfake_detector.video` gives the verdict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from deepfake_detector.faces import FaceBox, FaceFinder

if TYPE_CHECKING:  # the detector imports TensorFlow; linking boxes does not need it
    from deepfake_detector.detector import FaceScore, Prediction

#: Box overlap (IoU) at which a face continues a track; below it, landmark distance decides.
MIN_OVERLAP = 0.3
#: Largest mean landmark distance, in face sizes, at which a face still continues a track.
MAX_LANDMARK_DISTANCE = 0.75
#: Sampled frames a track may miss (a face turned away, a missed detection) and still go on.
MAX_GAP = 2


class LandmarkRecorder:
    """A face finder that remembers the landmarks of the faces it last found (when its finder
    has them), so that ``Detector.predict_faces`` stays the one scoring path."""

    def __init__(self, finder: FaceFinder):
        self.finder, self.name, self.framing = finder, finder.name, finder.framing
        self.landmarks: dict[FaceBox, np.ndarray | None] = {}

    def find(self, image: Image.Image) -> list[FaceBox]:
        if hasattr(self.finder, "find_with_landmarks"):
            found = self.finder.find_with_landmarks(image)
        else:
            found = [(box, None) for box in self.finder.find(image)]
        self.landmarks = dict(found)
        return [box for box, _ in found]


@dataclass
class TrackFace:
    """One face of a track in one sampled frame."""

    sample: int
    frame: int
    time_s: float
    face: FaceScore
    landmarks: np.ndarray | None = None  # 5 x 2, when the finder gives them

    def to_dict(self) -> dict:
        return {
            "sample": self.sample,
            "frame": self.frame,
            "time_s": round(self.time_s, 3),
            "box": self.face.box.as_list(),
            "fake_probability": self.face.prediction.fake_probability,
            "label": self.face.prediction.label,
        }


@dataclass
class Track:
    """One face followed through the sampled frames; scored by the mean of its frame scores."""

    faces: list[TrackFace] = field(default_factory=list)
    prediction: Prediction | None = None

    @property
    def fake_probability(self) -> float:
        return float(np.mean([face.face.prediction.fake_probability for face in self.faces]))

    def to_dict(self, index: int) -> dict:
        return {
            "track": index,
            "fake_probability": self.prediction.fake_probability,
            "label": self.prediction.label,
            "frames_seen": len(self.faces),
            "first_s": round(self.faces[0].time_s, 3),
            "last_s": round(self.faces[-1].time_s, 3),
            "frames": [face.to_dict() for face in self.faces],
        }


def overlap(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes."""
    width = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    height = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    inter = max(0, width) * max(0, height)
    return inter / float(a.area + b.area - inter) if inter else 0.0


@dataclass(frozen=True)
class _Position:
    """Where a track's face is expected in the next frame: its last box and landmarks moved on
    at the speed of its last two sightings (a face that walks keeps walking)."""

    box: FaceBox
    points: np.ndarray  # 5 x 2 landmarks, or 1 x 2 box centre when the finder has none


def _points(face: TrackFace) -> np.ndarray:
    box = face.face.box
    return face.landmarks if face.landmarks is not None else np.array([[box.x + box.width / 2, box.y + box.height / 2]])


def _expected(track: Track, sample: int) -> _Position:
    last = track.faces[-1]
    box, points = last.face.box, _points(last)
    if len(track.faces) < 2:
        return _Position(box, points)
    before = track.faces[-2]
    step = (np.mean(points, axis=0) - np.mean(_points(before), axis=0)) / (last.sample - before.sample)
    dx, dy = step * (sample - last.sample)
    moved = FaceBox(round(box.x + dx), round(box.y + dy), box.width, box.height, box.score)
    return _Position(moved, points + [dx, dy] if points.shape == _points(before).shape else points)


def landmark_distance(expected: _Position, face: TrackFace) -> float:
    """Mean distance between the expected landmarks and a face's (box centres without them), in face sizes."""
    points = _points(face)
    if points.shape != expected.points.shape:
        box = face.face.box
        points, expected_points = (
            np.array([[box.x + box.width / 2, box.y + box.height / 2]]),
            expected.points.mean(axis=0, keepdims=True),
        )
    else:
        expected_points = expected.points
    return float(np.linalg.norm(points - expected_points, axis=1).mean() / math.sqrt(max(1, expected.box.area)))


def _assign(expected: list[_Position], found: list[TrackFace], pairs: set, cost) -> None:
    """Match still unmatched tracks and faces one to one where ``cost`` is finite."""
    from scipy.optimize import linear_sum_assignment

    open_tracks = [t for t in range(len(expected)) if t not in {p[0] for p in pairs}]
    open_faces = [f for f in range(len(found)) if f not in {p[1] for p in pairs}]
    if not open_tracks or not open_faces:
        return
    matrix = np.array([[cost(expected[t], found[f]) for f in open_faces] for t in open_tracks])
    finite = np.isfinite(matrix)
    rows, columns = linear_sum_assignment(np.where(finite, matrix, 1e9))
    pairs.update((open_tracks[r], open_faces[c]) for r, c in zip(rows, columns) if finite[r, c])


def _overlap_cost(expected: _Position, face: TrackFace) -> float:
    iou = overlap(expected.box, face.face.box)
    return -iou if iou >= MIN_OVERLAP else math.inf


def _landmark_cost(expected: _Position, face: TrackFace) -> float:
    distance = landmark_distance(expected, face)
    return distance if distance <= MAX_LANDMARK_DISTANCE else math.inf


def link_tracks(frames: list[list[TrackFace]]) -> list[Track]:
    """Link each sampled frame's faces to the tracks seen in the last ``MAX_GAP + 1`` frames,
    where each track is expected to have moved on at its last speed: box overlap first, then
    landmark distance; a face left over starts a track."""
    tracks: list[Track] = []
    for found in frames:
        if not found:
            continue
        sample = found[0].sample
        alive = [track for track in tracks if sample - track.faces[-1].sample <= MAX_GAP + 1]
        expected = [_expected(track, sample) for track in alive]
        pairs: set[tuple[int, int]] = set()
        _assign(expected, found, pairs, _overlap_cost)
        _assign(expected, found, pairs, _landmark_cost)
        for t, f in pairs:
            alive[t].faces.append(found[f])
        matched = {f for _, f in pairs}
        tracks += [Track([face]) for f, face in enumerate(found) if f not in matched]
    return tracks

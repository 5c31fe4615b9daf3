"""Faces linked across sampled frames into tracks (``deepfake_detector/tracking.py``), on boxes
and landmarks made here; ``tests/test_video.py`` follows real faces through real clips."""

from __future__ import annotations

import numpy as np

from deepfake_detector.faces import FaceBox
from deepfake_detector.tracking import TrackFace, link_tracks, overlap


class Face:
    """What a track needs of a scored face: its box."""

    def __init__(self, x: int):
        self.box = FaceBox(x, 0, 40, 40)


def test_tracks_link_by_landmarks_when_boxes_do_not_overlap():
    def face(sample, x):
        return TrackFace(
            sample,
            sample,
            float(sample),
            Face(x),
            np.array([[x + 10, 10], [x + 30, 10], [x + 20, 20], [x + 12, 30], [x + 28, 30]], float),
        )

    # 25 px a frame: the boxes barely overlap (IoU 0.23), the landmarks are 0.6 face sizes apart
    tracks = link_tracks([[face(0, 0), face(0, 200)], [face(1, 25), face(1, 175)], [face(2, 400)]])
    assert [[f.face.box.x for f in t.faces] for t in tracks] == [[0, 25], [200, 175], [400]]


def test_overlap_is_intersection_over_union():
    assert overlap(FaceBox(0, 0, 40, 40), FaceBox(0, 0, 40, 40)) == 1.0
    assert overlap(FaceBox(0, 0, 40, 40), FaceBox(20, 0, 40, 40)) == 800 / 2400
    assert overlap(FaceBox(0, 0, 40, 40), FaceBox(40, 0, 40, 40)) == 0.0

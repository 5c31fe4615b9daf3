"""Self-blended fakes: where a blend may change pixels, its mask, reproducibility, landmarks, the grid.

Blends are made on small synthetic faces (smooth random colours with fine noise, so every
alteration shows); the landmark finder is checked on real LFW crops from the shared data
when they are there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.recipes import DataConfig
from deepfake_detector.selfblend import BLEND_RATIOS, default_landmarks, face_landmarks, seam_width, self_blend

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lfw-faceswap"
HEIGHT, WIDTH = 72, 64  # not square, so a swapped height and width shows


def textured_image(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(40, 200, (4, 4, 3), dtype=np.uint8)).resize((width, height)))
    return np.clip(smooth + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)


def blend(seed: int, image: np.ndarray | None = None, landmarks: np.ndarray | None = None):
    image = textured_image() if image is None else image
    landmarks = default_landmarks(image.shape[:2]) if landmarks is None else landmarks
    return self_blend(image, landmarks, np.random.default_rng(seed))


def lfw_real(count: int) -> list[Path]:
    paths = sorted((SHARED_DATA / "Test" / "Real").glob("*.jpg"))[:count]
    if len(paths) < count:
        pytest.skip(f"the shared LFW data is not at {SHARED_DATA}")
    return paths


# ----------------------------------------------------------------------------- blends


def test_blend_keeps_size_and_dtype():
    blended, mask = blend(0)
    assert blended.shape == (HEIGHT, WIDTH, 3) and blended.dtype == np.uint8
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.float32


@pytest.mark.parametrize("seed", range(12))
def test_blend_changes_pixels_only_inside_its_mask(seed):
    image = textured_image()
    blended, mask = blend(seed, image)
    changed = (blended != image).any(axis=2)
    assert (mask == 0).any(), "the mask covers the whole image: nothing is left to compare"
    assert not (changed & (mask == 0)).any(), "a pixel outside the mask changed"
    assert changed.any(), "the blend changed nothing"
    assert np.array_equal(blended[mask == 0], image[mask == 0])


@pytest.mark.parametrize("seed", range(12))
def test_mask_is_a_soft_face_region_peaking_at_the_blend_ratio(seed):
    landmarks = default_landmarks((HEIGHT, WIDTH))
    _, mask = blend(seed, landmarks=landmarks)
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    assert any(np.isclose(mask.max(), ratio) for ratio in BLEND_RATIOS), mask.max()
    assert 0.0 < (mask > 0).mean() < 0.8  # some face, never the whole crop
    rows, columns = np.nonzero(mask)
    centre = np.average(np.stack([columns, rows], 1), axis=0, weights=mask[rows, columns])
    eye_distance = np.linalg.norm(landmarks[1] - landmarks[0])
    assert np.linalg.norm(centre - landmarks.mean(0)) < 1.5 * eye_distance, "the mask is not on the face"


def test_the_seam_is_as_narrow_as_sbis():
    """SBI's blend masks ramp from 0 to full over 0.1-0.55 eye distances (see selfblend.EROSION)."""
    size = 160
    landmarks = default_landmarks(size)
    widths = []
    for seed in range(20):
        _, mask = self_blend(np.full((size, size, 3), 128, np.uint8), landmarks, np.random.default_rng(seed))
        widths.append(seam_width(mask, landmarks))
    assert 0.05 < min(widths) and max(widths) < 0.7, widths  # soft, but never a wide haze
    assert 0.18 < np.median(widths) < 0.38, widths


def test_mask_follows_the_landmarks():
    image = textured_image(height=96, width=96)
    landmarks = default_landmarks(96)
    moved = landmarks + np.array([12.0, -6.0], dtype=np.float32)

    def centre(mask):
        rows, columns = np.nonzero(mask)
        return np.average(np.stack([columns, rows], 1), axis=0, weights=mask[rows, columns])

    for seed in range(4):
        shift = centre(blend(seed, image, moved)[1]) - centre(blend(seed, image, landmarks)[1])
        assert np.allclose(shift, [12.0, -6.0], atol=2.0), shift


def test_same_seed_same_blend_and_other_seeds_differ():
    first, first_mask = blend(7)
    again, again_mask = blend(7)
    assert np.array_equal(first, again) and np.array_equal(first_mask, again_mask)
    others = [blend(seed)[0] for seed in (8, 9, 10)]
    assert all(not np.array_equal(first, other) for other in others)


def test_unusable_landmarks_fall_back_to_the_mean_face():
    image = textured_image()
    expected = blend(3, image, default_landmarks(image.shape[:2]))
    for landmarks in (np.full((5, 2), np.nan, np.float32), np.full((5, 2), 30.0, np.float32)):
        blended, mask = blend(3, image, landmarks)
        assert np.array_equal(blended, expected[0]) and np.array_equal(mask, expected[1])


@pytest.mark.parametrize(
    "image, landmarks, message",
    [
        (textured_image().astype(np.float32), default_landmarks(64), "uint8"),
        (textured_image()[..., 0], default_landmarks(64), "H x W x 3"),
        (textured_image(), default_landmarks(64)[:4], "5 x 2"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(image, landmarks, message):
    with pytest.raises(ValueError, match=message):
        self_blend(image, landmarks, np.random.default_rng(0))


# ----------------------------------------------------------------------------- landmarks


def test_default_landmarks_are_a_face_scaled_to_the_image():
    right_eye, left_eye, nose, right_mouth, left_mouth = default_landmarks(128)
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    assert np.allclose(default_landmarks((100, 200)), default_landmarks(128) / 128 * [200, 100])


def test_landmark_finder_returns_five_points_on_a_real_face():
    from deepfake_detector.faces import default_finder

    finder = default_finder("retinaface")
    for path in lfw_real(2):
        face = np.asarray(Image.open(path).convert("RGB"))
        found = finder.find_landmarks(Image.fromarray(face))
        assert found is not None and found.shape == (5, 2)
        height, width = face.shape[:2]
        assert ((found >= 0) & (found < [width, height])).all()
        right_eye, left_eye, nose, right_mouth, left_mouth = found
        assert right_eye[0] < left_eye[0] and max(right_eye[1], left_eye[1]) < nose[1] < right_mouth[1]
        # LFW crops are aligned: every point lies within a fifth of the side of the mean face's
        assert np.abs(found - default_landmarks((height, width))).max() < width / 5
        assert np.array_equal(face_landmarks(face, finder), found)


def test_face_landmarks_fall_back_when_no_face_is_found():
    flat = np.full((64, 80, 3), 128, np.uint8)
    assert np.array_equal(face_landmarks(flat), default_landmarks((64, 80)))


# ----------------------------------------------------------------------------- the grid


def test_grid_script_draws_four_rows_per_face(tmp_path):
    from scripts.selfblend_grid import LABEL_WIDTH, get_args_parser, main

    folder = tmp_path / "data" / "Train" / "Real"
    folder.mkdir(parents=True)
    for seed in range(3):
        Image.fromarray(textured_image(seed, 48, 48)).save(folder / f"real_{seed}.jpg")
    output = tmp_path / "grid.png"
    args = get_args_parser().parse_args(
        ["--data-dir", str(tmp_path / "data"), "--output", str(output), "--count", "2", "--seed", "1"]
    )
    main(args)
    assert Image.open(output).size == (LABEL_WIDTH + 2 * 48, 4 * 48)


# ----------------------------------------------------------------------------- in the training pipeline


def _faces_source(count: int, fake_every: int):
    """Textured images, every ``fake_every``-th one labelled fake; image i is textured_image(i)."""
    from deepfake_detector.cache import ArraySource

    images = np.stack([textured_image(i, 48, 48) for i in range(count)])
    return ArraySource(images, (np.arange(count) % fake_every == fake_every - 1).astype(np.int32))


def _which(image: np.ndarray, source) -> int:
    """The position whose image ``image`` is, or comes from (a blend keeps the pixels outside its mask)."""
    matches = [(np.mean(image == original), i) for i, original in enumerate(source.images)]
    return max(matches)[1]


@pytest.mark.slow
def test_the_pipeline_follows_each_real_with_its_own_blend_labelled_fake():
    from deepfake_detector.pipeline import make_dataset

    source = _faces_source(24, fake_every=3)  # 16 real, 8 fake
    landmarks = np.broadcast_to(default_landmarks(48), (24, 5, 2))
    dataset = make_dataset(source, 8, training=True, config=DataConfig(seed=3), blend_landmarks=landmarks)
    assert len(dataset) == 5  # 16 + 16 + 8 = 40 elements
    batches = [(images.numpy(), targets.numpy()[:, 0]) for images, targets in dataset]
    images = np.concatenate([b[0] for b in batches])
    targets = np.concatenate([b[1] for b in batches])
    assert len(targets) == 40 and targets.sum() == 24  # real = 0, fake = 1
    assert images.dtype == np.uint8 and images.shape[1:] == (48, 48, 3)
    i = 0
    while i < len(targets):
        position = _which(images[i], source)
        if source.labels[position] == 0:  # a real: as read, then its blend
            np.testing.assert_array_equal(images[i], source.images[position])
            assert targets[i] == 0 and targets[i + 1] == 1
            assert _which(images[i + 1], source) == position and not np.array_equal(images[i + 1], images[i])
            i += 2
        else:  # a dataset fake: alone, labelled fake
            np.testing.assert_array_equal(images[i], source.images[position])
            assert targets[i] == 1
            i += 1
    again = np.concatenate(
        [
            b.numpy()
            for b, _ in make_dataset(source, 8, training=True, config=DataConfig(seed=3), blend_landmarks=landmarks)
        ]
    )
    np.testing.assert_array_equal(again, images)  # reproducible from the seed
    next_epoch = np.concatenate([b.numpy() for b, _ in dataset])
    assert not np.array_equal(next_epoch, images)  # new order and new blends every epoch


@pytest.mark.slow
def test_a_paired_policy_changes_a_face_and_its_blend_alike():
    import tensorflow as tf

    from deepfake_detector.pipeline import make_dataset

    source = _faces_source(16, fake_every=99)  # all real: pairs at (0, 1), (2, 3), ...
    landmarks = np.broadcast_to(default_landmarks(48), (16, 5, 2))
    border = np.ones((48, 48), bool)
    border[6:-6, 6:-6] = False  # outside every mask of the mean face at 48 px

    def pair_differences(augment: str) -> tuple[np.ndarray, np.ndarray]:
        # The datasets' seeds combine with TensorFlow's global one, which earlier tests move.
        tf.random.set_seed(0)
        batches = list(
            make_dataset(
                source, 8, training=True, config=DataConfig(seed=3, augment=augment), blend_landmarks=landmarks
            )
        )
        images = np.concatenate([b.numpy() for b, _ in batches]).astype(int)
        targets = np.concatenate([t.numpy()[:, 0] for _, t in batches])
        assert targets.tolist() == [0.0, 1.0] * 16
        assert not any(np.array_equal(image, original) for image in images for original in source.images)  # augmented
        difference = np.abs(images[0::2] - images[1::2]).mean(-1)
        return difference[:, border].mean(1), difference[:, ~border].mean(1)

    outside, inside = pair_differences("sbi")  # one draw for both: they differ where the blend does
    assert outside.max() < 2 and inside.mean() > 3 * outside.mean()
    outside, _ = pair_differences("selfblend")  # each drawn apart: flips and shifts differ
    assert np.median(outside) > 10


def test_a_donor_face_is_blended_only_inside_the_mask_and_shows_there():
    image = textured_image(0)
    donor = np.full_like(image, 128)  # flat: wherever it shows, the face's texture is gone
    landmarks = default_landmarks(image.shape[:2])
    moved = landmarks * 0.9 + 3  # the donor's face sits smaller and lower right
    full_strength = 0
    for seed in range(8):
        blended, mask = self_blend(image, landmarks, np.random.default_rng(seed), donor=(donor, moved))
        assert blended.shape == image.shape and blended.dtype == np.uint8
        assert np.array_equal(blended[mask == 0], image[mask == 0])
        again, _ = self_blend(image, landmarks, np.random.default_rng(seed), donor=(donor, moved))
        np.testing.assert_array_equal(again, blended)  # reproducible from the seed
        inside = mask > 0.9
        if inside.sum() > 20:
            full_strength += 1
            assert blended[inside].std(0).max() < 0.3 * image[inside].std(0).min()
    assert full_strength >= 2  # blend ratio 1 half the time


def test_the_donor_is_aligned_onto_the_face():
    from deepfake_detector.selfblend import _similarity

    landmarks = default_landmarks(64)
    angle = np.deg2rad(10)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    donor_landmarks = (landmarks - 32) @ turn.T * 1.2 + [30, 36]
    mapping = _similarity(donor_landmarks, landmarks)
    np.testing.assert_allclose(donor_landmarks @ mapping[:, :2].T + mapping[:, 2], landmarks, atol=1e-3)


def test_a_donor_of_another_size_is_refused():
    with pytest.raises(ValueError, match="donor face must be"):
        self_blend(
            textured_image(0),
            default_landmarks((HEIGHT, WIDTH)),
            np.random.default_rng(0),
            donor=(textured_image(1, 48, 48), default_landmarks(48)),
        )


@pytest.mark.slow
def test_each_face_is_blended_by_its_own_landmarks_and_other_faces_by_another_real_one(monkeypatch):
    from deepfake_detector import pipeline
    from deepfake_detector.pipeline import BlendedSource, make_dataset

    source = _faces_source(24, fake_every=3)  # 16 real, 8 fake: donors are real only
    landmarks = np.stack([default_landmarks(48) + i / 10 for i in range(24)])  # each position its own
    calls = []

    def recording_blend(image, face_landmarks, rng, donor=None):
        face = _which(image, source)
        np.testing.assert_array_equal(face_landmarks, landmarks[face])  # each face blended by its own landmarks
        calls.append((face, None if donor is None else (_which(donor[0], source), donor)))
        return self_blend(image, face_landmarks, rng, donor)

    monkeypatch.setattr(pipeline.selfblend, "self_blend", recording_blend)

    def epoch(other_faces: float) -> tuple[np.ndarray, np.ndarray]:
        calls.clear()
        batches = list(
            make_dataset(
                source, 8, training=True, config=DataConfig(seed=3, other_faces=other_faces), blend_landmarks=landmarks
            )
        )
        return np.concatenate([b.numpy() for b, _ in batches]), np.concatenate([t.numpy()[:, 0] for _, t in batches])

    plain, plain_targets = epoch(0.0)
    assert len(calls) == 16 and all(donor is None for _, donor in calls)
    donors, targets = epoch(1.0)
    np.testing.assert_array_equal(targets, plain_targets)  # the same pairs, real = 0 then fake = 1
    np.testing.assert_array_equal(donors[targets == 0], plain[targets == 0])
    assert not np.array_equal(donors[targets == 1], plain[targets == 1])
    assert len(calls) == 16 and all(donor is not None for _, donor in calls)
    for face, (position, (image, donor_landmarks)) in calls:
        assert position != face and source.labels[position] == 0  # another image, a real one
        np.testing.assert_array_equal(image, source.images[position])  # as read from the source
        np.testing.assert_array_equal(donor_landmarks, landmarks[position])  # with its own landmarks
    assert len({position for _, (position, _) in calls}) > 4  # drawn at random, not one fixed donor
    np.testing.assert_array_equal(epoch(1.0)[0], donors)  # reproducible from the seed
    epoch(0.5)
    assert 0 < sum(donor is not None for _, donor in calls) < 16

    monkeypatch.undo()
    reals = _faces_source(5, fake_every=99)
    validation = BlendedSource(reals, np.broadcast_to(default_landmarks(48), (5, 5, 2)), seed=7, other_faces=1.0)
    first = validation.read(np.arange(10))
    np.testing.assert_array_equal(validation.read(np.array([9, 6])), first[[9, 6]])  # fixed
    np.testing.assert_array_equal(first[:5], reals.images)
    plain_validation = BlendedSource(reals, np.broadcast_to(default_landmarks(48), (5, 5, 2)), seed=7).read(
        np.arange(10)
    )
    assert all(not np.array_equal(first[5 + i], plain_validation[5 + i]) for i in range(5))


def test_the_blended_validation_set_is_fixed_and_labelled():
    from deepfake_detector.pipeline import BlendedSource

    reals = _faces_source(5, fake_every=99)
    validation = BlendedSource(reals, np.broadcast_to(default_landmarks(48), (5, 5, 2)), seed=7)
    assert len(validation) == 10 and validation.labels.tolist() == [0] * 5 + [1] * 5
    first = validation.read(np.arange(10))
    np.testing.assert_array_equal(first[:5], reals.images)
    np.testing.assert_array_equal(validation.read(np.array([9, 2])), first[[9, 2]])  # same blend whenever read
    assert all(not np.array_equal(first[5 + i], reals.images[i]) for i in range(5))


def test_landmarks_are_found_once_and_kept_beside_the_cache(tmp_path, monkeypatch):
    from deepfake_detector import cache, pipeline, selfblend
    from tests.helpers import make_dataset

    root = make_dataset(tmp_path / "data", {"Train": 3})
    split = cache.open_split(root / "Train", tmp_path / "cache", DataConfig(image_size=32))
    calls = []
    monkeypatch.setattr(
        selfblend, "face_landmarks", lambda image, finder=None: calls.append(1) or default_landmarks(32) + 1
    )
    monkeypatch.setattr("deepfake_detector.faces.default_finder", lambda name="retinaface": None)
    first = pipeline.split_landmarks(split)
    assert len(calls) == 3 and first.shape == (6, 5, 2)  # the 3 real images only
    reals = split.labels == 0
    np.testing.assert_allclose(first[reals], np.broadcast_to(default_landmarks(32) + 1, (3, 5, 2)))
    np.testing.assert_allclose(first[~reals], np.broadcast_to(default_landmarks(32), (3, 5, 2)))
    np.testing.assert_array_equal(pipeline.split_landmarks(split), first)
    assert len(calls) == 3  # kept

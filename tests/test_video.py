"""Videos: sampling, tracks, labels end to end (Python, API, page, CLI), limits, nothing on disk.

The clips are made here (``harness/videos.py``): the astronaut's face from scikit-image pasted
onto a plain background and moved along known paths, so the tracks' boxes can be checked
against where the face was pasted. A white square on the face is what the tests' tiny model
calls fake.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import videos
from harness.videos import FacePath
from tests.helpers import HEIGHT, SIDE, STEPS, WIDTH, astronaut, clip, crossing, moving, open_files

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def face_offset() -> tuple[float, float]:
    """Where RetinaFace's box centre sits inside a pasted face tile."""
    from deepfake_detector.faces import default_finder

    frame = next(iter(videos.frames_with_faces([moving()], 1, WIDTH, HEIGHT)))
    box = default_finder().find(Image.fromarray(frame))[0]
    return box.x + box.width / 2 - 10, box.y + box.height / 2 - 60


def expected_centre(path: FacePath, frame: int, offset) -> tuple[float, float]:
    x, y = path.corner(frame, STEPS)
    return x + offset[0], y + offset[1]


def box_centre(box: list[int]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def score(detector, data: bytes, frames: int = 16, **kwargs):
    from deepfake_detector.video import score_video

    return score_video(detector, data, frames=frames, **kwargs).to_dict()


# ----------------------------------------------------------------------------- sampling and tracks


@pytest.mark.slow
def test_a_moving_face_is_one_track_seen_in_every_sampled_frame(detector, face_offset):
    result = score(detector, clip([moving()]))
    assert result["media"] == "video" and result["frames_sampled"] == 16
    assert result["video"] == {
        "container": "mp4",
        "codec": "h264",
        "width": WIDTH,
        "height": HEIGHT,
        "duration_s": 4.0,
        "frames": STEPS,
        "fps": 10.0,
    }
    (track,) = result["tracks"]
    assert track["frames_seen"] == 16
    frames = [entry["frame"] for entry in track["frames"]]
    assert frames == np.linspace(0, STEPS - 1, 16).round().astype(int).tolist()  # evenly spaced, first to last
    assert [entry["time_s"] for entry in track["frames"]] == pytest.approx([frame / 10 for frame in frames])
    for entry in track["frames"]:
        x, y = box_centre(entry["box"])
        expected_x, expected_y = expected_centre(moving(), entry["frame"], face_offset)
        assert abs(x - expected_x) <= 6 and abs(y - expected_y) <= 6, entry
    assert track["fake_probability"] == pytest.approx(np.mean([entry["fake_probability"] for entry in track["frames"]]))
    assert result["fake_probability"] == track["fake_probability"]


@pytest.mark.slow
def test_two_faces_that_cross_keep_their_tracks(detector, face_offset):
    paths = crossing()
    result = score(detector, clip(paths))
    assert len(result["tracks"]) == 2
    for track in result["tracks"]:
        assert track["frames_seen"] == 16
        # the track that starts on the left stays the one pasted left to right, and so on
        path = min(
            paths, key=lambda p: abs(expected_centre(p, 0, face_offset)[0] - box_centre(track["frames"][0]["box"])[0])
        )
        for entry in track["frames"]:
            x, y = box_centre(entry["box"])
            expected_x, expected_y = expected_centre(path, entry["frame"], face_offset)
            assert abs(x - expected_x) <= 8 and abs(y - expected_y) <= 8, (entry, path.start)
    assert result["fake_probability"] == max(track["fake_probability"] for track in result["tracks"])


def test_a_clip_with_no_face_is_scored_on_whole_frames(detector):
    blank = videos.encode(videos.frames_with_faces([], STEPS, WIDTH, HEIGHT), fps=10)
    result = score(detector, blank, frames=8)
    assert result["tracks"] == [] and result["face_detection"] == "none"
    assert len(result["sampled"]) == 8 and all(entry["faces"] == 0 for entry in result["sampled"])
    assert result["fake_probability"] == pytest.approx(
        np.mean([entry["fake_probability"] for entry in result["sampled"]])
    )


@pytest.mark.parametrize("container", ["matroska", "avi", "mp4"])
def test_a_clip_cut_mid_stream_is_refused(detector, container):
    from deepfake_detector.errors import VideoError

    data = clip([moving()], container)
    with pytest.raises(VideoError, match="truncated|not a video we can read"):
        score(detector, data[: len(data) * 2 // 3])


@pytest.mark.parametrize("container", ["webm", "mov", "matroska", "avi"])
def test_every_container_is_read(detector, container):
    options = {"codec": "libvpx-vp9"} if container == "webm" else {}
    if options:
        data = videos.encode(
            videos.frames_with_faces([moving()], STEPS, WIDTH, HEIGHT), fps=10, container="webm", codec="libvpx-vp9"
        )
    else:
        data = clip([moving()], container)
    result = score(detector, data, frames=8)
    assert len(result["tracks"]) == 1 and result["tracks"][0]["frames_seen"] == 8


def test_sparse_keyframes_are_decoded_once_in_order(detector):
    """One keyframe for the whole clip: every sampled frame is reached by decoding on, never by
    decoding from the start again, and each is the frame asked for."""
    from deepfake_detector.video import VideoReader

    frames = [np.full((64, 64, 3), value * 6, np.uint8) for value in range(STEPS)]
    data = videos.encode(frames, fps=10, keyframe_interval=1000, options={"bf": "0"})
    with VideoReader(data) as reader:
        reader.index()
        numbers = reader.plan(8)
        brightness = [np.asarray(sampled.image).mean() for sampled in reader.frames(numbers)]
    assert brightness == pytest.approx([number * 6 for number in numbers], abs=3)


# ----------------------------------------------------------------------------- labels end to end


@pytest.mark.slow
def test_a_fake_face_comes_out_fake_and_a_plain_one_real(detector):
    fake = score(detector, clip([moving(mark=True)]))
    real = score(detector, clip([moving()]))
    assert fake["label"] == "fake" and all(t["label"] == "fake" for t in fake["tracks"])
    assert real["label"] == "real"


def test_api_answers_a_video_with_tracks_times_and_boxes(client, detector):
    data = clip([moving(mark=True)])
    response = client.post("/api/predict?frames=12", data={"file": (io.BytesIO(data), "clip.mp4")})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["label"] == "fake" and body["media"] == "video" and body["frames_sampled"] == 12
    assert body["model"] == detector.name and body["elapsed_ms"] > 0
    (track,) = body["tracks"]
    assert set(track) == {"track", "fake_probability", "label", "frames_seen", "first_s", "last_s", "frames"}
    assert set(track["frames"][0]) == {"sample", "frame", "time_s", "box", "fake_probability", "label"}
    assert body == {**body, **score(detector, data, frames=12)}  # the same answer as the Python API


def test_a_video_larger_than_the_image_cap_is_scored(client):
    """The fixture's image cap is 2 MB; a video has its own (100 MB). An MP4 may carry a free box."""
    data = clip([moving()]) + (2 * 1024 * 1024 + 8).to_bytes(4, "big") + b"free" + bytes(2 * 1024 * 1024)
    response = client.post("/api/predict?frames=4", data={"file": (io.BytesIO(data), "clip.mp4")})
    assert response.status_code == 200, response.get_json()


@pytest.mark.slow
def test_page_shows_each_track_with_its_face_plot_and_frames(client):
    response = client.post("/", data={"file": (io.BytesIO(clip(crossing())), "clip.mp4"), "frames": "6"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count('class="plot" data-track=') == 2 and "Track 2:" in html
    assert 'id="video-data"' in html and "/static/video.js" in html
    assert html.count('alt="Frame at') == 6 and html.count('alt="Face of track') == 2


@pytest.mark.slow  # starts inference.py
def test_cli_writes_a_row_per_track_and_per_face_per_frame(trained_model_path, tmp_path):
    fake_clip = tmp_path / "fake.mp4"
    fake_clip.write_bytes(clip([moving(mark=True)]))
    two = tmp_path / "two.mkv"
    two.write_bytes(clip(crossing(), "matroska"))
    frames_csv = tmp_path / "frames.csv"
    process = subprocess.run(
        [
            sys.executable,
            "inference.py",
            "predict",
            str(fake_clip),
            str(two),
            "--model",
            str(trained_model_path),
            "--frames",
            "10",
            "--frames-csv",
            str(frames_csv),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(process.stdout)))
    assert [(Path(row["path"]).name, row["track"], row["frames_seen"]) for row in rows] == [
        ("fake.mp4", "0", "10"),
        ("two.mkv", "0", "10"),
        ("two.mkv", "1", "10"),
    ]
    assert rows[0]["label"] == "fake"
    per_frame = list(csv.DictReader(frames_csv.open()))
    assert len(per_frame) == 30 and all(len(row["box"].split()) == 4 for row in per_frame)


@pytest.mark.slow  # starts inference.py
def test_cli_fails_on_a_cut_video_with_its_reason(trained_model_path, tmp_path):
    cut = tmp_path / "cut.mkv"
    data = clip([moving()], "matroska")
    cut.write_bytes(data[: len(data) // 2])
    process = subprocess.run(
        [sys.executable, "inference.py", "predict", str(cut), "--model", str(trained_model_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 1
    assert "cut.mkv: the video is truncated" in process.stderr


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "limits, status, message",
    [
        ({"seconds": 2.0}, 413, "the limit is 2 s"),
        ({"long_side": 200}, 413, "the limit is 200x2160"),
        ({"packets": 30}, 413, "frames; the limit is 30"),
        ({"streams": 0}, 413, "streams"),
        ({"decoded_pixels": 10 * WIDTH * HEIGHT}, 413, "keyframes are too far apart"),
        ({"budget_seconds": 0.0}, 413, "took over 0 s"),
    ],
)
def test_limits_are_refused_with_a_reason(client, detector, limits, status, message):
    from deepfake_detector.video import VideoLimits
    from deepfake_detector.web import create_app

    app = create_app(detector, video_limits=VideoLimits(**limits))
    response = app.test_client().post("/api/predict", data={"file": (io.BytesIO(clip([moving()])), "clip.mp4")})
    assert response.status_code == status
    assert message in response.get_json()["error"]


@pytest.mark.parametrize("frames", ["0", "65", "x", "-3"])
def test_bad_frame_counts_are_400(client, frames):
    response = client.post(f"/api/predict?frames={frames}", data={"file": (io.BytesIO(clip([moving()])), "clip.mp4")})
    assert response.status_code == 400 and "frames must be" in response.get_json()["error"]


@pytest.mark.slow
def test_a_busy_video_worker_answers_503_with_retry_after(detector):
    from deepfake_detector.video import VideoLimits
    from deepfake_detector.web import create_app

    app = create_app(detector, video_limits=VideoLimits(queue_seconds=0.01))
    assert app.extensions["video_worker"].acquire(timeout=1)  # another video is being scored
    try:
        response = app.test_client().post("/api/predict", data={"file": (io.BytesIO(clip([moving()])), "clip.mp4")})
        page = app.test_client().post("/", data={"file": (io.BytesIO(clip([moving()])), "clip.mp4")})
    finally:
        app.extensions["video_worker"].release()
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "again" in response.get_json()["error"]
    assert page.status_code == 503 and 'role="alert"' in page.get_data(as_text=True)


@pytest.mark.slow  # encodes frame bombs of 100,000 frames
def test_hostile_containers_are_refused_with_their_status():
    from deepfake_detector.errors import VideoError
    from deepfake_detector.video import VideoReader

    frames = [np.full((120, 160, 3), value, np.uint8) for value in range(0, 200, 10)]
    corpus = videos.hostile_videos(
        videos.encode(frames, container="matroska"), videos.encode(frames, container="avi", codec="mpeg4")
    )
    for name, (data, status) in corpus.items():
        with pytest.raises(VideoError) as caught:
            with VideoReader(data) as reader:
                reader.index()
                reader.plan(32)
        assert caught.value.http_status == status, (name, caught.value)


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_evaluate_a_folder_of_videos(detector, tmp_path):
    from deepfake_detector.evaluation import evaluate_video_folder

    for folder, mark in (("Real", False), ("Fake", True)):
        (tmp_path / folder).mkdir()
        for i in range(2):
            (tmp_path / folder / f"{i}.mp4").write_bytes(
                clip([FacePath(astronaut(), (10 + 40 * i, 60), (210, 60 - 20 * i), SIDE, mark)])
            )
    (tmp_path / "Fake" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))
    report = evaluate_video_folder(detector, tmp_path, frames=6)
    assert report["n_videos"] == 4 and report["n_skipped"] == 1 and report["accuracy"] == 1.0
    assert report["skipped"][0]["path"].endswith("broken.mp4")


@pytest.mark.slow  # starts evaluate.py
def test_evaluate_py_reports_video_level_metrics(trained_model_path, tmp_path):
    for folder, mark in (("Real", False), ("Fake", True)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.mkv").write_bytes(clip([moving(mark)], "matroska"))
    report_path = tmp_path / "report.json"
    process = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "--data-dir",
            str(tmp_path),
            "--model",
            str(trained_model_path),
            "--frames",
            "4",
            "--json",
            str(report_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert "on 2 videos" in process.stdout
    import json

    report = json.loads(report_path.read_text())
    assert report["media"] == "video" and report["n_videos"] == 2 and report["accuracy"] == 1.0


# ----------------------------------------------------------------------------- the real server


@pytest.mark.slow
def test_the_real_server_scores_a_video_in_memory_and_refuses_hostile_ones(trained_model_path, tmp_path):
    """inference.py as a real process: a video upload opens no file for writing (its open files are
    watched while it is scored), and each hostile container gets its 4xx while the server's peak
    memory stays within 1 GB of what it held before."""
    import threading

    import requests

    from harness.server import memory_mb, running_process

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    data = clip([moving(mark=True)])
    frames = [np.full((120, 160, 3), value, np.uint8) for value in range(0, 200, 10)]
    hostile = videos.hostile_videos(
        videos.encode(frames, container="matroska"), videos.encode(frames, container="avi", codec="mpeg4")
    )
    with running_process(trained_model_path, env={"TMPDIR": str(scratch)}) as (url, process):
        before, seen, done = open_files(process.pid), set(), threading.Event()

        def watch():
            while not done.is_set():
                seen.update(open_files(process.pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            response = requests.post(f"{url}/api/predict", files={"file": ("clip.mp4", data)}, timeout=120)
        finally:
            done.set()
            watcher.join()
        assert response.status_code == 200 and response.json()["label"] == "fake", response.text[:300]
        new_files = {target for target in seen - before if target.startswith("/") or "(deleted)" in target}
        assert not new_files, f"the server opened files for writing while scoring the video: {sorted(new_files)}"
        resident_before = memory_mb(process.pid)[0]
        for name, (body, status) in hostile.items():
            response = requests.post(f"{url}/api/predict", files={"file": (name, body)}, timeout=120)
            assert response.status_code == status and response.json()["error"], (
                name,
                response.status_code,
                response.text[:200],
            )
        assert memory_mb(process.pid)[1] - resident_before < 1024, "a hostile video cost over 1 GB"
    assert [path.name for path in scratch.iterdir() if not path.name.startswith("__autograph_generated_file")] == []

"""Score a video: sampled frames, faces followed through time, one verdict per person.

A video is read with PyAV (FFmpeg) from memory or a path; nothing is written to disk. Before a
frame is decoded, the container's facts are checked against :class:`VideoLimits` (streams,
size, duration, frame count), then its packets are indexed (read, not decoded) to learn every
frame's timestamp and where the keyframes are. ``frames`` frames are sampled evenly (32 by
default, DeepfakeBench's protocol); the reader seeks to the keyframe before each group of them
and decodes from there, so only what the sampled frames need is decoded, and the plan's cost
is checked before any of it is.

Each sampled frame goes through the one scoring path,
:meth:`deepfake_detector.detector.Detector.predict_faces`; its faces are linked across frames
into tracks (:mod:`deepfake_detector.tracking`). A track's score is the mean of its frame
scores; the video's verdict is its highest track. When no sampled frame has a face, each frame
was scored whole and the verdict is their mean.
"""

from __future__ import annotations

import bisect
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from deepfake_detector import faces
from deepfake_detector.errors import UnsupportedVideoError, VideoError, VideoTooLargeError
from deepfake_detector.faces import FaceFinder
from deepfake_detector.tracking import LandmarkRecorder, Track, TrackFace, link_tracks

if TYPE_CHECKING:  # the detector imports TensorFlow; reading a video does not need it
    from deepfake_detector.detector import Detector, ImageScore, Prediction

#: Frames sampled per video by default: DeepfakeBench's test protocol.
DEFAULT_FRAMES = 32
#: File names taken for videos when a folder is listed (what a file holds is decided from its bytes).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})
#: The containers read (FFmpeg's demuxer names): MP4/MOV, Matroska/WebM, AVI.
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "matroska", "avi": "avi"}
VERDICT_HIGHEST_TRACK = "highest track score (a track's score is the mean of its frames)"
VERDICT_WHOLE_FRAMES = "whole frames (no face found): the mean of the sampled frames"

VideoSource = bytes | str | Path | BinaryIO


@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost. Checked from the container before decoding, then while decoding."""

    upload_bytes: int = 100 * 1024 * 1024  # a video upload (images have their own, smaller cap)
    seconds: float = 600.0  # duration
    long_side: int = 3840  # frame size: 3840x2160, either way up
    short_side: int = 2160
    frames: int = 64  # most frames a request may sample (?frames=, --frames)
    packets: int = 72_000  # frames in the stream: 10 minutes at 120 fps
    streams: int = 16  # video, audio, subtitles and data together
    decoded_pixels: int = 12_000_000_000  # pixels decoded to reach the sampled frames (1,300 4K frames)
    budget_seconds: float = 60.0  # wall clock to decode and score one video
    faces_per_frame: int = 20  # the largest faces of each frame are scored
    queue_seconds: float = 5.0  # a web request waits this long for the video worker, then gets 503


@dataclass(frozen=True)
class VideoFacts:
    """What the container says, and what its index confirmed."""

    container: str
    codec: str
    width: int
    height: int
    duration_s: float
    frames: int  # frames indexed in the video stream
    fps: float
    streams: int

    def to_dict(self) -> dict:
        return {
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "duration_s": round(self.duration_s, 3),
            "frames": self.frames,
            "fps": round(self.fps, 3),
        }


@dataclass(frozen=True)
class SampledFrame:
    sample: int  # position among the sampled frames
    frame: int  # frame number in presentation order
    time_s: float
    image: Image.Image | None  # RGB, display orientation (dropped once scored)


def looks_like_video(head: bytes) -> bool:
    """Whether the first bytes are those of a container we read (MP4/MOV, Matroska/WebM, AVI)."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
        or head.startswith(b"\x1a\x45\xdf\xa3")
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
    )


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoReader:
    """An open video whose container passed :class:`VideoLimits`; use as a context manager."""

    def __init__(self, source: VideoSource, limits: VideoLimits = VideoLimits(), deadline: float | None = None):
        import av

        self._av = av
        self.limits = limits
        self.deadline = deadline if deadline is not None else time.monotonic() + limits.budget_seconds
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        elif isinstance(source, Path):
            source = str(source)
        try:
            self.container = av.open(source, mode="r")
        except FileNotFoundError:
            raise
        except (av.FFmpegError, ValueError, OSError) as error:
            raise VideoError(
                "the file is not a video we can read (truncated, or not MP4, WebM, MOV, MKV or AVI)"
            ) from error
        try:
            self.stream = self._check_container()
        except BaseException:
            self.container.close()
            raise
        self._pts: list[int] = []
        self._keyframes: list[int] = []

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def _check_container(self):
        """The video stream, once the container's own facts are within the limits."""
        container, limits = self.container, self.limits
        if container.format.name not in CONTAINERS:
            raise UnsupportedVideoError(
                f"{container.format.name} files are not supported; use MP4, WebM, MOV, MKV or AVI"
            )
        if len(container.streams) > limits.streams:
            raise VideoTooLargeError(f"the file has {len(container.streams)} streams; the limit is {limits.streams}")
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None or context.name is None:
            raise UnsupportedVideoError("the video's codec is not one we can decode")
        self._check_size(context.width, context.height)
        duration = self._declared_seconds(stream)
        if duration > limits.seconds:
            raise VideoTooLargeError(f"the video is {duration:.0f} s long; the limit is {limits.seconds:.0f} s")
        if stream.frames > limits.packets:
            raise VideoTooLargeError(f"the video has {stream.frames:,} frames; the limit is {limits.packets:,}")
        context.thread_type = "AUTO"
        context.thread_count = 2  # frame threads each hold frames: more would cost memory, not time, here
        return stream

    def _check_size(self, width: int, height: int) -> None:
        long_side, short_side = max(width, height), min(width, height)
        if long_side > self.limits.long_side or short_side > self.limits.short_side:
            raise VideoTooLargeError(
                f"the video's frames are {width}x{height}; the limit is {self.limits.long_side}x{self.limits.short_side}"
            )

    def _declared_seconds(self, stream) -> float:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if self.container.duration is not None:
            return self.container.duration / 1_000_000
        return 0.0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise VideoTooLargeError(
                f"the video took over {self.limits.budget_seconds:g} s to read; send a shorter or smaller one, or fewer frames"
            )

    def index(self) -> VideoFacts:
        """Read every packet of the video stream (no decoding): timestamps, keyframes, truncation."""
        pts, keyframes, limits = [], [], self.limits
        try:
            for count, packet in enumerate(self.container.demux(self.stream)):
                if count % 1000 == 999:
                    self.check_time()
                if packet.size == 0:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    raise UnsupportedVideoError("the video's frames have no timestamps")
                pts.append(stamp)
                if packet.is_keyframe:
                    keyframes.append(stamp)
                if len(pts) > limits.packets:
                    raise VideoTooLargeError(f"the video has more than {limits.packets:,} frames")
        except self._av.FFmpegError as error:
            raise VideoError("the video is truncated or corrupt") from error
        if not pts or not keyframes:
            raise VideoError("the video is truncated or corrupt: it has no frames we can decode")
        self._pts, self._keyframes = sorted(pts), sorted(keyframes)
        return self._facts()

    def _facts(self) -> VideoFacts:
        stream, pts = self.stream, self._pts
        time_base = float(stream.time_base)
        rate = float(stream.average_rate or stream.guessed_rate or 0) or (len(pts) - 1) / max(
            (pts[-1] - pts[0]) * time_base, 1e-9
        )
        seen = (pts[-1] - pts[0]) * time_base + (1 / rate if rate else 0.0)
        if seen > self.limits.seconds:
            raise VideoTooLargeError(f"the video is {seen:.0f} s long; the limit is {self.limits.seconds:.0f} s")
        declared = self._declared_seconds(stream)
        if (stream.frames and len(pts) < stream.frames - 2) or seen < declared * 0.9 - 0.5:
            raise VideoError(
                f"the video is truncated: its frames stop at {seen:.1f} s of the {declared:.1f} s it declares"
            )
        context = stream.codec_context
        return VideoFacts(
            CONTAINERS[self.container.format.name],
            context.name,
            context.width,
            context.height,
            seen,
            len(pts),
            rate,
            len(self.container.streams),
        )

    def plan(self, frames: int) -> list[int]:
        """Frame numbers (presentation order) of ``frames`` evenly spaced frames; checks what
        decoding them costs (from the keyframe before each group) before any is decoded."""
        if not 1 <= frames <= self.limits.frames:
            raise VideoError(f"frames must be between 1 and {self.limits.frames}, got {frames}")
        total = len(self._pts)
        numbers = sorted(set(np.linspace(0, total - 1, min(frames, total)).round().astype(int).tolist()))
        decoded, position = 0, -1
        for number in numbers:
            start = bisect.bisect_left(self._pts, self._keyframe_before(self._pts[number]))
            decoded += number - max(start, position + 1) + 1 if start <= position else number - start + 1
            position = number
        context = self.stream.codec_context
        pixels = decoded * max(1, context.width * context.height)
        if pixels > self.limits.decoded_pixels:
            raise VideoTooLargeError(
                f"the video's keyframes are too far apart: the {len(numbers)} sampled frames need {decoded:,} "
                "frames decoded; re-encode it with more keyframes or sample fewer frames"
            )
        return numbers

    def _keyframe_before(self, stamp: int) -> int:
        at = bisect.bisect_right(self._keyframes, stamp) - 1
        return self._keyframes[max(at, 0)]

    def frames(self, numbers: list[int]) -> Iterator[SampledFrame]:
        """Decode the frames ``numbers`` (from :meth:`plan`), seeking to the keyframe before each
        one unless decoding on from the last one is shorter."""
        pts, first = self._pts, self._pts[0]
        time_base = float(self.stream.time_base)
        decoder, position = None, -1
        for sample, number in enumerate(numbers):
            target = pts[number]
            keyframe = self._keyframe_before(target)
            if decoder is None or bisect.bisect_left(pts, keyframe) > position:
                self.container.seek(keyframe, stream=self.stream, backward=True)
                decoder = self._decoded()
            frame = self._decode_until(decoder, target)
            position = number
            image = self._image(frame)
            yield SampledFrame(sample, number, (target - first) * time_base, image)

    def _decoded(self):
        try:
            yield from self.container.decode(self.stream)
        except self._av.FFmpegError as error:
            raise VideoError("the video is truncated or corrupt") from error

    def _decode_until(self, decoder, target: int):
        """The first frame at or after ``target``; the index said where each frame is, so a
        video that sends many more is lying about its frames."""
        for skipped, frame in enumerate(decoder):
            self.check_time()
            self._check_size(frame.width, frame.height)
            if frame.pts is not None and frame.pts >= target:
                return frame
            if skipped > self.limits.packets:
                break
        raise VideoError("the video is truncated or corrupt: a sampled frame could not be decoded")

    @staticmethod
    def _image(frame) -> Image.Image:
        image = frame.to_image()  # RGB
        turn = {
            90: Image.Transpose.ROTATE_90,
            -90: Image.Transpose.ROTATE_270,
            270: Image.Transpose.ROTATE_270,
            180: Image.Transpose.ROTATE_180,
            -180: Image.Transpose.ROTATE_180,
        }.get(round(frame.rotation or 0))
        return image.transpose(turn) if turn is not None else image


# ----------------------------------------------------------------------------- scoring


@dataclass
class FrameResult:
    """One sampled frame: when it is, and how the detector saw it."""

    sampled: SampledFrame
    analysis: ImageScore
    thumbnail: Image.Image | None = None
    image_width: int = 0  # of the frame as scored (the boxes' scale)

    def to_dict(self) -> dict:
        entry = {
            "sample": self.sampled.sample,
            "frame": self.sampled.frame,
            "time_s": round(self.sampled.time_s, 3),
            "faces": len(self.analysis.faces),
        }
        if not self.analysis.faces:  # scored whole
            entry["fake_probability"] = self.analysis.prediction.fake_probability
        return entry


@dataclass
class VideoScore:
    """The verdict for a video (its highest track), its tracks and its sampled frames."""

    prediction: Prediction
    facts: VideoFacts
    tracks: list[Track]
    frames: list[FrameResult]
    face_detection: str  # faces.FOUND or faces.NONE_FOUND
    verdict: str

    def to_dict(self) -> dict:
        return {
            **self.prediction.to_dict(),
            "media": "video",
            "verdict": self.verdict,
            "face_detection": self.face_detection,
            "video": self.facts.to_dict(),
            "frames_sampled": len(self.frames),
            "sampled": [frame.to_dict() for frame in self.frames],
            "tracks": [track.to_dict(index) for index, track in enumerate(self.tracks)],
        }


def score_video(
    detector: Detector,
    source: VideoSource,
    finder: FaceFinder | None = None,
    frames: int = DEFAULT_FRAMES,
    limits: VideoLimits = VideoLimits(),
    thumbnails: int = 0,
) -> VideoScore:
    """Sample ``frames`` frames, score each one's faces with ``detector.predict_faces``, link
    them into tracks and give the verdict.

    Args:
        thumbnails: when above 0, keep each sampled frame shrunk to this width (for the page).

    Raises:
        deepfake_detector.errors.VideoError: the video cannot be read, or is over ``limits``.
    """
    recorder = LandmarkRecorder(finder or faces.default_finder())
    results, found = [], []
    with VideoReader(source, limits) as reader:
        facts = reader.index()
        for sampled in reader.frames(reader.plan(frames)):
            analysis = detector.predict_faces(sampled.image, recorder, max_faces=limits.faces_per_frame)
            reader.check_time()
            found.append(
                [
                    TrackFace(sampled.sample, sampled.frame, sampled.time_s, face, recorder.landmarks.get(face.box))
                    for face in analysis.faces
                ]
            )
            thumbnail = _thumbnail(sampled.image, thumbnails) if thumbnails else None
            results.append(
                FrameResult(
                    SampledFrame(sampled.sample, sampled.frame, sampled.time_s, None),
                    analysis,
                    thumbnail,
                    sampled.image.width,
                )
            )
    tracks = link_tracks(found)
    for track in tracks:
        track.prediction = detector.prediction_for(track.fake_probability)
    if tracks:
        prediction = max((track.prediction for track in tracks), key=lambda p: p.fake_probability)
        return VideoScore(prediction, facts, tracks, results, faces.FOUND, VERDICT_HIGHEST_TRACK)
    whole = detector.prediction_for(np.mean([r.analysis.prediction.fake_probability for r in results]))
    return VideoScore(whole, facts, [], results, faces.NONE_FOUND, VERDICT_WHOLE_FRAMES)


def _thumbnail(image: Image.Image, width: int) -> Image.Image:
    small = image.copy()
    small.thumbnail((width, width))
    return small

"""Videos made in memory for the tests and the benchmarks: faces pasted onto a background and
moved along straight paths, encoded with PyAV; hostile containers for the server tests.

Every generator is deterministic. A face's path is known, so a test can check where the
tracks' boxes are.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class FacePath:
    """A face moving in a straight line: ``side`` pixels square, from ``start`` to ``end``
    (top-left corners) over the clip; ``mark`` draws a white square over its upper part (what
    the tests' tiny model calls fake)."""

    face: Image.Image
    start: tuple[int, int]
    end: tuple[int, int]
    side: int
    mark: bool = False

    def corner(self, step: int, steps: int) -> tuple[int, int]:
        share = step / max(1, steps - 1)
        return (
            round(self.start[0] + (self.end[0] - self.start[0]) * share),
            round(self.start[1] + (self.end[1] - self.start[1]) * share),
        )


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours, no faces."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(60, 200, (4, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def frames_with_faces(
    paths: Sequence[FacePath], count: int, width: int, height: int, seed: int = 0
) -> Iterable[np.ndarray]:
    """``count`` RGB frames with each path's face pasted where it is at that step."""
    base = background(width, height, seed)
    tiles = []
    for path in paths:
        tile = np.asarray(path.face.convert("RGB").resize((path.side, path.side), Image.Resampling.LANCZOS)).copy()
        if path.mark:
            tile[: path.side // 3, path.side // 4 : path.side * 3 // 4] = 255
        tiles.append(tile)
    for step in range(count):
        frame = base.copy()
        for path, tile in zip(paths, tiles):
            x, y = path.corner(step, count)
            frame[y : y + path.side, x : x + path.side] = tile
        yield frame


def encode(
    frames: Iterable[np.ndarray],
    fps: int = 10,
    container: str = "mp4",
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    options: dict | None = None,
) -> bytes:
    """RGB frames encoded into a video file, in memory."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = None
        for frame in frames:
            if stream is None:
                stream = output.add_stream(codec, rate=fps)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = dict(options or {})
                if keyframe_interval:
                    stream.codec_context.gop_size = keyframe_interval
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- hostile containers


def many_streams(count: int = 1000) -> bytes:
    """A Matroska file with ``count`` one-frame 16x16 video streams (FFmpeg reads at most 1000)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as output:
        streams = []
        for _ in range(count):
            stream = output.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
            streams.append(stream)
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for stream in streams:
            for packet in [*stream.encode(frame), *stream.encode()]:
                output.mux(packet)
    return buffer.getvalue()


def lying_avi(data: bytes, frames: int = 10_000_000) -> bytes:
    """An AVI (from :func:`encode` with ``container="avi"``) whose headers claim ``frames`` frames."""
    patched = bytearray(data)
    avih = data.find(b"avih")
    patched[avih + 24 : avih + 28] = struct.pack("<I", frames)  # dwTotalFrames
    strh = data.find(b"strh")
    patched[strh + 40 : strh + 44] = struct.pack("<I", frames)  # dwLength
    return bytes(patched)


def lying_duration_mkv(data: bytes, seconds: float = 10**7) -> bytes:
    """A Matroska file (from :func:`encode`) whose segment says it lasts ``seconds``."""
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float of milliseconds
    return data[: at + 3] + struct.pack(">d", seconds * 1000.0) + data[at + 11 :]


def frame_bomb(count: int = 100_000, side: int = 640, fps: int = 1000) -> bytes:
    """A Matroska file of one keyframe then ``count`` copies of one empty inter frame (a few
    bytes each) at ``fps``: a small file that unpacks into many frames (a zip bomb of frames)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as output:
        stream = output.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = side, side * 9 // 16, "yuv420p"
        stream.codec_context.gop_size = 10**6
        blank = av.VideoFrame.from_ndarray(np.zeros((stream.height, stream.width, 3), np.uint8), format="rgb24")
        first, second = (list(stream.encode(blank)) for _ in range(2))
        packets = [*first, *second, *stream.encode()]
        output.mux(packets[0])
        template = bytes(packets[1])
        for index in range(1, count):
            packet = av.Packet(template)
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, packets[0].time_base, index, index
            output.mux(packet)
    return buffer.getvalue()


def huge_frames(width: int = 7680, height: int = 4320, count: int = 2) -> bytes:
    """Frames over the 3840x2160 limit, stated truthfully (flat grey, so the file stays small)."""
    frame = np.full((height, width, 3), 128, np.uint8)
    return encode((frame for _ in range(count)), fps=1, codec="mpeg4")


#: Each hostile container's name and the status it must get.
HOSTILE_STATUS = {
    "cut_half.mkv": 400,
    "cut_header.mkv": 400,
    "cut_half.avi": 400,
    "lying_frames.avi": 400,  # says 1000 frames, holds a few
    "lying_frames_huge.avi": 413,  # says 10 million frames
    "lying_duration.mkv": 413,  # says 115 days
    "huge_frames.mp4": 413,  # 7680x4320
    "many_streams.mkv": 413,
    "frame_bomb.mkv": 413,  # 100,000 frames of 640x360 in 3 MB
    "keyframe_bomb.mkv": 413,  # 500 s, one keyframe: 46 gigapixels to decode
    "junk_after_ftyp.mp4": 400,
    "matroska_magic_only.webm": 400,
}


def hostile_videos(clip_mkv: bytes, clip_avi: bytes) -> dict[str, tuple[bytes, int]]:
    """Hostile containers and the status each must get: truncated, lying headers, a huge
    declared size, a thousand streams, zip bombs of frames. ``clip_mkv`` and ``clip_avi`` are
    short valid clips (Matroska, and AVI with MPEG-4 video) to cut and falsify."""
    made = {
        "cut_half.mkv": clip_mkv[: len(clip_mkv) // 2],
        "cut_header.mkv": clip_mkv[:200],
        "cut_half.avi": clip_avi[: len(clip_avi) // 2],
        "lying_frames.avi": lying_avi(clip_avi, 1000),
        "lying_frames_huge.avi": lying_avi(clip_avi),
        "lying_duration.mkv": lying_duration_mkv(clip_mkv),
        "huge_frames.mp4": huge_frames(),
        "many_streams.mkv": many_streams(1000),
        "frame_bomb.mkv": frame_bomb(),
        "keyframe_bomb.mkv": frame_bomb(50_000, side=1280, fps=100),
        "junk_after_ftyp.mp4": b"\x00\x00\x00\x18ftypisom" + bytes(5000),
        "matroska_magic_only.webm": b"\x1a\x45\xdf\xa3" + bytes(3000),
    }
    return {name: (body, HOSTILE_STATUS[name]) for name, body in made.items()}

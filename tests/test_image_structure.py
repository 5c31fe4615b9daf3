"""The JPEG, PNG and GIF walkers: scans counted, cut files told from whole ones, without decoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.image_structure import gif_facts, jpeg_facts, png_facts
from harness.hostile import commented_gif, cut_jpeg, encode, lying_png, many_scans_jpeg, noise, png_chunk

PHOTO = noise(512, seed=4)


@pytest.mark.parametrize(
    "mode, options, scans",
    [
        ("RGB", {}, 1),
        ("RGB", {"progressive": True}, 10),  # libjpeg's progressive script for colour
        ("L", {"progressive": True}, 6),  # and for grey
        ("CMYK", {}, 1),
    ],
)
def test_whole_jpegs_are_complete_and_their_scans_counted(mode, options, scans):
    facts = jpeg_facts(encode(PHOTO.convert(mode), "JPEG", **options), max_segments=1000)
    assert facts.scans == scans and facts.complete


def test_fill_bytes_and_restart_markers_are_walked_over():
    data = encode(PHOTO, "JPEG", restart_marker_blocks=4)
    assert b"\xff\xd0" in data
    filled = data.replace(b"\xff\xda", b"\xff\xff\xff\xda", 1)  # fill bytes before a marker are allowed
    assert jpeg_facts(filled, 1000).complete and jpeg_facts(filled, 1000).scans == 1


@pytest.mark.parametrize("progressive", [False, True])
def test_cut_jpegs_are_incomplete(progressive):
    data = encode(PHOTO, "JPEG", progressive=progressive)
    assert not jpeg_facts(data[: len(data) // 2], 1000).ended
    closed = jpeg_facts(cut_jpeg(data, 1200), 1000)  # within the first scan: too few bits for its blocks
    assert closed.ended and not closed.complete


def test_a_progressive_jpeg_cut_between_scans_misses_coefficients():
    data = encode(PHOTO, "JPEG", progressive=True)
    fourth_scan = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"][3]
    facts = jpeg_facts(cut_jpeg(data, fourth_scan), 1000)
    assert facts.ended and not facts.short_scan and not facts.spectrum_complete and not facts.complete


def test_many_scans_are_counted_and_the_walk_stops_at_its_limit():
    data = many_scans_jpeg(side=256, scans=500)
    assert jpeg_facts(data, max_segments=5000).scans == 500
    capped = jpeg_facts(data, max_segments=100)
    assert capped.segments == 101 and capped.scans < 100


def test_png_raw_size_matches_what_the_pixel_data_inflates_to():
    for image in (
        PHOTO,
        PHOTO.convert("L"),
        PHOTO.convert("RGBA"),
        PHOTO.convert("P"),
        PHOTO.convert("1"),
        Image.fromarray(np.full((33, 17), 40000, np.uint16)),
    ):
        facts = png_facts(encode(image, "PNG"), 1000)
        assert facts.raw_size() == facts.inflated_size(limit=1 << 30), image.mode


def interlaced_png(width: int, height: int) -> bytes:
    """An Adam7-interlaced grey PNG (PIL reads but cannot write them)."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes:
        columns, rows = len(range(x0, width, dx)), len(range(y0, height, dy))
        if columns and rows:
            raw += (b"\x00" + bytes([200]) * columns) * rows
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def test_interlaced_png_size_counts_each_pass():
    data = interlaced_png(13, 7)
    facts = png_facts(data, 1000)
    assert facts.interlaced and facts.raw_size() == facts.inflated_size(limit=1 << 20)
    assert np.asarray(Image.open(io.BytesIO(data)).convert("L")).min() == 200


def test_a_png_holding_one_row_inflates_short():
    facts = png_facts(lying_png(1000), 1000)
    assert (facts.width, facts.height) == (1000, 1000)
    assert facts.inflated_size(limit=facts.raw_size()) == 1 + 3 * 1000 < facts.raw_size()


def test_png_with_many_chunks_stops_at_the_limit():
    data = encode(PHOTO, "PNG")
    padded = data[:33] + png_chunk(b"zzZz", b"") * 500 + data[33:]  # empty private chunks after IHDR
    assert png_facts(padded, 100).segments == 101


def test_gif_extension_sub_blocks_are_counted_up_to_the_first_image_and_the_walk_stops_at_its_limit():
    frames = [PHOTO.convert("P", palette=Image.Palette.ADAPTIVE), PHOTO.rotate(90).convert("P")]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"a" * 600, loop=0)
    assert 3 <= gif_facts(animated, 1000).segments < 10  # application, comment (3 sub-blocks), graphic control
    assert gif_facts(commented_gif(500), 5000).segments == 501  # and the empty one that ends them
    assert gif_facts(commented_gif(500), 100).segments == 101
    assert gif_facts(b"GIF89a", 100).segments == 0

"""Generators of hostile uploads: costly to decode or score, or lying about their size.

The tests feed them to the decoders (``tests/test_preprocessing.py``, ``tests/test_image_structure.py``)
and post them to the real server (``tests/test_server.py``, ``tests/test_serving.py``);
``benchmarks/hostile_load.py`` measures what each one costs. Every generator is deterministic.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def crowd_jpeg(faces: Sequence[Image.Image], side: int = 1024, face_px: int = 40, quality: int = 92) -> bytes:
    """A ``side`` x ``side`` JPEG tiled with ``face_px`` faces (hundreds of them at 40 px)."""
    canvas = Image.new("RGB", (side, side))
    per_row = side // face_px
    tiles = [face.convert("RGB").resize((face_px, face_px), Image.Resampling.LANCZOS) for face in faces]
    for i in range(per_row * per_row):
        canvas.paste(tiles[i % len(tiles)], ((i % per_row) * face_px, (i // per_row) * face_px))
    return encode(canvas, "JPEG", quality=quality)


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG written by PIL; a scan runs to the next marker."""
    position, segments = 2, []
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append((marker, position, position + 2))
            break
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            end = _NEXT_MARKER.search(data, end).start()
        segments.append((marker, position, end))
        position = end
    return segments


def many_scans_jpeg(side: int = 6324, scans: int = 10_000) -> bytes:
    """A progressive grey JPEG whose first AC scan (with its Huffman table) is repeated until the
    file has ``scans`` scans: each copy is 87 bytes and costs libjpeg a pass over every block
    (10,000 scans of 40 megapixels: 1.1 MB, about 30 s of CPU)."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=90)
    segments = _jpeg_segments(data)
    starts = [i for i, (marker, _, _) in enumerate(segments) if marker == 0xDA]
    ac_scan = starts[1]  # libjpeg's grey script: DC first, then AC 1-5 (tiny for a flat image)
    first = ac_scan - 1 if segments[ac_scan - 1][0] == 0xC4 else ac_scan
    repeated = data[segments[first][1] : segments[ac_scan][2]]
    end_of_image = segments[-1][1]
    return data[:end_of_image] + repeated * (scans - len(starts)) + b"\xff\xd9"


def cut_jpeg(data: bytes, keep: int = 2048) -> bytes:
    """The first ``keep`` bytes of a JPEG, closed again with an EOI marker (libjpeg fills the rest with grey)."""
    return data[:keep] + b"\xff\xd9"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def lying_png(side: int = 6324) -> bytes:
    """A well-formed PNG whose header says ``side`` x ``side`` RGB but whose data holds one row."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    one_row = zlib.compress(b"\x00" + b"\x80" * side * 3)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", one_row) + png_chunk(b"IEND", b"")


def lying_gif(image: Image.Image, keep_blocks: int = 2) -> bytes:
    """A GIF whose image data stops after ``keep_blocks`` sub-blocks, properly terminated."""
    data = encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[position] == 0x21:  # extensions before the image
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    flags = data[position + 9]
    position += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # descriptor, local table, LZW size
    for _ in range(keep_blocks):
        position += data[position] + 1
    return data[:position] + b"\x00\x3b"


def short_images(image: Image.Image) -> dict[str, bytes]:
    """One file per accepted format whose pixel data ends early: cut in the middle, and for the
    formats whose container can be closed again after the cut (JPEG, PNG, GIF), closed."""
    formats = {
        "jpg": ("JPEG", {}),
        "progressive.jpg": ("JPEG", {"progressive": True}),
        "png": ("PNG", {}),
        "webp": ("WEBP", {}),
        "bmp": ("BMP", {}),
        "gif": ("GIF", {}),
        "tiff": ("TIFF", {}),
    }
    files = {}
    for name, (fmt, options) in formats.items():
        data = encode(image, fmt, **options)
        files[f"cut.{name}"] = data[: len(data) // 2]
    photo = image.resize((2048, 2048))  # "a JPEG cut after 2 KB" of a photo-sized image
    files["cut_closed.jpg"] = cut_jpeg(encode(photo, "JPEG"), 2048)
    files["cut_closed.progressive.jpg"] = cut_jpeg(encode(photo, "JPEG", progressive=True), 2048)
    files["one_row.png"] = lying_png(max(image.size))
    files["cut_closed.gif"] = lying_gif(image)
    return files


def noise(side: int, seed: int = 0, block: int = 8) -> Image.Image:
    """Random colours in ``block``-pixel squares: a picture no encoder can make small."""
    rng = np.random.default_rng(seed)
    cells = max(1, side // block)
    return Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)).resize((side, side))


# ----------------------------------------------------------------------------- issue 29's review


def grey_png(width: int, height: int, depth: int = 8) -> bytes:
    """A grey PNG of ``width`` x ``height`` zeros (39,999,999 x 1: 39 KB, under the pixel limit)."""
    data = zlib.compress(bytes(1 + width * depth // 8) * height, 9)  # a zero filter byte starts each row
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def mistyped_exif_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A JPEG whose EXIF says Orientation 6 and stores XResolution (a RATIONAL) as ASCII:
    ``ImageOps.exif_transpose`` raises TypeError rewriting it."""
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x011A, 2, 3, b"ab\x00\x00")]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *entry[:3]) + entry[3] for entry in entries)
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    picture = Image.new("RGB", (width, height), (200, 30, 30))
    picture.paste((30, 30, 200), (0, 0, width // 4, height))  # blue on the left: on top once turned
    return encode(picture, "JPEG", exif=exif)


def rle_bmp(width: int = 6000, height: int = 6666) -> bytes:
    """An 8-bit RLE BMP: one pixel and an end of line per row (27 KB for 40 MP). Pillow pads
    each row in Python, a byte at a time."""
    pixels = b"\x01\x80\x00\x00" * height + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def commented_gif(sub_blocks: int = 9_500_000) -> bytes:
    """A 1x1 GIF with a comment of ``sub_blocks`` one-byte sub-blocks before its image (19 MB
    for 9.5 million): PIL reads and joins each one in Python."""
    data = encode(Image.new("P", (1, 1)), "GIF")
    start = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    return data[:start] + b"\x21\xfe" + b"\x01x" * sub_blocks + b"\x00" + data[start:]


def jpeg_in_tiff(side: int = 1024, scans: int = 99) -> bytes:
    """A grey TIFF whose one strip is a progressive JPEG of ``scans`` scans (compression 7). libtiff
    itself refuses more than 100 scans, so 99 is the costliest: 99 passes over every block."""
    strip = many_scans_jpeg(side, scans)
    tags = [
        (256, 4, side),
        (257, 4, side),
        (258, 3, 8),
        (259, 3, 7),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, side),
        (279, 4, len(strip)),
    ]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1) + struct.pack("<I", data_offset if tag == 273 else value)
        for tag, kind, value in tags
    )
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0) + strip


def sixteen_bit_png(side: int = 6324) -> bytes:
    """A 40 MP 16-bit grey PNG of one value (a few hundred KB)."""
    return grey_png(side, side, depth=16)


def mutants(seeds: dict[str, bytes], count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` mutations of each seed file: bytes overwritten, inserted, deleted, a span repeated
    or the file cut, with a 16-bit or 32-bit field set to an extreme now and then."""
    rng = np.random.default_rng(seed)
    out = []
    for name, original in seeds.items():
        for i in range(count):
            data = bytearray(original)
            for _ in range(int(rng.integers(1, 6))):
                position = int(rng.integers(0, len(data)))
                kind = int(rng.integers(0, 6))
                if kind == 0:
                    data[position] = int(rng.integers(0, 256))
                elif kind == 1:
                    data[position:position] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
                elif kind == 2:
                    del data[position : position + int(rng.integers(1, 9))]
                elif kind == 3:
                    data[position:position] = bytes(data[position : position + int(rng.integers(1, 64))])
                elif kind == 4:
                    data[position : position + 2] = bytes(
                        rng.choice([b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x00\x01"])
                    )
                else:
                    data[position : position + 4] = bytes(
                        rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
                    )
            if rng.random() < 0.1:
                data = data[: int(rng.integers(1, len(data) + 1))]
            out.append((f"{i}-{name}", bytes(data)))
    return out

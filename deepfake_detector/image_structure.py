"""What an encoded JPEG, PNG or GIF says about itself before a decoder touches its pixels.

Decoders are generous: libjpeg fills a scan that stops early with grey and lets a file repeat
a scan thousands of times (each one a pass over every block), and a PNG whose pixel data
stops after one row decodes as a black image of the size its header claims. These walkers
read the container (markers, chunks, blocks) without decoding, so :mod:`deepfake_detector.preprocessing`
can refuse such files, and bound the walk itself (``max_segments``).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field

JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")

# After a scan's header, its entropy-coded data runs to the next marker: 0xFF followed by
# anything but a stuffed zero, a restart marker (D0-D7) or another fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff+")
_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_HUFFMAN_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive
_PROGRESSIVE_FRAMES = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_ALL_COEFFICIENTS = (1 << 64) - 1
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_EOI, _SOS = 0xD9, 0xDA


@dataclass(frozen=True)
class JpegFacts:
    """The first image of a JPEG (an MPO's first frame), as its markers describe it."""

    segments: int  # markers walked; the walk stops once this passes ``max_segments``
    scans: int  # SOS markers: 1 for a baseline file, about 10 for a progressive one
    ended: bool  # an EOI marker closes the image (a cut file has none)
    short_scan: bool  # a scan holds fewer bits than its blocks need: cut, then closed again
    spectrum_complete: bool = True  # a progressive file sent all 64 coefficients of every component

    @property
    def complete(self) -> bool:
        return self.ended and not self.short_scan and self.spectrum_complete


@dataclass
class _Frame:
    width: int
    height: int
    sampling: dict[int, tuple[int, int]]  # component id -> (horizontal, vertical) factors
    huffman_dct: bool  # only Huffman-coded DCT scans have a known least size
    progressive: bool

    def blocks(self, components: list[int]) -> int:
        """8x8 blocks one scan of ``components`` codes (interleaved scans code whole MCUs)."""
        h_max = max(h for h, _ in self.sampling.values())
        v_max = max(v for _, v in self.sampling.values())
        if len(components) == 1:
            h, v = self.sampling.get(components[0], (1, 1))
            return math.ceil(math.ceil(self.width * h / h_max) / 8) * math.ceil(math.ceil(self.height * v / v_max) / 8)
        mcus = math.ceil(self.width / (8 * h_max)) * math.ceil(self.height / (8 * v_max))
        return mcus * sum(h * v for c, (h, v) in self.sampling.items() if c in components)


def jpeg_facts(data: bytes, max_segments: int) -> JpegFacts:
    """Walk the markers of ``data`` (starting with SOI) up to the first EOI.

    A scan that codes DC coefficients with Huffman codes needs at least one bit per block
    (two in a sequential scan: a DC code and an end-of-block code), whatever the picture; a
    scan with less data was cut short and closed by a marker, and libjpeg would fill the rest.
    A progressive file cut between scans is caught by the coefficients no scan sent. (A cut
    inside a sequential scan's data after that least size is not seen: libjpeg decodes the
    rest as flat grey.)
    """
    position, size = 2, len(data)
    segments = scans = 0
    frame: _Frame | None = None
    short_scan = False
    sent: dict[int, int] = {}  # component id -> bit mask of the coefficients its first scans sent
    while segments <= max_segments:
        fill = _FILL.match(data, position)  # a marker may follow any number of 0xFF fill bytes
        if fill is None or fill.end() >= size:
            break
        position = fill.end() - 1
        marker = data[position + 1]
        position += 2
        segments += 1
        if marker == _EOI:
            spectrum = (
                frame is None
                or not frame.progressive
                or all(sent.get(component, 0) == _ALL_COEFFICIENTS for component in frame.sampling)
            )
            return JpegFacts(segments, scans, True, short_scan, spectrum)
        if marker in _STANDALONE_MARKERS:
            continue
        if position + 2 > size:
            break
        length = int.from_bytes(data[position : position + 2], "big")
        body = data[position + 2 : position + length]
        if length < 2 or len(body) != length - 2:
            break
        position += length
        if marker in _FRAME_MARKERS:
            frame = _parse_frame(marker, body)
        elif marker == _SOS:
            scans += 1
            end = _NEXT_MARKER.search(data, position)
            coded = (end.start() if end else size) - position
            if frame is not None and not short_scan:
                short_scan = coded * 8 < _least_bits(frame, body)
            _record_coefficients(sent, body)
            if end is None:
                break
            position = end.start()
    return JpegFacts(segments, scans, False, short_scan)


def _parse_frame(marker: int, body: bytes) -> _Frame | None:
    if len(body) < 6:
        return None
    height, width, count = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    sampling = {}
    for offset in range(6, 6 + 3 * count, 3):
        if offset + 3 > len(body):
            break
        factors = body[offset + 1]
        sampling[body[offset]] = (max(1, factors >> 4), max(1, factors & 0x0F))
    if not sampling or height == 0:  # height 0: set later by a DNL marker; no bound then
        return None
    return _Frame(width, height, sampling, marker in _HUFFMAN_DCT_FRAMES, marker in _PROGRESSIVE_FRAMES)


def _record_coefficients(sent: dict[int, int], header: bytes) -> None:
    """Mark the coefficient band of a first scan (not a refinement) as sent for its components."""
    count = header[0] if header else 0
    if len(header) < 1 + 2 * count + 3:
        return
    start, end, approximation = header[1 + 2 * count], header[2 + 2 * count], header[3 + 2 * count]
    if approximation >> 4 or start > end or end > 63:
        return
    band = ((1 << (end + 1)) - 1) ^ ((1 << start) - 1)
    for i in range(count):
        component = header[1 + 2 * i]
        sent[component] = sent.get(component, 0) | band


def _least_bits(frame: _Frame, header: bytes) -> int:
    """Fewest bits the entropy-coded data after this scan header can have."""
    if not frame.huffman_dct or not header:
        return 0
    count = header[0]
    if len(header) < 1 + 2 * count + 3:
        return 0
    components = [header[1 + 2 * i] for i in range(count)]
    spectral_start, spectral_end = header[1 + 2 * count], header[2 + 2 * count]
    if spectral_start != 0:
        return 0  # an AC scan can code a whole band of empty blocks in a few bits
    sequential = spectral_end == 63  # DC and AC together: a DC code and an end-of-block code
    return frame.blocks(components) * (2 if sequential else 1)


@dataclass(frozen=True)
class PngFacts:
    """A PNG's header and where its first image's pixel data lies."""

    segments: int  # chunks walked; the walk stops once this passes ``max_chunks``
    width: int = 0
    height: int = 0
    bit_depth: int = 8
    colour_type: int = 2
    interlaced: bool = False
    pixel_data: list[memoryview] = field(default_factory=list)  # the IDAT payloads, in order

    def raw_size(self) -> int:
        """Bytes the pixel data inflates to: each row (of each interlace pass) is a filter
        byte and its packed samples."""
        samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(self.colour_type, 4)
        bits = samples * self.bit_depth
        passes = _ADAM7 if self.interlaced else ((0, 0, 1, 1),)
        total = 0
        for x0, y0, dx, dy in passes:
            columns = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            rows = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            if columns and rows:
                total += rows * (1 + (columns * bits + 7) // 8)
        return total

    def inflated_size(self, limit: int) -> int:
        """How many bytes the pixel data inflates to, counted without keeping them and
        without going past ``limit``; -1 when it is not a valid zlib stream."""
        inflater = zlib.decompressobj()
        total = 0
        try:
            for payload in self.pixel_data:
                pending = payload
                while pending and total <= limit and not inflater.eof:
                    total += len(inflater.decompress(pending, 1 << 20))
                    pending = inflater.unconsumed_tail
            while total <= limit and not inflater.eof:
                chunk = inflater.decompress(b"", 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
        except zlib.error:
            return -1
        return total


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_facts(data: bytes, max_chunks: int) -> PngFacts:
    """Walk the chunks of ``data`` (starting with the PNG signature) up to IEND."""
    view = memoryview(data)
    position, size = len(PNG_SIGNATURE), len(data)
    chunks = 0
    header: tuple[int, int, int, int, bool] | None = None
    pixel_data = []
    while position + 8 <= size and chunks <= max_chunks:
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        chunks += 1
        start = position + 8
        if kind == b"IHDR" and length >= 13:
            ihdr = data[start : start + 13]
            header = (
                int.from_bytes(ihdr[0:4], "big"),
                int.from_bytes(ihdr[4:8], "big"),
                ihdr[8],
                ihdr[9],
                ihdr[12] == 1,
            )
        elif kind == b"IDAT":
            pixel_data.append(view[start : min(start + length, size)])
        elif kind == b"IEND":
            break
        position = start + length + 4  # payload and CRC
    if header is None:
        return PngFacts(chunks)
    width, height, bit_depth, colour_type, interlaced = header
    return PngFacts(chunks, width, height, bit_depth, colour_type, interlaced, pixel_data)


@dataclass(frozen=True)
class GifFacts:
    """The blocks before a GIF's first image, which PIL reads one sub-block at a time in Python."""

    segments: int  # extension sub-blocks walked; the walk stops once this passes ``max_segments``


def gif_facts(data: bytes, max_segments: int) -> GifFacts:
    """Walk the extensions of ``data`` (starting with a GIF signature) up to its first image.

    The image's own data is left to the decoder (in C); a comment, application or other
    extension before it is a chain of sub-blocks of at most 255 bytes, each a length byte
    and its payload, ended by an empty one.
    """
    size = len(data)
    if size < 13:
        return GifFacts(0)
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # header, global colour table
    segments = 0
    while position + 1 < size and data[position] == 0x21 and segments <= max_segments:  # an extension
        position += 2  # introducer and label
        while position < size and segments <= max_segments:
            length = data[position]
            segments += 1
            position += 1 + length
            if length == 0:
                break
    return GifFacts(segments)

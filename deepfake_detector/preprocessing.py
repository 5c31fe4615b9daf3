"""The one way an image becomes model input.

Training, evaluation, the batch CLI and the web service all call :func:`load_image`, so a
served image is seen exactly as training saw it: decode by content (never by file name),
apply the EXIF orientation, convert any mode (palette, grayscale, 16-bit, alpha, CMYK) to
RGB, and resize to the model's square input with the filter its metadata names (Lanczos,
which antialiases, for every model trained here). Pixel scaling lives inside the model
itself, so the array handed over is plain ``uint8`` RGB.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from deepfake_detector.errors import DeepfakeDetectorError, ImageError, ImageTooLargeError, UnsupportedFormatError
from deepfake_detector.image_structure import (
    GIF_SIGNATURES,
    JPEG_SIGNATURE,
    PNG_SIGNATURE,
    GifFacts,
    JpegFacts,
    PngFacts,
    gif_facts,
    jpeg_facts,
    png_facts,
)

#: Formats we decode. Decided from the bytes, never from a name or a content type.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
#: The file names taken for images when a folder is listed (what a file holds is still decided
#: from its bytes when it is read).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Images larger than this many pixels are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 40_000_000
#: Longest side and most elongated shape, also refused from the header: a 39,999,999 x 1 PNG is
#: under the pixel limit, but a Lanczos resize builds a kernel as wide as the image (2 GB, 10 s).
#: A 40 MP panorama of 16,384 x 2,441 passes; so do 8:1 web banners.
MAX_IMAGE_SIDE = 16_384
MAX_ASPECT_RATIO = 20
#: Pillow decodes RLE-compressed BMPs in Python, a pixel at a time: a 27 KB one of 40 MP costs
#: 5-9 s of CPU. RLE BMPs are old and small; larger ones are refused.
MAX_RLE_BMP_PIXELS = 1_000_000
#: Most scans a JPEG may have: decoding makes one pass over every block per scan, so 10,000
#: tiny scans of a 40-megapixel grey picture cost 35 s of CPU from 1.1 MB. Encoders write 1
#: (baseline) or about 10 (libjpeg's progressive script: 10 for colour, 6 for grey).
MAX_JPEG_SCANS = 64
#: Most JPEG markers, PNG chunks or GIF extension sub-blocks walked. Real files have tens (a 20 MB
#: PNG cut into libpng's 8 KB IDAT chunks has 2,560); PIL reads each one in Python (a GIF comment
#: of 9.5 million one-byte sub-blocks cost 2 s and 1 GB).
MAX_SEGMENTS = 10_000
EXIF_ORIENTATION = 0x0112
#: The transposition that shows an image upright, for each EXIF orientation (as ``ImageOps.exif_transpose``,
#: which also rewrites the EXIF block, and fails on a mistyped tag that has nothing to do with pixels).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: TIFF tags of where JPEG-compressed pixel data lies: (offsets, byte counts) of strips, tiles,
#: and an old-style JPEG's single stream.
TIFF_JPEG_DATA_TAGS = ((273, 279), (324, 325), (513, 514))
#: The resize filters a model's preprocessing may name (``PreprocessingConfig.resample``).
#: Models trained here use Lanczos (the shared data was made with it too); "nearest" is
#: what the original tutorial's inference did (``keras.utils.load_img``'s default), for the
#: models trained by its code that ``export.py --format adopt`` takes in.
DEFAULT_RESAMPLE = "lanczos"
NEAREST_RESAMPLE = "nearest"
RESAMPLE_FILTERS = {DEFAULT_RESAMPLE: Image.Resampling.LANCZOS, NEAREST_RESAMPLE: Image.Resampling.NEAREST}
#: The filter of the models trained here, also used by the resize perturbation.
RESAMPLE = RESAMPLE_FILTERS[DEFAULT_RESAMPLE]
#: A resize that shrinks by 16 times or more first averages whole blocks (``Image.reduce``), then
#: resamples by at least 8: the kernel stays small and a 40 MP image costs 0.09 s, not 0.45 s, within
#: one level of the plain Lanczos result (mean 0.09). Training crops (at most 2x the input) never reach it.
REDUCING_GAP = 8.0

ImageSource = bytes | str | Path | BinaryIO | Image.Image


@dataclass(frozen=True)
class PreprocessingConfig:
    """What a model expects; saved in its metadata."""

    image_size: int = 128  # square input side in pixels; the original recipe used 128
    resample: str = DEFAULT_RESAMPLE  # a name in RESAMPLE_FILTERS
    color: str = "RGB"
    dtype: str = "uint8"  # 0..255; the model's first layer rescales

    def __post_init__(self):
        resample_filter(self.resample)

    def to_dict(self) -> dict:
        return dict(image_size=self.image_size, resample=self.resample, color=self.color, dtype=self.dtype)


def open_image(source: ImageSource) -> Image.Image:
    """Decode ``source`` into an RGB PIL image with the EXIF orientation applied.

    Raises:
        ImageError: empty, unreadable, truncated or too large input.
        UnsupportedFormatError: a real image in a format we do not accept.
    """
    return decode(probe_image(source))


def probe_image(source: ImageSource) -> Image.Image:
    """Every check that can be made before the pixels are decoded: format, size, cost and
    completeness. Returns the image still undecoded (``image.size`` is known), for
    :func:`decode`; a caller can decide on the size first (the web app decodes large
    images one at a time).
    """
    structure = None
    if isinstance(source, Image.Image):
        image = source
    else:
        data = _read(source)
        if not data:
            raise ImageError("the file is empty")
        with _image_errors("the file is not an image we can read"):
            structure = _walk(data)  # before PIL parses a byte of it
            image = _open(data)
            _check_container(image, data)
    _check_size(*image.size)
    if not _complete(structure):
        raise ImageError("the image is truncated or corrupt: its pixel data ends early")
    return image


def decode(image: Image.Image) -> Image.Image:
    """The pixels of an image from :func:`probe_image`: first frame, EXIF orientation, RGB."""
    with _image_errors("the image is truncated or corrupt"):
        try:
            image.seek(0)  # first frame of an animation
        except (EOFError, AttributeError):
            pass
        image.load()
        transpose = ORIENTATIONS.get(_orientation(image))
        if transpose is not None:
            image = _upright(image, transpose)
        return _to_rgb(image)


@contextlib.contextmanager
def _image_errors(message: str):
    """Whatever a decoder raises on one image is that image's :class:`ImageError` (a 4xx, a CSV
    error row, a skipped file), never the request's or the run's: PIL's plugins raise TypeError,
    IndexError, struct.error and more on crafted files."""
    try:
        yield
    except DeepfakeDetectorError:
        raise
    except MemoryError as error:
        raise ImageTooLargeError("the image needs more memory to decode than there is") from error
    except Exception as error:
        raise ImageError(message) from error


def _open(data: bytes) -> Image.Image:
    """PIL's image of ``data``, its header read and its pixels not yet decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError("the image has too many pixels") from error
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"{image.format} images are not supported; use JPEG, PNG, WebP, BMP, GIF or TIFF")
    return image


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"the image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels")
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ImageTooLargeError(f"the image is {width}x{height} pixels; the limit is {MAX_IMAGE_SIDE:,} pixels a side")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; its long side may be at most {MAX_ASPECT_RATIO} times its short one"
        )


def _check_container(image: Image.Image, data: bytes) -> None:
    """Costs the header of an opened image shows: RLE in a BMP, JPEG data inside a TIFF."""
    rle = image.format == "BMP" and image.info.get("compression") in (1, 2)  # RLE8, RLE4
    if rle and image.width * image.height > MAX_RLE_BMP_PIXELS:
        raise ImageTooLargeError(f"an RLE-compressed BMP may have at most {MAX_RLE_BMP_PIXELS:,} pixels")
    if image.format == "TIFF" and image.info.get("compression") in ("jpeg", "tiff_jpeg"):
        pieces = []
        for offsets_tag, counts_tag in TIFF_JPEG_DATA_TAGS:
            offsets, counts = image.tag_v2.get(offsets_tag, ()), image.tag_v2.get(counts_tag, ())
            pieces += zip(*(value if isinstance(value, tuple) else (value,) for value in (offsets, counts)))
        if len(pieces) > MAX_SEGMENTS:
            raise ImageTooLargeError(f"the TIFF has more than {MAX_SEGMENTS:,} strips; decoding it would cost too much")
        for offset, count in pieces:  # each strip or tile is a JPEG stream that libjpeg decodes
            _walk(data[offset : offset + count])


def _upright(image: Image.Image, transpose: Image.Transpose) -> Image.Image:
    """The image turned upright, and no longer saying otherwise: its EXIF and XMP blocks are
    dropped (rewriting them without the orientation, as ``exif_transpose`` does, fails on a
    mistyped tag), so decoding the result again does not turn it twice."""
    upright = image.transpose(transpose)  # a new image, with a copy of the info
    for key in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"):
        upright.info.pop(key, None)
    return upright


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when there is none or it cannot be read."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block says nothing about the pixels
        return 1
    return orientation if isinstance(orientation, int) else 1


def _read(source: ImageSource) -> bytes:
    """The encoded bytes of a path, a file object or bytes (uploads arrive as bytes)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


def _walk(data: bytes) -> JpegFacts | PngFacts | GifFacts | None:
    """Read a JPEG's markers, a PNG's chunks or a GIF's blocks before decoding; refuse the costly ones."""
    if data.startswith(JPEG_SIGNATURE):
        facts = jpeg_facts(data, MAX_SEGMENTS)
        if facts.scans > MAX_JPEG_SCANS:
            raise ImageTooLargeError(f"the JPEG has more than {MAX_JPEG_SCANS} scans; decoding it would cost too much")
    elif data.startswith(PNG_SIGNATURE):
        facts = png_facts(data, MAX_SEGMENTS)
    elif data.startswith(GIF_SIGNATURES):
        facts = gif_facts(data, MAX_SEGMENTS)
    else:
        return None
    if facts.segments > MAX_SEGMENTS:
        raise ImageTooLargeError(f"the file has more than {MAX_SEGMENTS:,} segments; decoding it would cost too much")
    return facts


def _complete(facts: JpegFacts | PngFacts | GifFacts | None) -> bool:
    """Whether the file holds all the pixel data its header promises (checked after the
    pixel limit, so a bomb's header is refused before its data is inflated). Other formats'
    decoders refuse short data themselves."""
    if isinstance(facts, JpegFacts):
        return facts.complete
    if isinstance(facts, PngFacts):
        expected = facts.raw_size()
        return facts.inflated_size(limit=expected) >= expected
    return True


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white, as a browser would show them."""
    if image.mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a tRNS colour key: those pixels are transparent
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = _sixteen_bit_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey image as 8-bit ``L``, rounded, a band of rows at a time: a float64
    copy of a 40 MP image took 320 MB, and each step of arithmetic on it as much again.

    16-bit samples are always on a 0..65535 scale (a dark 16-bit image stays dark); only
    32-bit "I" images, whose range is unknown, are judged by their values.
    """
    array = np.asarray(image)
    peak = 65535 if image.mode != "I" or array.max(initial=0) > 255 else 255
    out = np.empty(array.shape, np.uint8)
    for start in range(0, len(array), 256):
        band = np.clip(array[start : start + 256], 0, peak).astype(np.uint32)
        out[start : start + 256] = (band * 510 + peak) // (2 * peak)  # round(band * 255 / peak), no ties
    return Image.fromarray(out, "L")


def resample_filter(name: str) -> Image.Resampling:
    """The PIL filter of a ``resample`` name in a model's preprocessing; ValueError if unknown."""
    if name not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resample {name!r}; use one of {', '.join(RESAMPLE_FILTERS)}")
    return RESAMPLE_FILTERS[name]


def resize(image: Image.Image, image_size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Resize an RGB image to ``image_size`` square with the model's filter; uint8 HxWx3."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), resample_filter(resample), reducing_gap=REDUCING_GAP)
    return np.asarray(image, dtype=np.uint8)


def load_image(source: ImageSource, image_size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Decode, orient, convert and resize: the model input for one image (uint8 HxWx3).

    ``resample`` is the model's own (its metadata's ``preprocessing["resample"]``).
    """
    return resize(open_image(source), image_size, resample)

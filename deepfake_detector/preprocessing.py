"""The one way an image becomes model input.

Training, evaluation, the batch CLI and the web service all call :func:`load_image`, so a
served image is seen exactly as training saw it: decode by content (never by file name),
apply the EXIF orientation, convert any mode (palette, grayscale, 16-bit, alpha, CMYK) to
RGB, and resize to the model's square input with the filter its metadata names (Lanczos,
which antialiases, for every model trained here). Pixel scaling lives inside the model
itself, so the array handed over is plain ``uint8`` RGB.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepfake_detector.errors import ImageError, ImageTooLargeError, UnsupportedFormatError
from deepfake_detector.image_structure import JPEG_SIGNATURE, PNG_SIGNATURE, JpegFacts, PngFacts, jpeg_facts, png_facts

#: Formats we decode. Decided from the bytes, never from a name or a content type.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
#: The file names taken for images when a folder is listed (what a file holds is still decided
#: from its bytes when it is read).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Images larger than this many pixels are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 40_000_000
#: Most scans a JPEG may have: decoding makes one pass over every block per scan, so 10,000
#: tiny scans of a 40-megapixel grey picture cost 35 s of CPU from 1.1 MB. Encoders write 1
#: (baseline) or about 10 (libjpeg's progressive script: 10 for colour, 6 for grey).
MAX_JPEG_SCANS = 64
#: Most JPEG markers or PNG chunks walked. Real files have tens (a 20 MB PNG cut into libpng's
#: 8 KB IDAT chunks has 2,560); PIL reads each one in Python.
MAX_SEGMENTS = 10_000
EXIF_ORIENTATION = 0x0112
#: The resize filters a model's preprocessing may name (``PreprocessingConfig.resample``).
#: Models trained here use Lanczos (the shared data was made with it too); "nearest" is
#: what the original tutorial's inference did (``keras.utils.load_img``'s default), for the
#: models trained by its code that ``export.py --format adopt`` takes in.
DEFAULT_RESAMPLE = "lanczos"
NEAREST_RESAMPLE = "nearest"
RESAMPLE_FILTERS = {DEFAULT_RESAMPLE: Image.Resampling.LANCZOS, NEAREST_RESAMPLE: Image.Resampling.NEAREST}
#: The filter of the models trained here, also used by the resize perturbation.
RESAMPLE = RESAMPLE_FILTERS[DEFAULT_RESAMPLE]

ImageSource = Union[bytes, str, Path, BinaryIO, Image.Image]


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
        structure = _walk(data)  # before PIL parses a byte of it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
        except FileNotFoundError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ImageError("the file is not an image we can read") from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageTooLargeError("the image has too many pixels") from error
        if image.format not in SUPPORTED_FORMATS:
            raise UnsupportedFormatError(
                f"{image.format} images are not supported; use JPEG, PNG, WebP, BMP, GIF or TIFF"
            )
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels"
        )
    if width < 1 or height < 1:
        raise ImageError("the image has no pixels")
    if not _complete(structure):
        raise ImageError("the image is truncated or corrupt: its pixel data ends early")
    return image


def decode(image: Image.Image) -> Image.Image:
    """The pixels of an image from :func:`probe_image`: first frame, EXIF orientation, RGB."""
    try:
        image.seek(0)  # first frame of an animation
    except (EOFError, AttributeError):
        pass
    try:
        image.load()
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # else exif_transpose copies (160 MB at 40 MP RGBA)
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise ImageError("the image is truncated or corrupt") from error


def _read(source: ImageSource) -> bytes:
    """The encoded bytes of a path, a file object or bytes (uploads arrive as bytes)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


def _walk(data: bytes) -> JpegFacts | PngFacts | None:
    """Read a JPEG's markers or a PNG's chunks before decoding; refuse the costly ones."""
    if data.startswith(JPEG_SIGNATURE):
        facts = jpeg_facts(data, MAX_SEGMENTS)
        if facts.scans > MAX_JPEG_SCANS:
            raise ImageTooLargeError(f"the JPEG has more than {MAX_JPEG_SCANS} scans; decoding it would cost too much")
    elif data.startswith(PNG_SIGNATURE):
        facts = png_facts(data, MAX_SEGMENTS)
    else:
        return None
    if facts.segments > MAX_SEGMENTS:
        raise ImageTooLargeError(f"the file has more than {MAX_SEGMENTS:,} segments; decoding it would cost too much")
    return facts


def _complete(facts: JpegFacts | PngFacts | None) -> bool:
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
        array = np.asarray(image, dtype=np.float64)
        # 16-bit samples are always on a 0..65535 scale (a dark 16-bit image stays dark);
        # only 32-bit "I" images, whose range is unknown, are judged by their values.
        sixteen_bit = image.mode != "I" or array.max(initial=0) > 255
        peak = 65535.0 if sixteen_bit else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resample_filter(name: str) -> Image.Resampling:
    """The PIL filter of a ``resample`` name in a model's preprocessing; ValueError if unknown."""
    if name not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resample {name!r}; use one of {', '.join(RESAMPLE_FILTERS)}")
    return RESAMPLE_FILTERS[name]


def resize(image: Image.Image, image_size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Resize an RGB image to ``image_size`` square with the model's filter; uint8 HxWx3."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), resample_filter(resample), reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def load_image(source: ImageSource, image_size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Decode, orient, convert and resize: the model input for one image (uint8 HxWx3).

    ``resample`` is the model's own (its metadata's ``preprocessing["resample"]``).
    """
    return resize(open_image(source), image_size, resample)

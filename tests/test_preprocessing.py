"""load_image / open_image: every input path ends as the same uint8 RGB array, or a clear error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from deepfake_detector import preprocessing
from deepfake_detector.errors import ImageError, ImageTooLargeError, UnsupportedFormatError
from deepfake_detector.preprocessing import load_image, open_image
from tests.helpers import image_bytes, synthetic_image

S = 16
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _check_array(array: np.ndarray, size: int = S) -> np.ndarray:
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (size, size, 3)
    return array


def _blocks(size: int = S) -> Image.Image:
    """Four flat quadrants of distinct colours (survive palettes and lossy codecs)."""
    array = np.zeros((size, size, 3), np.uint8)
    h = size // 2
    array[:h, :h] = (200, 30, 60)
    array[:h, h:] = (20, 180, 40)
    array[h:, :h] = (30, 60, 210)
    array[h:, h:] = (240, 220, 30)
    return Image.fromarray(array)


# ----------------------------------------------------------------------------- modes


def test_rgba_png_transparent_pixels_become_white():
    array = np.zeros((S, S, 4), np.uint8)
    array[:, : S // 2] = (0, 0, 0, 0)  # fully transparent black
    array[:, S // 2 :] = (0, 255, 0, 255)  # opaque green
    array[0, -1] = (255, 0, 0, 128)  # half-transparent red over white
    out = _check_array(load_image(image_bytes(Image.fromarray(array, "RGBA")), S))
    assert (out[:, : S // 2] == 255).all()
    assert (out[1:, S // 2 :] == GREEN).all()
    np.testing.assert_allclose(out[0, -1], (255, 127, 127), atol=2)


def test_grayscale_l():
    array = np.arange(S * S, dtype=np.uint8).reshape(S, S)
    out = _check_array(load_image(image_bytes(Image.fromarray(array, "L")), S))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], array)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_from_65535(fmt):
    array = np.zeros((S, S), np.uint16)
    array[0, 0], array[0, 1], array[0, 2], array[0, 3] = 65535, 32768, 257 * 100, 0
    data = image_bytes(Image.fromarray(array), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    out = _check_array(load_image(data, S))
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 1]) == (128, 128, 128)
    assert tuple(out[0, 2]) == (100, 100, 100)
    assert tuple(out[0, 3]) == (0, 0, 0)


def test_dark_16_bit_image_stays_dark():
    """Values 0..255 in a 16-bit file are nearly black, not a full-range 8-bit picture."""
    array = np.full((S, S), 200, np.uint16)
    array[0, 0] = 255  # every sample fits in 8 bits, yet the file is 16-bit
    data = image_bytes(Image.fromarray(array))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = _check_array(load_image(data, S))
    assert out.max() <= 1
    assert tuple(out[1, 1]) == (1, 1, 1)  # 200 / 65535 * 255 = 0.78 -> 1


def test_palette_without_transparency():
    image = _blocks()
    palette_image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    data = image_bytes(palette_image)
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(_check_array(load_image(data, S)), np.asarray(image))


def test_palette_with_transparency_index_becomes_white():
    palette_image = Image.new("P", (S, S), 0)
    palette_image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    palette_image.paste(1, (S // 2, 0, S, S))
    data = image_bytes(palette_image, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = _check_array(load_image(data, S))
    assert (out[:, : S // 2] == 255).all()
    assert (out[:, S // 2 :] == BLUE).all()


@pytest.mark.parametrize("mode, colour", [("L", 0), ("RGB", (1, 2, 3))])
def test_png_colour_key_transparency_becomes_white(mode, colour):
    """A tRNS chunk on a grayscale or truecolour PNG marks one colour as transparent."""
    image = Image.new(mode, (S, S), colour)
    opaque = 90 if mode == "L" else (90, 90, 90)
    image.paste(opaque, (S // 2, 0, S, S))
    out = _check_array(load_image(image_bytes(image, transparency=colour), S))
    assert (out[:, : S // 2] == 255).all()
    assert (out[:, S // 2 :] == 90).all()


def test_cmyk_jpeg_colours_match_rgb_original():
    image = _blocks()
    data = image_bytes(image.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = _check_array(load_image(data, S)).astype(int)
    np.testing.assert_allclose(out, np.asarray(image, int), atol=12)


@pytest.mark.parametrize("orientation, red_side", [(6, "top"), (8, "bottom")])
def test_exif_orientation_is_applied(orientation, red_side):
    """Stored 40x20 with a red left half; a viewer rotates it upright before showing it."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = RED
    array[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = image_bytes(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
    upright = open_image(data)
    assert upright.mode == "RGB"
    assert upright.size == (20, 40)  # portrait after rotation
    out = _check_array(load_image(data, 32), 32).astype(int)
    top, bottom = out[2:12].mean(axis=(0, 1)), out[20:30].mean(axis=(0, 1))
    red_half, blue_half = (top, bottom) if red_side == "top" else (bottom, top)
    np.testing.assert_allclose(red_half, RED, atol=12)
    np.testing.assert_allclose(blue_half, BLUE, atol=12)


@pytest.mark.parametrize(
    "fmt, options",
    [("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("PNG", {})],
)
def test_lossless_formats_decode_exactly(fmt, options):
    image = synthetic_image(True, np.random.default_rng(5), size=S)
    data = image_bytes(image, fmt, **options)
    assert Image.open(io.BytesIO(data)).format == fmt
    np.testing.assert_array_equal(_check_array(load_image(data, S)), np.asarray(image))


def test_lossy_webp_and_jpeg_decode_close():
    image, size = _blocks(32), 32
    for fmt in ("WEBP", "JPEG"):
        out = _check_array(load_image(image_bytes(image, fmt, quality=95), size), size).astype(int)
        error = np.abs(out - np.asarray(image, int))
        assert np.median(error) <= 3, fmt  # chroma subsampling only blurs the quadrant edges
        assert error[4:12, 4:12].max() <= 8 and error[20:28, 20:28].max() <= 8, fmt


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (S, S), colour) for colour in (RED, BLUE, GREEN)]
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    gif = Image.open(io.BytesIO(data))
    assert gif.n_frames == 3
    gif.seek(2)  # even a PIL image left on a later frame gives frame 0
    for source in (data, gif):
        out = _check_array(load_image(source, S))
        assert (out == RED).all()


# ----------------------------------------------------------------------------- errors


def _raises(exc_type, source, status):
    with pytest.raises(exc_type) as info:
        load_image(source, S)
    assert info.value.http_status == status
    assert str(info.value)
    return info.value


def test_empty_bytes():
    error = _raises(ImageError, b"", 400)
    assert type(error) is ImageError


def test_random_bytes():
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    error = _raises(ImageError, data, 400)
    assert type(error) is ImageError


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = image_bytes(Image.fromarray(noise), fmt)
    for cut in (len(data) // 2, 40):
        error = _raises(ImageError, data[:cut], 400)
        assert type(error) is ImageError


def test_unsupported_real_image_format():
    data = image_bytes(_blocks(), "ICO")
    assert Image.open(io.BytesIO(data)).format == "ICO"  # PIL reads it, we refuse it
    error = _raises(UnsupportedFormatError, data, 415)
    assert "ICO" in str(error)


def test_missing_file_is_not_an_image_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png", S)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``x``height`` but carries only a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" + b"\x00" * 30)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture()
def no_decoding(monkeypatch):
    """Fail loudly if anything tries to decode pixels."""

    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_huge_declared_png_refused_without_decoding(no_decoding):
    """Refused from its header: ``no_decoding`` fails if any pixel is decoded (how fast the
    refusal is: ``python -m benchmarks.refusals``)."""
    data = _png_header_only(50_000, 50_000)
    assert len(data) < 200
    error = _raises(ImageTooLargeError, data, 413)
    assert isinstance(error, ImageError) and "pixels" in str(error)


def test_own_pixel_limit_applies_even_without_pils_guard(monkeypatch, no_decoding):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for width, height in ((50_000, 50_000), (8_000, 5_001)):  # the second is under PIL's own limit
        assert width * height > preprocessing.MAX_IMAGE_PIXELS
        error = _raises(ImageTooLargeError, _png_header_only(width, height), 413)
        assert f"{width}x{height}" in str(error)


# ----------------------------------------------------------------------------- same input, same array


def test_format_decided_by_content_not_name(tmp_path):
    image = synthetic_image(False, np.random.default_rng(2), size=S)
    expected = np.asarray(image)
    png, jpeg = image_bytes(image, "PNG"), image_bytes(image, "JPEG", quality=95)
    for name, data in (("photo.jpg", png), ("photo.txt", png), ("noext", png), ("pic.png", jpeg)):
        path = tmp_path / name
        path.write_bytes(data)
        out = _check_array(load_image(path, S)).astype(int)
        if data is png:
            np.testing.assert_array_equal(out, expected)
        else:
            assert np.abs(out - expected).mean() < 4
    np.testing.assert_array_equal(load_image(png, S), expected)


def test_every_source_type_resizes_identically(tmp_path):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    path = tmp_path / "input.png"
    image.save(path)
    data = path.read_bytes()
    size = 24
    reference = load_image(path, size)
    _check_array(reference, size)
    others = {
        "str": load_image(str(path), size),
        "bytes": load_image(data, size),
        "bytearray": load_image(bytearray(data), size),
        "file": load_image(io.BytesIO(data), size),
        "opened": load_image(Image.open(path), size),
        "in_memory": load_image(image, size),
    }
    for name, array in others.items():
        np.testing.assert_array_equal(array, reference, err_msg=name)
    # and that one filter is Lanczos, as the shared data was made
    lanczos = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
    bilinear = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(reference, lanczos)
    assert not np.array_equal(reference, bilinear)


def test_image_already_at_size_is_untouched():
    image = synthetic_image(True, np.random.default_rng(4), size=S)
    np.testing.assert_array_equal(load_image(image, S), np.asarray(image))


# ----------------------------------------------------------------------------- cost and completeness


@pytest.mark.slow
def test_short_pixel_data_is_refused_in_every_accepted_format():
    """Cut in the middle, or cut and closed again (a JPEG cut after 2 KB and given an EOI
    marker, a PNG whose header says 6324x6324 with one row of data): 400, never a grey or
    black image of the declared size."""
    from harness.hostile import lying_png, noise, short_images

    files = {**short_images(noise(256, seed=5)), "one_row_40mp.png": lying_png(6324)}
    for name, data in files.items():
        error = _raises(ImageError, data, 400)
        assert type(error) is ImageError, name


@pytest.mark.slow
def test_a_jpeg_of_many_scans_is_refused_before_decoding(no_decoding):
    """Refused from its markers: ``no_decoding`` fails if any pixel is decoded (how fast the
    refusal is: ``python -m benchmarks.refusals``)."""
    from harness.hostile import many_scans_jpeg

    data = many_scans_jpeg(side=6324, scans=10_000)  # about 30 s of CPU to decode
    error = _raises(ImageTooLargeError, data, 413)
    assert "scans" in str(error)


def test_normal_progressive_jpegs_are_within_the_scan_budget():
    data = image_bytes(_blocks(), "JPEG", progressive=True)
    assert load_image(data, S).shape == (S, S, 3)
    assert preprocessing.MAX_JPEG_SCANS >= 6 * 10  # six times libjpeg's own progressive script


def test_a_png_of_thousands_of_chunks_is_refused_before_decoding(no_decoding):
    from harness.hostile import png_chunk

    data = image_bytes(_blocks(), "PNG")
    padded = data[:33] + png_chunk(b"zzZz", b"") * (preprocessing.MAX_SEGMENTS + 1) + data[33:]
    error = _raises(ImageTooLargeError, padded, 413)
    assert "segments" in str(error)


# ----------------------------------------------------------------------------- issue 29: hostile shapes and containers


@pytest.mark.parametrize(
    "width, height, depth",
    [
        (39_999_999, 1, 8),
        (1, 39_999_999, 8),
        (19_999_999, 1, 16),  # the review's: 2 GB and 10 s each to resize
        (preprocessing.MAX_IMAGE_SIDE + 1, 1, 8),
        (preprocessing.MAX_ASPECT_RATIO * 100 + 1, 100, 8),
    ],
)
def test_extreme_sides_and_aspect_ratios_are_refused_before_decoding(width, height, depth, no_decoding):
    from harness.hostile import grey_png

    error = _raises(ImageTooLargeError, grey_png(width, height, depth), 413)
    assert f"{width}x{height}" in str(error)


def test_the_widest_shape_allowed_is_decoded():
    from harness.hostile import grey_png

    width = preprocessing.MAX_ASPECT_RATIO * 50
    assert _check_array(load_image(grey_png(width, 50), S)).max() == 0


def test_a_large_reduction_averages_blocks_first_and_stays_close_to_lanczos(monkeypatch):
    image = synthetic_image(True, np.random.default_rng(6), size=64).resize((2048, 2048), Image.Resampling.BICUBIC)
    plain = np.asarray(image.resize((S * 4, S * 4), Image.Resampling.LANCZOS, reducing_gap=None), int)
    reductions = []
    reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, *a, **k: reductions.append(a) or reduce(self, *a, **k))
    out = load_image(image, S * 4).astype(int)
    assert reductions, "a 32x reduction should average whole blocks before resampling"
    assert np.abs(out - plain).mean() < 0.5 and np.abs(out - plain).max() <= 2
    reductions.clear()
    load_image(image.resize((S * 15, S * 15)), S)  # under 16x: plain Lanczos, as training crops
    assert not reductions


def test_a_mistyped_exif_tag_costs_nothing_but_the_tag():
    """Orientation 6 with XResolution stored as ASCII: ImageOps.exif_transpose raised TypeError
    rewriting the EXIF block, which nothing caught (a 500, a stopped batch, an aborted cache build)."""
    from harness.hostile import mistyped_exif_jpeg

    upright = open_image(mistyped_exif_jpeg(64, 48))
    assert upright.size == (48, 64)  # turned to portrait
    out = np.asarray(upright, int)
    np.testing.assert_allclose(out[:8].mean(axis=(0, 1)), (30, 30, 200), atol=16)  # the blue left edge is on top


def _fuzz_seeds() -> dict[str, bytes]:
    from harness.hostile import jpeg_in_tiff, mistyped_exif_jpeg, rle_bmp

    image = _blocks(24)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [image, image.rotate(90)]
    return {
        "exif.jpg": image_bytes(image, "JPEG", exif=exif.tobytes()),
        "mistyped_exif.jpg": mistyped_exif_jpeg(24, 16),
        "progressive.jpg": image_bytes(image, "JPEG", progressive=True),
        "rgba.png": image_bytes(image.convert("RGBA"), "PNG", exif=exif.tobytes()),
        "grey16.png": image_bytes(Image.fromarray(np.full((12, 20), 40000, np.uint16)), "PNG"),
        "animated.gif": image_bytes(image, "GIF", save_all=True, append_images=frames[1:], comment=b"hello"),
        "lossless.webp": image_bytes(image, "WEBP", lossless=True),
        "lossy.webp": image_bytes(image, "WEBP", exif=exif.tobytes()),
        "exif.tiff": image_bytes(image, "TIFF", exif=exif.tobytes()),
        "jpeg.tiff": image_bytes(image, "TIFF", compression="jpeg"),
        "scans.tiff": jpeg_in_tiff(32, 8),
        "deflate.tiff": image_bytes(image, "TIFF", compression="tiff_adobe_deflate"),
        "image.bmp": image_bytes(image, "BMP"),
        "rle.bmp": rle_bmp(24, 16),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns of the corrupt EXIF and tags it skips
def test_mutated_files_of_every_format_raise_only_image_errors():
    """Seeded and bounded (60 mutants of 14 files): a decoder's failure on one file is that file's
    ImageError, whatever PIL raised (TypeError, IndexError, struct.error, SyntaxError...)."""
    from harness.hostile import mutants

    outcomes = {"decoded": 0, "refused": 0}
    for name, data in mutants(_fuzz_seeds(), count=60, seed=29):
        try:
            load_image(data, S)
            outcomes["decoded"] += 1
        except ImageError:
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - the assertion names the file and what escaped
            raise AssertionError(f"{name}: {type(error).__name__}: {error}") from error
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50, outcomes


def test_a_large_rle_bmp_is_refused_and_a_small_one_decoded(no_decoding):
    from harness.hostile import rle_bmp

    error = _raises(ImageTooLargeError, rle_bmp(6000, 6666), 413)  # 27 KB, 5-9 s in PIL's Python decoder
    assert "RLE" in str(error)


def test_a_small_rle_bmp_is_decoded():
    from harness.hostile import rle_bmp

    out = _check_array(load_image(rle_bmp(40, 30), S))
    assert out.max() > 0  # one grey pixel per row, the rest black


def test_a_gif_of_many_comment_sub_blocks_is_refused_before_pil_reads_it(monkeypatch):
    from PIL import GifImagePlugin

    from harness.hostile import commented_gif

    opened = []
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_open", lambda self: opened.append(1))
    error = _raises(ImageTooLargeError, commented_gif(preprocessing.MAX_SEGMENTS + 1), 413)
    assert "segments" in str(error) and not opened


def test_a_gif_with_a_comment_is_decoded():
    from harness.hostile import commented_gif

    assert _check_array(load_image(commented_gif(300), S)).shape == (S, S, 3)


def test_a_jpeg_inside_a_tiff_has_the_same_scan_limit(no_decoding):
    from harness.hostile import jpeg_in_tiff

    error = _raises(ImageTooLargeError, jpeg_in_tiff(256, preprocessing.MAX_JPEG_SCANS + 35), 413)
    assert "scans" in str(error)


def test_a_jpeg_compressed_tiff_within_the_limit_is_decoded():
    image = _blocks(32)
    out = _check_array(load_image(image_bytes(image, "TIFF", compression="jpeg"), 32), 32).astype(int)
    assert np.median(np.abs(out - np.asarray(image, int))) <= 3


def test_16_bit_images_convert_exactly_without_a_float_copy():
    """Every 16-bit value rounds to round(v * 255 / 65535); the conversion's peak memory stays
    near the 16-bit array itself (a float64 copy and its temporaries took 8 bytes a pixel each)."""
    import tracemalloc

    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = np.asarray(preprocessing._to_rgb(Image.fromarray(values)))
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    big = Image.fromarray(np.full((1000, 1000), 30000, np.uint16))
    tracemalloc.start()
    try:
        preprocessing._to_rgb(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 7 * big.width * big.height, f"{peak / 1e6:.1f} MB for a 1 MP 16-bit image"


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_an_image_turned_upright_is_not_turned_again_when_decoded_again(mode):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = open_image(image_bytes(Image.fromarray(array).convert(mode), "JPEG", quality=95, exif=exif.tobytes()))
    assert upright.size == (20, 40) and open_image(upright).size == (20, 40)
    np.testing.assert_array_equal(load_image(upright, 16), load_image(open_image(upright), 16))

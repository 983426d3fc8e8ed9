"""Tests for shared.documents: every fixture is generated here with Pillow, pypdf and zlib."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pypdf import PdfReader, PdfWriter

from shared.documents import (
    DocumentError,
    DocumentInputError,
    DocumentLimits,
    load_document,
    load_pages,
    page_count,
)

LETTER_PT = (612, 792)  # 8.5 x 11 inches


@pytest.fixture(autouse=True, scope="module")
def _require_poppler():
    for binary in ("pdfinfo", "pdftoppm"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed: run `apt-get install poppler-utils`")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _pdf(colors: list[str], size: tuple[int, int] = LETTER_PT) -> bytes:
    """A PDF with one page per color; at 72 dpi each page is `size` points."""
    images = [Image.new("RGB", size, color) for color in colors]
    return _encode(images[0], "PDF", save_all=True, append_images=images[1:], resolution=72)


def _blank_pdf(*sizes_pt: tuple[float, float]) -> bytes:
    writer = PdfWriter()
    for width, height in sizes_pt:
        writer.add_blank_page(width, height)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _encrypted(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int, pixel_data: bytes = b"") -> bytes:
    """An 8-bit grayscale PNG whose header declares width x height."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = _png_chunk(b"IDAT", pixel_data) if pixel_data else b""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + idat + _png_chunk(b"IEND", b"")


def _zero_png_bomb(side: int) -> bytes:
    """A real decompression bomb: side x side black pixels, zlib-compressed to ~50 KB."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + one byte per pixel
    rows = b"".join(compressor.compress(row) for _ in range(side))
    return _png_declaring(side, side, rows + compressor.flush())


def _images_allocated() -> int:
    return Image.core.get_stats()["new_count"]


# --- PDF ---------------------------------------------------------------------------------------


def test_pdf_pages_render_at_the_dpi_as_rgb():
    pages = load_pages(_pdf(["red", "blue"]))

    assert [page.size for page in pages] == [(1700, 2200), (1700, 2200)]  # letter at 200 dpi
    assert all(page.mode == "RGB" for page in pages)
    red, blue = (np.asarray(page).reshape(-1, 3).mean(axis=0) for page in pages)
    assert red == pytest.approx([255, 0, 0], abs=3)
    assert blue == pytest.approx([0, 0, 255], abs=3)


def test_pdf_from_a_path_and_a_custom_dpi(tmp_path):
    path = tmp_path / "letter.pdf"
    path.write_bytes(_pdf(["white"]))

    (page,) = load_pages(path, limits=DocumentLimits(dpi=100))
    assert page.size == (850, 1100)
    assert page_count(str(path)) == 1


def test_type_comes_from_magic_bytes_not_the_name(tmp_path):
    path = tmp_path / "scan.png"  # a PDF with a misleading name
    path.write_bytes(_pdf(["white", "white"]))
    assert len(load_pages(path, limits=DocumentLimits(dpi=20))) == 2


def test_page_count_does_not_render():
    assert page_count(_blank_pdf(*[LETTER_PT] * 5)) == 5


def test_a_document_renders_its_first_pages_and_counts_them_all():
    pdf = load_document(_pdf(["red", "blue", "white"]), limits=DocumentLimits(dpi=20), first=1)
    assert (len(pdf.pages), pdf.page_count) == (1, 3)
    red, green, blue = pdf.pages[0].getpixel((5, 5))  # the first page, JPEG-encoded in the PDF
    assert red > 240 and green < 15 and blue < 15
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    tiff = load_document(_encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
                         first=1)  # fmt: skip
    assert (len(tiff.pages), tiff.page_count) == (1, 2)
    everything = load_document(_pdf(["red", "blue"]), limits=DocumentLimits(dpi=20))
    assert (len(everything.pages), everything.page_count) == (2, 2)


def test_pdf_over_max_pages_names_count_and_limit():
    with pytest.raises(DocumentInputError, match="the PDF has 3 pages; the limit is 2"):
        load_pages(_blank_pdf(*[LETTER_PT] * 3), limits=DocumentLimits(max_pages=2))


def test_large_page_renders_at_a_lower_dpi_that_fits():
    limits = DocumentLimits(max_pixels=1_000_000)  # letter at 200 dpi is 3.74 million
    small, letter = load_pages(_blank_pdf((100, 100), LETTER_PT), limits=limits)

    assert small.size == (278, 278)  # fits: keeps 200 dpi
    assert letter.size == (876, 1133)  # 103 dpi, the highest that fits
    assert letter.width * letter.height <= limits.max_pixels
    assert letter.width / letter.height == pytest.approx(612 / 792, rel=0.01)


def test_page_over_the_limit_even_at_72_dpi_is_rejected():
    poster = (72 * 100, 72 * 100)  # 100 x 100 inches: 51.8 million pixels at 72 dpi
    with pytest.raises(DocumentInputError, match=r"page 2 .* too large: 100 x 100 inches"):
        load_pages(_blank_pdf(LETTER_PT, poster))


def test_encrypted_pdf_asks_to_remove_the_password():
    locked = _encrypted(_pdf(["red"]), user_password="secret")
    with pytest.raises(DocumentInputError, match=r"^the PDF is encrypted: remove the password"):
        load_pages(locked)
    with pytest.raises(DocumentInputError, match="encrypted"):
        page_count(locked)


def test_pdf_with_only_an_owner_password_opens_like_in_any_viewer():
    (page,) = load_pages(_encrypted(_pdf(["red"]), user_password=""), limits=DocumentLimits(dpi=36))
    assert page.size == (306, 396)
    assert page.getpixel((10, 10)) == pytest.approx((255, 0, 0), abs=3)


@pytest.mark.parametrize(
    "damage",
    [lambda pdf: pdf[: len(pdf) // 2], lambda pdf: pdf[:100], lambda pdf: pdf[:9] + bytes(500)],
    ids=["half", "header-only", "zeroed"],
)
def test_damaged_pdf_is_rejected_clearly(damage):
    with pytest.raises(DocumentInputError, match=r"^could not read the PDF: it is damaged"):
        load_pages(damage(_pdf(["red", "blue"])))


def test_pdf_render_timeout():
    with pytest.raises(DocumentInputError, match="rendering the PDF took longer than 1e-06 s"):
        load_pages(_pdf(["red"]), limits=DocumentLimits(timeout_s=1e-6))


def test_missing_poppler_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DocumentError, match="apt-get install poppler-utils"):
        load_pages(_pdf(["red"]))


# --- Images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "TIFF"])
def test_single_images_become_one_rgb_page(fmt):
    data = _encode(Image.new("RGB", (30, 20), (200, 30, 30)), fmt)
    (page,) = load_pages(data)

    assert page.size == (30, 20)
    assert page.mode == "RGB"
    assert page.getpixel((15, 10)) == pytest.approx((200, 30, 30), abs=6)
    assert page_count(data) == 1


def test_multi_page_tiff_gives_every_page():
    frames = [Image.new("RGB", (30, 20), "red"), Image.new("L", (40, 10), 128)]
    data = _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    pages = load_pages(data)

    assert [page.size for page in pages] == [(30, 20), (40, 10)]
    assert [page.mode for page in pages] == ["RGB", "RGB"]
    assert pages[1].getpixel((0, 0)) == (128, 128, 128)
    assert page_count(data) == 2
    with pytest.raises(DocumentInputError, match="the TIFF has 2 pages; the limit is 1"):
        load_pages(data, limits=DocumentLimits(max_pages=1))


def test_transparency_is_flattened_onto_white():
    ink = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    ink.putpixel((5, 5), (0, 0, 0, 255))
    (page,) = load_pages(_encode(ink, "PNG"))
    assert page.getpixel((0, 0)) == (255, 255, 255)  # converting alone would give black
    assert page.getpixel((5, 5)) == (0, 0, 0)


def test_16_bit_grayscale_keeps_its_tones():
    gray = Image.fromarray(np.full((4, 4), 0x8000, dtype=np.uint16))
    (page,) = load_pages(_encode(gray, "PNG"))
    assert page.getpixel((0, 0)) == (128, 128, 128)  # not clipped to white


def test_jpeg_exif_rotation_is_applied():
    photo = Image.new("RGB", (30, 20), "red")
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (page,) = load_pages(_encode(photo, "JPEG", exif=exif))
    assert page.size == (20, 30)


def test_declared_size_over_max_pixels_is_rejected_before_decoding():
    bomb = _zero_png_bomb(7000)  # 49 million pixels, under Pillow's own bomb threshold
    assert len(bomb) < 100_000
    before = _images_allocated()

    with pytest.raises(DocumentInputError, match=r"image is 7000 x 7000 pixels; the limit is 40,"):
        load_pages(bomb)
    assert _images_allocated() == before  # no pixel buffer was ever created


def test_pillows_own_bomb_check_becomes_an_input_error():
    bomb = _png_declaring(50_000, 50_000)  # 2.5 billion pixels in 45 bytes
    before = _images_allocated()

    with pytest.raises(DocumentInputError, match=r"too many pixels.*the limit is 40,000,000"):
        load_pages(bomb)
    assert _images_allocated() == before


def test_pixel_limit_applies_to_each_tiff_page():
    frames = [Image.new("L", (10, 10)), Image.new("L", (100, 100))]
    data = _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(DocumentInputError, match="page 2 is 100 x 100 pixels"):
        load_pages(data, limits=DocumentLimits(max_pixels=5_000))


def test_truncated_image_is_rejected_clearly():
    png = _encode(Image.effect_noise((200, 200), 64), "PNG")
    with pytest.raises(DocumentInputError, match=r"^could not read the image: the PNG file is"):
        load_pages(png[: len(png) // 2])


# --- Anything else ------------------------------------------------------------------------------

UNSUPPORTED = (
    r"^unsupported document type: expected a PDF or an image \(PNG, JPEG, TIFF, BMP, WebP\)$"
)


@pytest.mark.parametrize(
    "data",
    [
        b"Dear team, please find the report attached.\n",
        b"BM is not always a bitmap",
        _encode(Image.new("RGB", (8, 8)), "GIF"),
        np.random.default_rng(0).bytes(4096),
    ],
    ids=["text", "text-starting-BM", "gif", "random"],
)
def test_other_input_is_an_unsupported_type(data):
    with pytest.raises(DocumentInputError, match=UNSUPPORTED):
        load_pages(data)
    with pytest.raises(DocumentInputError, match=UNSUPPORTED):
        page_count(data)


def test_empty_document(tmp_path):
    with pytest.raises(DocumentInputError, match=r"^document is empty$"):
        load_pages(b"")
    (tmp_path / "empty.pdf").touch()
    with pytest.raises(DocumentInputError, match=r"^document is empty$"):
        load_pages(tmp_path / "empty.pdf")


def test_over_max_bytes_is_rejected_before_parsing(tmp_path):
    path = tmp_path / "big.pdf"
    path.write_bytes(_pdf(["red"]))
    with pytest.raises(DocumentInputError, match=r"the limit is 1\.0 KiB"):
        load_pages(path, limits=DocumentLimits(max_bytes=1024))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DocumentInputError, match="document file not found"):
        load_pages(tmp_path / "nope.pdf")
    with pytest.raises(DocumentInputError, match="not a regular file"):
        load_pages(tmp_path)


def test_invalid_arguments_are_programming_errors():
    with pytest.raises(ValueError, match="max_pages must be positive"):
        DocumentLimits(max_pages=0)
    with pytest.raises(TypeError, match="bytes or a path"):
        load_pages(123)  # type: ignore[arg-type]


# Real magic numbers, so examples reach pypdf's and Pillow's parsers, not only the sniffing.
_MAGIC = [
    b"",
    b"%PDF-1.7\n",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"II*\x00",
    b"MM\x00*",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x28\x00\x00\x00",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
]


_VALID = [
    _pdf(["red"], size=(72, 72)),
    _encode(Image.effect_noise((16, 16), 64).convert("RGB"), "PNG"),
    _encode(Image.effect_noise((16, 16), 64).convert("RGB"), "JPEG"),
    _encode(
        Image.new("L", (16, 16)), "TIFF", save_all=True, append_images=[Image.new("1", (8, 8))]
    ),
]


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    """A valid small document with a few bytes overwritten, to reach the decoders."""
    data = bytearray(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


_ANY_BYTES = st.one_of(
    st.builds(lambda magic, body: magic + body, st.sampled_from(_MAGIC), st.binary(max_size=1024)),
    _damaged(),
)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # damaged TIFFs: expected
@settings(max_examples=80, deadline=None)
@given(data=_ANY_BYTES)
def test_arbitrary_bytes_raise_only_document_input_error(data):
    limits = DocumentLimits(max_pixels=1_000_000, dpi=72)
    try:
        pages = load_pages(data, limits=limits)
    except DocumentInputError:
        return
    assert 1 <= len(pages) <= limits.max_pages
    for page in pages:
        assert page.mode == "RGB"
        assert page.width * page.height <= limits.max_pixels

"""Turn an uploaded document (a PDF or an image) into RGB page images, safely.

The type comes from the file's first bytes, never from its name. PDFs are checked with pypdf
(encryption, damage, page count, page sizes) before poppler renders them through pdf2image under a
timeout. Images are opened with Pillow, and their declared size is checked against the pixel limit
before any pixel is decoded, so a tiny file declaring a huge image (a decompression bomb) costs
nothing.

Oversized PDF pages are rendered at a lower DPI than asked, chosen per page so the page fits
``max_pixels`` (a poster in a document of letter pages still renders); a page that would be over
the limit even at 72 dpi is rejected. Oversized images are rejected, since they have no DPI to
lower.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pdf2image
from pdf2image.exceptions import PDFPageCountError, PDFPopplerTimeoutError, PopplerNotInstalledError
from PIL import Image, ImageOps
from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError

from shared.errors import InputError

logger = logging.getLogger(__name__)

_MIN_DPI = 72  # below this, text is unreadable: a page that needs less is rejected instead
_ENCRYPTED = "the PDF is encrypted: remove the password and upload again"
_UNSUPPORTED = "unsupported document type: expected a PDF or an image (PNG, JPEG, TIFF, BMP, WebP)"
# Image kind -> the Pillow plugins allowed to open it, so Pillow never guesses another format.
_PILLOW_FORMATS = {
    "png": ("PNG",),
    "jpeg": ("JPEG", "MPO"),  # MPO: multi-picture JPEG, as some cameras write
    "tiff": ("TIFF",),
    "bmp": ("BMP",),
    "webp": ("WEBP",),
}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # the BITMAPINFOHEADER versions


class DocumentError(RuntimeError):
    """The machine cannot render documents at all (poppler is missing)."""


class DocumentInputError(InputError):
    """The uploaded document is empty, too large, encrypted, damaged, or not a document."""


@dataclass(frozen=True)
class DocumentLimits:
    """Limits applied to every document, so one upload cannot exhaust the server."""

    max_pages: int = 20  # documents with more pages are rejected
    dpi: int = 200  # PDF render resolution; lowered per page where a page would be over max_pixels
    # Per page (width x height); 200 dpi A4 is about 3.9 million. Above Pillow's own limit
    # (Image.MAX_IMAGE_PIXELS, 89 million) Pillow warns, and at twice that it refuses.
    max_pixels: int = 40_000_000
    max_bytes: int = 20 * 2**20  # largest file accepted, checked before parsing
    timeout_s: float = 60.0  # wall-clock limit for rendering all pages of a PDF with poppler

    def __post_init__(self) -> None:
        for name in ("max_pages", "dpi", "max_pixels", "max_bytes", "timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"DocumentLimits.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class Document:
    """A decoded upload: the pages rendered (all, or the first few asked for) and how many
    pages the document has."""

    pages: list[Image.Image]
    page_count: int


def load_document(
    source: bytes | str | os.PathLike[str],
    *,
    limits: DocumentLimits = DocumentLimits(),
    first: int | None = None,
) -> Document:
    """Render a PDF, or decode an image, into one RGB image per page, and count its pages.

    Args:
        source: the uploaded file, as bytes or as a path. Its type is read from its first
            bytes: PDF, PNG, JPEG, TIFF (every page of a multi-page TIFF), BMP or WebP (the
            first frame of an animated PNG or WebP).
        limits: page, pixel, size and time limits. PDF pages render at ``limits.dpi``, or at
            the highest DPI down to 72 that keeps the page within ``limits.max_pixels``.
        first: Render (or decode) only the first ``first`` pages; the whole document is still
            checked against the limits and counted. None: every page.

    Returns:
        The pages in order, as ``RGB`` images (transparency is flattened onto white, and JPEG
        EXIF rotation applied), and the document's page count. The file is parsed once.

    Raises:
        DocumentInputError: the document is empty, over a limit, encrypted, damaged, or not a
            PDF or an image.
        DocumentError: poppler is not installed.
    """
    data = _read_source(source, limits)
    kind = _sniff(data)
    if kind is None:
        raise DocumentInputError(_UNSUPPORTED)
    if first is not None and first < 1:
        raise ValueError(f"first must be at least 1, got {first}")
    if kind == "pdf":
        return _load_pdf(data, limits, first)
    return _load_image(data, kind, limits, first)


def load_pages(
    source: bytes | str | os.PathLike[str],
    *,
    limits: DocumentLimits = DocumentLimits(),
    first: int | None = None,
) -> list[Image.Image]:
    """The pages of :func:`load_document` (same arguments, same errors)."""
    return load_document(source, limits=limits, first=first).pages


def page_count(
    source: bytes | str | os.PathLike[str],
    *,
    limits: DocumentLimits = DocumentLimits(),
) -> int:
    """Count the pages of a document without rendering or decoding them.

    Args:
        source: the uploaded file, as bytes or as a path, as for :func:`load_pages`.
        limits: only ``limits.max_bytes`` applies; the count is returned even when over
            ``limits.max_pages``.

    Returns:
        The number of pages: those of a PDF or a TIFF, 1 for other images.

    Raises:
        DocumentInputError: the document is empty, too large, encrypted, damaged, or not a PDF
            or an image.
    """
    data = _read_source(source, limits)
    kind = _sniff(data)
    if kind is None:
        raise DocumentInputError(_UNSUPPORTED)
    if kind == "pdf":
        return len(_pdf_page_sizes(data))
    if kind != "tiff":
        return 1
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS[kind]) as image:
            return image.n_frames
    except Image.DecompressionBombError as e:
        raise DocumentInputError(f"image has too many pixels: {e}") from e
    except Exception as e:  # Pillow raises many types on malformed input
        raise DocumentInputError(_damaged_image_message(kind, e)) from e


def _read_source(source: bytes | str | os.PathLike[str], limits: DocumentLimits) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(len(data), limits)
        return data
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"source must be bytes or a path, not {type(source).__name__}")
    path = Path(source)
    try:
        info = path.stat()
    except FileNotFoundError as e:
        raise DocumentInputError(f"document file not found: {path}; upload it again") from e
    if not stat.S_ISREG(info.st_mode):
        raise DocumentInputError(f"document path is not a regular file: {path}")
    _check_size(info.st_size, limits)  # before reading, so a huge file is never loaded
    data = path.read_bytes()
    _check_size(len(data), limits)  # the file may have changed since stat()
    return data


def _check_size(n_bytes: int, limits: DocumentLimits) -> None:
    if n_bytes == 0:
        raise DocumentInputError("document is empty")
    if n_bytes > limits.max_bytes:
        raise DocumentInputError(
            f"document is {_format_size(n_bytes)}; the limit is "
            f"{_format_size(limits.max_bytes)}: upload fewer pages or smaller images"
        )


def _format_size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _sniff(data: bytes) -> str | None:
    """The document kind from its magic bytes: "pdf", an image kind, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF
        return "tiff"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    # Readers accept a PDF header anywhere in the first KiB (some generators prepend junk).
    if b"%PDF-" in data[:1024]:
        return "pdf"
    return None


# --- PDF ---------------------------------------------------------------------------------------


def _load_pdf(data: bytes, limits: DocumentLimits, first: int | None) -> Document:
    sizes = _pdf_page_sizes(data)
    if len(sizes) > limits.max_pages:
        raise DocumentInputError(
            f"the PDF has {len(sizes)} pages; the limit is {limits.max_pages}: "
            "upload only the pages you need"
        )
    dpis = []
    for number, (width_pt, height_pt) in enumerate(sizes, start=1):
        dpi = _fit_dpi(width_pt, height_pt, limits)
        if dpi is None:
            raise DocumentInputError(
                f"page {number} of the PDF is too large: {width_pt / 72:.0f} x "
                f"{height_pt / 72:.0f} inches is over the {limits.max_pixels:,} pixel limit "
                f"even at {_MIN_DPI} dpi"
            )
        if dpi < limits.dpi:
            logger.info(
                "rendering PDF page %d at %d dpi to stay within the pixel limit", number, dpi
            )
        dpis.append(dpi)
    return Document(_render_pdf(data, dpis[:first], limits), len(sizes))


def _pdf_page_sizes(data: bytes) -> list[tuple[float, float]]:
    """(width, height) in points of each page, after checking the PDF opens without a password."""
    try:
        reader = PdfReader(io.BytesIO(data))
        # An empty user password (owner-password "protection") opens in any viewer, so only a
        # PDF that needs a real password is refused.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise DocumentInputError(_ENCRYPTED)
        # pdftoppm renders the media box and ignores /UserUnit, so this is what it will draw.
        sizes = [
            (abs(float(p.mediabox.width)), abs(float(p.mediabox.height))) for p in reader.pages
        ]
    except DocumentInputError:
        raise
    except DependencyError as e:
        # Decrypting AES needs the optional `cryptography` package; without it an empty
        # password cannot be told from a real one, so the PDF is refused like a protected one.
        raise DocumentInputError(_ENCRYPTED) from e
    except Exception as e:  # pypdf raises many types (and RecursionError) on malformed files
        raise DocumentInputError(
            f"could not read the PDF: it is damaged or incomplete ({type(e).__name__}: {e}); "
            "export it again and upload it"
        ) from e
    if not sizes:
        raise DocumentInputError("the PDF has no pages")
    for number, (width, height) in enumerate(sizes, start=1):
        if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
            raise DocumentInputError(
                f"could not read the PDF: page {number} has no valid size ({width} x {height} pt)"
            )
    return sizes


def _fit_dpi(width_pt: float, height_pt: float, limits: DocumentLimits) -> int | None:
    """The highest DPI up to limits.dpi at which the page fits limits.max_pixels, or None."""

    def pixels(dpi: int) -> int:  # pdftoppm rounds each side up
        return math.ceil(width_pt * dpi / 72) * math.ceil(height_pt * dpi / 72)

    dpi = limits.dpi
    if pixels(dpi) > limits.max_pixels:
        # Pixels grow with dpi squared; start from the exact fit and step down past rounding.
        dpi = min(dpi, math.floor(72 * math.sqrt(limits.max_pixels / (width_pt * height_pt))))
        while dpi >= min(_MIN_DPI, limits.dpi) and pixels(dpi) > limits.max_pixels:
            dpi -= 1
    return dpi if dpi >= min(_MIN_DPI, limits.dpi) else None


def _runs(dpis: list[int]) -> Iterator[tuple[int, int, int]]:
    """(first page, last page, dpi) for each run of consecutive pages sharing a DPI (1-based)."""
    first = 1
    for dpi, run in itertools.groupby(dpis):
        count = len(list(run))
        yield first, first + count - 1, dpi
        first += count


def _render_pdf(data: bytes, dpis: list[int], limits: DocumentLimits) -> list[Image.Image]:
    deadline = time.monotonic() + limits.timeout_s
    pages: list[Image.Image] = []
    with tempfile.TemporaryDirectory(prefix="document-") as tmp:
        path = Path(tmp) / "upload.pdf"
        path.write_bytes(data)  # the bytes pypdf checked, whatever the source was
        for first, last, dpi in _runs(dpis):
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise PDFPopplerTimeoutError("no time left")
                images = pdf2image.convert_from_path(
                    path, dpi=dpi, first_page=first, last_page=last, timeout=remaining
                )
                pages.extend(image.convert("RGB") for image in images)
            except (PopplerNotInstalledError, FileNotFoundError) as e:
                raise DocumentError(
                    "poppler is not installed or not on PATH: install poppler-utils (e.g. "
                    "`apt-get install poppler-utils`, or add it to the Space's packages.txt)"
                ) from e
            except PDFPopplerTimeoutError as e:
                raise DocumentInputError(
                    f"rendering the PDF took longer than {limits.timeout_s:g} s: it may be "
                    "damaged or very complex; upload fewer pages or a simpler export"
                ) from e
            # Unreadable for poppler, or output Pillow refuses (over its own pixel limit).
            except (PDFPageCountError, ValueError, OSError, Image.DecompressionBombError) as e:
                raise DocumentInputError(
                    f"could not render the PDF: it is damaged ({e}); export it again and upload it"
                ) from e
    if len(pages) != len(dpis):
        raise DocumentInputError(
            f"could not render the PDF: poppler drew {len(pages)} of its {len(dpis)} pages; "
            "it is damaged: export it again and upload it"
        )
    return pages


# --- Images ------------------------------------------------------------------------------------


def _load_image(data: bytes, kind: str, limits: DocumentLimits, first: int | None) -> Document:
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS[kind]) as image:
            # Only TIFF pages are document pages; other frames are animation.
            n_pages = image.n_frames if kind == "tiff" else 1
            if n_pages > limits.max_pages:
                raise DocumentInputError(
                    f"the TIFF has {n_pages} pages; the limit is {limits.max_pages}: "
                    "upload only the pages you need"
                )
            pages = []
            for index in range(min(n_pages, first or n_pages)):
                image.seek(index)
                width, height = image.size  # declared in the header: nothing decoded yet
                if width * height > limits.max_pixels:
                    where = f"page {index + 1} is" if n_pages > 1 else "image is"
                    raise DocumentInputError(
                        f"{where} {width} x {height} pixels; the limit is "
                        f"{limits.max_pixels:,} pixels: scale it down and upload it again"
                    )
                pages.append(_to_rgb(image))
            return Document(pages, n_pages)
    except DocumentInputError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own check, before ours could run
        raise DocumentInputError(
            f"image has too many pixels ({e}); the limit is {limits.max_pixels:,} pixels: "
            "scale it down and upload it again"
        ) from e
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ...) on bad files
        raise DocumentInputError(_damaged_image_message(kind, e)) from e


def _damaged_image_message(kind: str, error: Exception) -> str:
    return (
        f"could not read the image: the {kind.upper()} file is damaged or incomplete "
        f"({type(error).__name__}: {error}); export it again and upload it"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Decode one frame to RGB: EXIF rotation applied, transparency flattened onto white."""
    image = ImageOps.exif_transpose(image)  # phone photos of pages are often stored sideways
    if image.mode.startswith("I;16") or image.mode == "I":
        # Pillow clips 16-bit values to 255 when converting (a white page); keep the top 8 bits.
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")

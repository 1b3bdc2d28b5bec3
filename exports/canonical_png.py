"""The canonical PNG: the pixels, re-encoded, and nothing else (see exports.canonical).

The dimensions are read from the header and checked against the site's caps *before* any pixel is
decoded, so a decompression bomb costs nothing. The output has exactly the chunks IHDR, IDAT and IEND:
this is asserted on every output, so a Pillow upgrade that starts writing metadata fails closed.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image

from exports import sdc_png
from exports.canonical import PNG_MAGIC, Limits, NotCanonical

COMPRESS_LEVEL = 1
"""zlib level. Fixed: the same pixels must always give the same bytes (idempotence). Level 1 keeps a
4000 x 4000 figure under a second; charts are flat colour, so the files stay small anyway."""
CANONICAL_CHUNKS = frozenset({"IHDR", "IDAT", "IEND"})


def canonical_png(data: bytes, limits: Limits, label: str) -> bytes:
    if not data.startswith(PNG_MAGIC):
        raise NotCanonical(
            f"{label}: the bytes are not a PNG image (no PNG signature); they do not match .png",
            "content_mismatch",
        )
    image = _decode(data, limits, label)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=COMPRESS_LEVEL, optimize=False)
    canonical = out.getvalue()
    chunks = set(sdc_png.parse_png(canonical, label).chunk_types)
    if not chunks <= CANONICAL_CHUNKS:  # never release a chunk we did not mean to write
        raise NotCanonical(
            f"{label}: the re-encoded image has chunks {sorted(chunks)}; refused", "not_canonical"
        )
    return canonical


def _decode(data: bytes, limits: Limits, label: str) -> Image.Image:
    """The first frame's pixels as 8-bit L or RGB, after checking the size from the header alone."""
    if data[12:16] == b"IHDR" and len(data) >= 24:  # the caps hold before Pillow reads anything
        _check_size(*struct.unpack(">II", data[16:24]), limits, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                width, height = image.size
                _check_size(width, height, limits, label)
                image.seek(0)  # an APNG's other frames are never shown on the page, so they never leave
                return _pixels(image)
    except NotCanonical:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise NotCanonical(f"{label}: the PNG image cannot be decoded ({exc})", "content_mismatch") from None


def _check_size(width: int, height: int, limits: Limits, label: str) -> None:
    if max(width, height) > limits.max_png_side or width * height > limits.max_png_pixels:
        raise NotCanonical(
            f"{label}: {width} x {height} pixels is over the site's cap ({limits.max_png_side} pixels a side, "
            f"{limits.max_png_pixels} in all)",
            "canonical_cap",
        )


def _pixels(image: Image.Image) -> Image.Image:
    """Normalise the mode to 8-bit L or RGB. 16-bit samples keep their high byte (a screen shows no more);
    a palette becomes colours (unused palette entries carry bytes); transparency is composited onto white,
    as the review page shows it: colour under a (nearly) transparent pixel, or an alpha value a person
    cannot tell from its neighbour, would otherwise leave unseen."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" not in image.info:
        image.load()
        return _bare(image)
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image.convert("I") if mode == "F" else image)
        wide = np.clip(values.astype(np.int64), 0, 65535)
        sixteen = mode.startswith("I;16") or wide.max(initial=0) > 255
        return Image.fromarray((wide >> 8).astype(np.uint8) if sixteen else wide.astype(np.uint8))
    if mode == "1":
        return _bare(image.convert("L"))
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    return _bare(flat)


def _bare(image: Image.Image) -> Image.Image:
    """The image with no metadata for the encoder to copy (Pillow writes an ICC profile, transparency
    and more from ``info``)."""
    image.info.clear()
    return image

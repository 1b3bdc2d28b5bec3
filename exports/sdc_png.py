"""PNG structure: a file named .png must be a well-formed PNG and nothing more.

We walk the chunks (length, type, data, CRC) without decoding pixels. Bytes after the IEND chunk are
refused: that is how a ZIP or script is smuggled inside a picture (a polyglot). Text and EXIF chunks
are listed for the checker, since a caption can carry data just as well as a table.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from exports.domain import FileRefused

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHARS = 2000
"""How much of each text chunk we keep (and inflate, for zTXt/iTXt) to show the checker."""


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    chunk_types: tuple[str, ...]
    texts: tuple[tuple[str, str], ...] = field(default=())
    has_exif: bool = False


def parse_png(data: bytes, label: str) -> PngInfo:
    """The structure of a PNG, or FileRefused naming ``label`` if the bytes are not exactly one PNG."""
    if not data.startswith(PNG_MAGIC):
        raise FileRefused(
            f"{label}: the bytes are not a PNG image (no PNG signature); they do not match .png",
            "content_mismatch",
        )
    offset = len(PNG_MAGIC)
    chunks: list[str] = []
    texts: list[tuple[str, str]] = []
    width = height = 0
    while True:
        if offset + 8 > len(data):
            raise FileRefused(
                f"{label}: PNG is truncated (chunk header at byte {offset})", "content_mismatch"
            )
        length, ctype_raw = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 8 + length + 4
        if end > len(data):
            raise FileRefused(
                f"{label}: PNG is truncated (chunk {ctype_raw!r} at byte {offset})", "content_mismatch"
            )
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(ctype_raw + body) & 0xFFFFFFFF != crc:
            raise FileRefused(
                f"{label}: PNG chunk {ctype_raw!r} at byte {offset} has a bad checksum", "content_mismatch"
            )
        ctype = ctype_raw.decode("latin-1")
        if not chunks and ctype != "IHDR":
            raise FileRefused(f"{label}: PNG does not start with an IHDR chunk", "content_mismatch")
        if ctype == "IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif ctype in ("tEXt", "zTXt", "iTXt"):
            texts.append(_text_chunk(ctype, body))
        chunks.append(ctype)
        offset = end
        if ctype == "IEND":
            break
    if offset != len(data):
        raise FileRefused(
            f"{label}: {len(data) - offset} bytes follow the end of the PNG image (IEND); "
            "data hidden after an image is refused; save the figure again",
            "content_mismatch",
        )
    return PngInfo(width, height, tuple(chunks), tuple(texts), has_exif="eXIf" in chunks)


def _text_chunk(ctype: str, body: bytes) -> tuple[str, str]:
    keyword, _, rest = body.partition(b"\x00")
    key = keyword.decode("latin-1", "replace")
    try:
        if ctype == "tEXt":
            text = rest.decode("latin-1")
        elif ctype == "zTXt":
            text = _inflate(rest[1:]).decode("latin-1", "replace")
        else:
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _translated, _, rest = rest.partition(b"\x00")
            text = (_inflate(rest) if compressed else rest).decode("utf-8", "replace")
    except (zlib.error, IndexError):
        text = "(unreadable text chunk)"
    return key, text[:MAX_TEXT_CHARS]


def _inflate(data: bytes) -> bytes:
    """Inflate at most MAX_TEXT_CHARS*4 bytes, so a compression bomb in a caption costs nothing."""
    return zlib.decompressobj().decompress(data, MAX_TEXT_CHARS * 4)

"""Canonical outputs: what the checkers see is exactly what is released.

When a file is added to a request, its bytes are parsed and written back in one canonical form for its
type, *before* anything is quarantined. The canonical bytes are what is quarantined (addressed by their
sha256), checked, shown and released; the original's sha256 and size are only recorded beside them.
Anything a viewer would not show a person is dropped by construction, or the file is refused:

- PNG: decoded (Pillow) and re-encoded from its pixels alone: IHDR, IDAT, IEND and nothing else. No text,
  EXIF, colour-profile or private chunks, no second APNG frame, nothing after IEND, no palette (unused
  palette entries carry bytes), no alpha (composited onto white, as the page shows it), 8 bits a sample.
- CSV/TSV: parsed and written back as UTF-8 in one dialect (``,`` or tab, ``"`` quoting only when needed,
  ``\\n`` line ends), cells trimmed with inner runs of spaces collapsed (a page does not show them).
- Text/Markdown: NFC, ``\\n`` line ends, tabs expanded, no trailing spaces (whitespace steganography), one
  final newline. Markdown that renders invisibly (raw HTML, comments, link reference definitions) is refused.
- JSON: parsed (duplicate keys and NaN refused) and written back with sorted keys, one indent, fixed
  separators, one final newline.

Every text is NFC-normalized, and refused if it holds a character a person cannot see or tell apart:
controls, format characters (Cf: zero-width, bidi, tags), default-ignorable code points (variation
selectors, Hangul fillers...), private-use, unassigned or surrogate code points, spaces other than U+0020,
and stacked combining marks. The caps (rows, columns, cell length, lines, sizes, depth, pixels) are site
policy (``canonical_outputs`` in policies/site.yaml).

``canonicalize(canonicalize(x)) == canonicalize(x)``: canonical bytes are a fixed point, which the unit
tests check for every type.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from exports.domain import FileRefused

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEPARATORS = {"csv": ",", "tsv": "\t"}
TAB_WIDTH = 4


@dataclass(frozen=True)
class Limits:
    """Caps on canonical outputs: site policy (``canonical_outputs`` in policies/site.yaml)."""

    max_rows: int = 10_000
    """Data rows of a CSV/TSV table (the header is not counted)."""
    max_columns: int = 200
    max_cell_chars: int = 200
    max_text_lines: int = 10_000
    max_line_chars: int = 1_000
    max_text_bytes: int = 1 << 20
    """Canonical text, Markdown or JSON, in bytes."""
    max_json_depth: int = 32
    max_png_side: int = 8_192
    max_png_pixels: int = 16_777_216
    """Width x height. 4096 x 4096 is plenty for a figure; more is room for pixels nobody looks at."""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> Limits:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in (raw or {}).items() if k in known})


class NotCanonical(FileRefused):
    """The file cannot be put in canonical form: the message names the file, and the row/column or line."""


def canonicalize(data: bytes, filetype: str, limits: Limits, label: str) -> bytes:
    """The canonical bytes of ``data`` (of an allowlisted ``filetype``), or NotCanonical naming ``label``."""
    if filetype == "png":
        from exports import canonical_png  # Pillow and numpy load only when a picture comes

        return canonical_png.canonical_png(data, limits, label)
    text = _decode(data, filetype, label)
    if filetype in SEPARATORS:
        return _table(text, SEPARATORS[filetype], limits, label)
    if filetype == "json":
        return _json(text, limits, label)
    return _text(text, filetype, limits, label)


def check_name(path: str, label: str) -> None:
    """A file name leaves with the file: the same character rules apply to it (a bidi override can
    disguise ``.csv`` as ``.png`` on the page; zero-width characters can carry bits)."""
    found = first_refused(path)
    if found:
        raise NotCanonical(f"{label} {path!r}: the file name holds {found[1]}", "invisible_characters")


# --------------------------------------------------------------------------------------------------
# Characters

_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Controls other than tab, line feed and carriage return (which each type handles itself)."""
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
DEFAULT_IGNORABLE = (
    # Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): rendered as nothing at all
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
BLANK_LOOKING = frozenset({0x2800})
"""Printable code points that draw as nothing: the braille blank (Hangul fillers are default-ignorable)."""
CATEGORY_WHY = {
    "Cc": "a control character",
    "Cf": "an invisible format character (zero-width or bidi)",
    "Co": "a private-use character",
    "Cs": "a surrogate code point",
    "Cn": "an unassigned code point",
    "Zs": "a space other than U+0020 (it looks like one)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
MAX_COMBINING_RUN = 3


def why_refused(ch: str) -> str | None:
    """Why ``ch`` may not appear in an output, or None if a person can see it for what it is."""
    cp = ord(ch)
    if cp < 0x80:
        return "a control character" if _ANY_CONTROL.match(ch) else None
    if any(lo <= cp <= hi for lo, hi in DEFAULT_IGNORABLE) or cp in BLANK_LOOKING:
        return "an invisible (default-ignorable) character"
    return CATEGORY_WHY.get(unicodedata.category(ch))


CONTROL_NAMES = {"\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN"}


def describe(ch: str) -> str:
    return f"U+{ord(ch):04X} {CONTROL_NAMES.get(ch) or unicodedata.name(ch, '(unnamed control)')}"


def first_refused(text: str, allowed: str = "") -> tuple[int, str] | None:
    """(offset, reason) of the first character in ``text`` a person could not see, or None.

    Fast on big inputs: one regex for ASCII controls, then one decision per distinct non-ASCII character.
    """
    if text.isascii() and not allowed:
        control = _ANY_CONTROL.search(text)
        return (control.start(), f"{describe(control.group())}: a control character") if control else None
    control = (_ASCII_CONTROL if allowed else _ANY_CONTROL).search(text)
    offsets = [control.start()] if control else []
    if allowed:
        offsets += [text.index(c) for c in "\t\n\r" if c not in allowed and c in text]
    distinct = set() if text.isascii() else set(_NON_ASCII.findall(text))
    bad = {ch for ch in distinct if why_refused(ch)}
    if bad:
        offsets.append(re.search("[" + re.escape("".join(sorted(bad))) + "]", text).start())
    marks = _combining_run(text, distinct)
    if marks is not None:
        offsets.append(marks)
    if not offsets:
        return None
    at = min(offsets)
    reason = why_refused(text[at]) or (
        "a control character"
        if text[at] in "\t\n\r"
        else f"more than {MAX_COMBINING_RUN} stacked combining marks"
    )
    return at, f"{describe(text[at])}: {reason}"


def _combining_run(text: str, distinct: set[str]) -> int | None:
    marks = {ch for ch in distinct if unicodedata.combining(ch)}
    if not marks:
        return None
    run = re.search(f"[{re.escape(''.join(sorted(marks)))}]{{{MAX_COMBINING_RUN + 1},}}", text)
    return run.start() if run else None


def _decode(data: bytes, filetype: str, label: str) -> str:
    if data.startswith(PNG_MAGIC):
        raise NotCanonical(
            f"{label}: the bytes are a PNG image; they do not match .{filetype}", "content_mismatch"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotCanonical(
            f"{label}: not UTF-8 text (byte {exc.start}); a .{filetype} file must be UTF-8 text",
            "content_mismatch",
        ) from None
    text = text.removeprefix("\ufeff")
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)  # "é" as one code point or two looks the same
    return text


# --------------------------------------------------------------------------------------------------
# Tables


def _table(text: str, sep: str, limits: Limits, label: str) -> bytes:
    simple = _already_canonical(text, sep, limits)
    if simple is not None:
        return simple
    rows, multiline = _rows(text, sep, limits, label)
    if not rows:
        raise NotCanonical(f"{label}: the table is empty (no header row)", "not_canonical")
    header = rows[0]
    if len(header) > limits.max_columns:
        raise NotCanonical(
            f"{label}: {len(header)} columns is over the site's cap of {limits.max_columns}", "canonical_cap"
        )
    allowed = "\t\n\r" if sep == "\t" else "\n\r"
    if multiline or first_refused(text, allowed) or (sep == "," and "\t" in text):
        _check_cells(rows, label)  # the slow path, to name the cell at fault
    if _needs_squash(text, sep):
        rows = [[_squash(cell) for cell in row] for row in rows]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise NotCanonical(
                f"{label}: row {i} has {len(row)} cells; the header has {len(header)}", "not_canonical"
            )
        if row and max(map(len, row)) > limits.max_cell_chars:
            j = next(j for j, cell in enumerate(row) if len(cell) > limits.max_cell_chars)
            raise NotCanonical(
                f"{label}: {_where(i, j, header)} holds {len(row[j])} characters; the site's cap is "
                f"{limits.max_cell_chars} per cell",
                "canonical_cap",
            )
    out = io.StringIO()
    csv.writer(out, delimiter=sep, quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(
        rows
    )
    return out.getvalue().encode("utf-8")


def _already_canonical(text: str, sep: str, limits: Limits) -> bytes | None:
    """The bytes of a table that is canonical as it stands (no quotes, no CR, no blank line, no stray
    space, nothing refused, within the caps), found without the csv module; None means "take the
    general path", which also finds and names any fault."""
    allowed = "\t\n" if sep == "\t" else "\n"
    if (
        not text.endswith("\n")
        or text.startswith("\n")
        or any(s in text for s in ('"', "\r", "\n\n"))
        or (sep == "," and "\t" in text)
        or _needs_squash(text, sep)
        or first_refused(text, allowed)
    ):
        return None
    lines = text[:-1].split("\n")
    width = lines[0].count(sep)
    if len(lines) - 1 > limits.max_rows or width + 1 > limits.max_columns:
        return None
    if any(line.count(sep) != width for line in lines):
        return None
    if max(map(len, lines)) > limits.max_cell_chars and any(
        max(map(len, line.split(sep))) > limits.max_cell_chars
        for line in lines
        if len(line) > limits.max_cell_chars
    ):
        return None
    return text.encode("utf-8")


def _needs_squash(text: str, sep: str) -> bool:
    """Whether some cell may start or end with a space or hold two in a row: such a space touches a
    separator, a line end, a quote, or the start or end of the text."""
    edges = ("  ", " \n", "\n ", " \r", "\r ", f" {sep}", f"{sep} ", ' "', '" ')
    return text.startswith(" ") or text.endswith(" ") or any(e in text for e in edges)


def _squash(cell: str) -> str:
    """A cell as a page shows it: no leading or trailing spaces, no runs of spaces."""
    return (
        " ".join(part for part in cell.split(" ") if part)
        if "  " in cell or cell != cell.strip(" ")
        else cell
    )


def _rows(text: str, sep: str, limits: Limits, label: str) -> tuple[list[list[str]], bool]:
    """The rows, and whether a cell spans lines (a line break inside quotes, which a page hides)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quotechar='"', strict=True)
    rows: list[list[str]] = []
    blank = 0
    try:
        while batch := list(itertools.islice(reader, 4096)):  # batches: the cap holds without a slow loop
            kept = [row for row in batch if row]  # a blank line is dropped: rows are what is shown
            blank += len(batch) - len(kept)
            rows += kept
            if len(rows) > limits.max_rows + 1:
                raise NotCanonical(
                    f"{label}: more than {limits.max_rows} data rows; the site's cap is {limits.max_rows}",
                    "canonical_cap",
                )
    except csv.Error as exc:
        raise NotCanonical(
            f"{label}: not a valid table at line {reader.line_num}: {exc}", "not_canonical"
        ) from None
    return rows, reader.line_num != len(rows) + blank


def _where(i: int, j: int, header: list[str]) -> str:
    row = "the header" if i == 0 else f"row {i}"
    name = header[j] if j < len(header) else ""
    return f"{row}, column {j + 1}" + (f" ({name!r})" if name and i else "")


def _check_cells(rows: list[list[str]], label: str) -> None:
    header = rows[0]
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            found = first_refused(cell)
            if found:
                raise NotCanonical(f"{label}: {_where(i, j, header)}: {found[1]}", "invisible_characters")


# --------------------------------------------------------------------------------------------------
# Text and Markdown


def _text(text: str, filetype: str, limits: Limits, label: str) -> bytes:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.expandtabs(TAB_WIDTH).rstrip(" ") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) > limits.max_text_lines:
        raise NotCanonical(
            f"{label}: {len(lines)} lines is over the site's cap of {limits.max_text_lines}", "canonical_cap"
        )
    canonical = "\n".join(lines) + "\n" if lines else ""
    found = first_refused(canonical, allowed="\n")
    if found:
        line, column = _line_col(canonical, found[0])
        raise NotCanonical(f"{label}: line {line}, character {column}: {found[1]}", "invisible_characters")
    for n, line in enumerate(lines, start=1):
        if len(line) > limits.max_line_chars:
            raise NotCanonical(
                f"{label}: line {n} has {len(line)} characters; the site's cap is {limits.max_line_chars}",
                "canonical_cap",
            )
    if filetype == "markdown":
        _check_markdown(canonical, label)
    return _size_capped(canonical.encode("utf-8"), limits, label)


def _line_col(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _size_capped(data: bytes, limits: Limits, label: str) -> bytes:
    if len(data) > limits.max_text_bytes:
        raise NotCanonical(
            f"{label}: {len(data)} bytes is over the site's cap of {limits.max_text_bytes} for text",
            "canonical_cap",
        )
    return data


def _check_markdown(text: str, label: str) -> None:
    """Refuse Markdown that a renderer shows as nothing: raw HTML (comments included) and link
    reference definitions. The page shows the source, but the file is read rendered once released."""
    from markdown_it import MarkdownIt

    env: dict[str, Any] = {}
    tokens = MarkdownIt("commonmark").parse(text, env)
    for token in tokens:
        inline = [c for c in (token.children or ()) if c.type == "html_inline"]
        if token.type == "html_block" or inline:
            line = (token.map[0] + 1) if token.map else "?"
            raise NotCanonical(
                f"{label}: line {line}: raw HTML (or an HTML comment) is refused in Markdown: it can render "
                "as nothing; write it as text",
                "hidden_markdown",
            )
    if env.get("references"):
        name = min(env["references"])
        raise NotCanonical(
            f"{label}: link reference definition [{name}] is refused in Markdown: it renders as nothing; "
            "write links inline as [text](url)",
            "hidden_markdown",
        )


# --------------------------------------------------------------------------------------------------
# JSON


class _Refused(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Refused(f"duplicate key {key!r} in one object (a reader keeps only one of the values)")
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _json(text: str, limits: Limits, label: str) -> bytes:
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except _Refused as exc:
        raise NotCanonical(f"{label}: {exc}", "not_canonical") from None
    except json.JSONDecodeError as exc:
        raise NotCanonical(
            f"{label}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", "content_mismatch"
        ) from None
    except (RecursionError, ValueError) as exc:
        raise NotCanonical(f"{label}: JSON cannot be read ({str(exc)[:120]})", "not_canonical") from None
    _check_json(value, limits, label)
    try:
        out = json.dumps(
            value, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=False, allow_nan=False
        )
    except ValueError:
        raise NotCanonical(
            f"{label}: a number is out of range for JSON (it reads as infinity)", "not_canonical"
        ) from None
    return _size_capped((out + "\n").encode("utf-8"), limits, label)


def _check_json(value: Any, limits: Limits, label: str) -> None:
    """Depth, and the character rules on every key and string (line breaks and tabs are escaped in the
    output, so they stay visible as \\n and \\t)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while stack:
        item, depth, path = stack.pop()
        if depth > limits.max_json_depth:
            raise NotCanonical(
                f"{label}: {path}: nested deeper than the site's cap of {limits.max_json_depth}",
                "canonical_cap",
            )
        if isinstance(item, dict):
            for key, child in item.items():
                _json_string(key, f"{path} key {key[:40]!r}", label)
                stack.append((child, depth + 1, f"{path}.{key[:40]}"))
        elif isinstance(item, list):
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            _json_string(item, path, label)


def _json_string(text: str, path: str, label: str) -> None:
    found = first_refused(text, allowed="\t\n\r")
    if found:
        raise NotCanonical(f"{label}: {path}: {found[1]}", "invisible_characters")
    if not unicodedata.is_normalized("NFC", text):
        raise NotCanonical(
            f"{label}: {path}: the string is not in Unicode NFC form (it would look the same as another)",
            "invisible_characters",
        )

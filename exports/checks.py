"""Automated disclosure checks on one frozen file, computed by the service and never taken on trust.

``run_checks`` first makes sure the bytes are what the extension says (a PNG is a PNG, a CSV is UTF-8
text, a JSON file parses) and refuses the file otherwise. Then it runs the checks for the type:

- csv/tsv   table checks (sdc_tables) and identifier patterns in every cell
- txt/md    identifier patterns in the text, Markdown tables checked as tables, numbers in running text
- json      identifier patterns in the text, ACRO's verdicts if it is an ACRO results.json (refused if it
            claims to be one and is malformed), else every table-shaped value checked as a table
- png       structure, metadata, and always "review": a picture needs a checker's eyes

Each check yields pass, fail or review, with the failing cells listed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from exports import sdc_acro, sdc_capacity, sdc_documents, sdc_identifiers, sdc_png, sdc_tables
from exports.domain import CheckOutcome, CheckResult, FileChecks, FileRefused, FileRole, Location
from exports.projects import Thresholds

SEPARATORS = {"csv": ",", "tsv": "\t"}


def decode_text(data: bytes, filetype: str, label: str) -> str:
    """The text of a text-typed file, or FileRefused if its bytes are not UTF-8 text."""
    if data.startswith(sdc_png.PNG_MAGIC):
        raise FileRefused(
            f"{label}: the bytes are a PNG image; they do not match .{filetype}", "content_mismatch"
        )
    if b"\x00" in data:
        raise FileRefused(f"{label}: contains NUL bytes; a .{filetype} file must be text", "content_mismatch")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefused(
            f"{label}: not UTF-8 text (byte {exc.start}); a .{filetype} file must be text", "content_mismatch"
        ) from None
    return text.removeprefix("\ufeff")


def run_checks(
    data: bytes,
    filetype: str,
    thresholds: Thresholds,
    *,
    label: str,
    role: FileRole = FileRole.OUTPUT,
    count_columns: Sequence[str] = (),
) -> FileChecks:
    if filetype == "png":
        return FileChecks("png", (*_png(data, label), *sdc_capacity.check(data, filetype)))
    text = decode_text(data, filetype, label)
    if filetype in SEPARATORS:
        results = _table(data, text, filetype, thresholds, count_columns, label)
    elif filetype == "json":
        results = _json(text, thresholds, role, label)
    else:
        results = _text(text) + _markdown(text, thresholds)
    return FileChecks(filetype, (*results, *sdc_capacity.check(data, filetype)))


def _markdown(text: str, t: Thresholds) -> list[CheckResult]:
    tables, covered = sdc_documents.markdown_tables(text)
    results = sdc_documents.check_found(tables, t)
    prose = sdc_documents.prose_numbers(text, covered, t)
    return results + ([prose] if prose else [])


def _table(
    data: bytes, text: str, filetype: str, t: Thresholds, declared: Sequence[str], label: str
) -> list[CheckResult]:
    try:
        table = sdc_tables.parse_table(data, SEPARATORS[filetype])
    except sdc_tables.TableParseError as exc:
        unreadable = CheckResult(
            "table_parse",
            "Table structure",
            CheckOutcome.REVIEW,
            f"could not read it as a {filetype.upper()} table ({exc}); checked as text only",
        )
        return [unreadable, *_text(text)]
    missing = [c for c in declared if c not in table.frame.columns]
    if missing:
        raise FileRefused(
            f"{label}: count_columns names {', '.join(map(repr, missing))}, not a column of this table "
            f"(columns: {', '.join(map(repr, table.frame.columns[:30]))})",
            "bad_count_columns",
        )
    shape = CheckResult(
        "table_parse",
        "Table structure",
        CheckOutcome.PASS,
        f"{table.frame.height} rows x {table.frame.width} columns",
        details={"rows": table.frame.height, "columns": table.frame.columns[:200]},
    )
    return [shape, *sdc_tables.check_table(table, t, declared)]


def _text(text: str) -> list[CheckResult]:
    found: dict[str, list[Location]] = {kind: [] for kind in sdc_identifiers.KINDS}
    for line, finding in sdc_identifiers.find_in_lines(text):
        column = f"char {finding.start - _line_start(text, finding.start) + 1}"
        found[finding.kind].append(Location(line, column, sdc_identifiers.mask(finding.text), finding.kind))
    return [sdc_tables.identifier_result(kind, cells) for kind, cells in found.items()]


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _json(text: str, t: Thresholds, role: FileRole, label: str) -> list[CheckResult]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileRefused(
            f"{label}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", "content_mismatch"
        ) from None
    results = _text(text)
    if sdc_acro.looks_like_acro(obj):
        results.extend(sdc_acro.acro_results(obj, t, label))
        if role is FileRole.OUTPUT:
            results.append(
                CheckResult(
                    "acro.not_for_release",
                    "ACRO results file asked for release",
                    CheckOutcome.FAIL,
                    "an ACRO results.json is evidence for checkers "
                    "(its session summary is marked DO_NOT_RELEASE); "
                    "attach it as a supporting file instead of an output",
                )
            )
        return results
    results += sdc_documents.check_found(sdc_documents.json_tables(obj), t)
    text_numbers = sdc_documents.json_text_numbers(obj, t)
    return results + ([text_numbers] if text_numbers else [])


def _png(data: bytes, label: str) -> list[CheckResult]:
    info = sdc_png.parse_png(data, label)
    results = [
        CheckResult(
            "png_structure",
            "PNG structure",
            CheckOutcome.PASS,
            f"a well-formed PNG, {info.width} x {info.height} pixels, nothing after its end",
            details={"chunks": sorted(set(info.chunk_types))},
        ),
        CheckResult(
            "manual_review",
            "Images are always reviewed by eye",
            CheckOutcome.REVIEW,
            "look for small counts in labels, legends, annotations and outlying points",
        ),
    ]
    meta = [Location(i + 1, key, value[:200], "text chunk") for i, (key, value) in enumerate(info.texts)]
    if info.has_exif:
        meta.append(Location(len(meta) + 1, "eXIf", "", "EXIF metadata"))
    results.append(
        CheckResult(
            "png_metadata",
            "Text and EXIF metadata inside the image",
            CheckOutcome.REVIEW if meta else CheckOutcome.PASS,
            f"{len(meta)} metadata chunk(s): read them, they leave with the image"
            if meta
            else "no text or EXIF chunks",
            tuple(meta),
            len(meta),
        )
    )
    for key, value in info.texts:
        for finding in sdc_identifiers.find_identifiers(value):
            title, outcome = sdc_identifiers.KINDS[finding.kind]
            results.append(
                CheckResult(
                    f"identifiers.{finding.kind}",
                    f"{title} in image metadata",
                    outcome,
                    f"in text chunk {key!r}",
                    (Location(1, key, sdc_identifiers.mask(finding.text), finding.kind),),
                    1,
                )
            )
    return results

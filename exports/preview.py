"""How a frozen file is shown to checkers: every row of a table and every line of a text, in pages, with
flagged cells and lines marked. Nothing is truncated without a way to see the rest: the request page
shows the first page of each file and links to every other page (``requests/<id>/files/<file>?page=n``),
and lists the pages that hold flagged cells. PNGs are shown by the browser from the content URL, at
full resolution.

The bytes shown are the canonical bytes (exports.canonical), which are exactly the bytes released, so
there is no invisible character to miss. Failing cells are marked with a CSS class *and* a visible note,
so the page does not rely on colour. Carrying-capacity flags (exports.sdc_capacity) are recomputed for
the rows of the page shown, so every flagged cell is marked however many there are.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from exports import sdc_capacity
from exports.domain import CheckOutcome, FileChecks

PAGE_ROWS = 200
PAGE_LINES = 1000
SEPARATORS = {"csv": ",", "tsv": "\t"}


def _flags(checks: FileChecks) -> dict[tuple[int, str], list[str]]:
    flags: dict[tuple[int, str], list[str]] = defaultdict(list)
    for result in checks.results:
        if result.outcome is CheckOutcome.PASS or result.source != "service":
            continue
        for cell in result.cells:
            flags[(cell.row, cell.column)].append(cell.note or result.check)
    return flags


def check_names(header: list[str]) -> list[str]:
    """Column names as the checks know them: polars renames a repeated name to ``<name>_duplicated_<k>``."""
    seen: dict[str, int] = {}
    names = []
    for name in header:
        if name in seen:
            names.append(f"{name}_duplicated_{seen[name]}")
            seen[name] += 1
        else:
            seen[name] = 0
            names.append(name)
    return names


def capacity_details(checks: FileChecks) -> dict[str, Any]:
    result = next((r for r in checks.results if r.check == "capacity" and r.source == "service"), None)
    return dict(result.details) if result else {}


def _text_of(data: bytes) -> str:
    """Canonical bytes are UTF-8 without a BOM; versions frozen before canonical form may not be."""
    return data.decode("utf-8", "replace").removeprefix("\ufeff")


def pages(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


def _page_of(number: int, per_page: int) -> int:
    return (number - 1) // per_page + 1


def table_preview(data: bytes, filetype: str, checks: FileChecks, page: int = 1) -> dict[str, Any]:
    """One page of a canonical table, every cell as written, flagged cells marked."""
    text = _text_of(data)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=SEPARATORS[filetype])
    header = next(reader, [])
    rows = list(reader)
    count = pages(len(rows), PAGE_ROWS)
    page = min(max(page, 1), count)
    first = (page - 1) * PAGE_ROWS
    flags = _flags(checks)
    names = check_names(header)
    medians = capacity_details(checks).get("medians", {})
    body = []
    for number, row in enumerate(rows[first : first + PAGE_ROWS], start=first + 1):
        cells = []
        for j, value in enumerate(row):
            column = names[j] if j < len(names) else ""
            notes = list(flags.get((number, column), ()))
            capacity = sdc_capacity.cell_flag(value, medians.get(column))
            if capacity:
                notes.append(capacity)
            cells.append({"value": value, "flag": ", ".join(sorted(set(notes))) if notes else None})
        body.append({"number": number, "cells": cells})
    flagged_rows = {row for row, _ in flags}
    return {
        "header": header,
        "rows": body,
        "page": page,
        "pages": count,
        "per_page": PAGE_ROWS,
        "total": len(rows),
        "flagged_pages": sorted({_page_of(r, PAGE_ROWS) for r in flagged_rows if 0 < r <= len(rows)}),
    }


def text_preview(data: bytes, checks: FileChecks, page: int = 1) -> dict[str, Any]:
    """One page of a canonical text, every line whole (long lines wrap on the page), flagged lines marked."""
    text = _text_of(data)
    lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    count = pages(len(lines), PAGE_LINES)
    page = min(max(page, 1), count)
    first = (page - 1) * PAGE_LINES
    flagged: dict[int, list[str]] = defaultdict(list)
    for (row, _column), notes in _flags(checks).items():
        flagged[row].extend(notes)
    shown = []
    for n, line in enumerate(lines[first : first + PAGE_LINES], start=first + 1):
        notes = flagged.get(n, [])
        shown.append({"number": n, "text": line, "flag": ", ".join(sorted(set(notes))) if notes else None})
    return {
        "lines": shown,
        "page": page,
        "pages": count,
        "per_page": PAGE_LINES,
        "total": len(lines),
        "flagged_pages": sorted({_page_of(r, PAGE_LINES) for r in flagged if 0 < r <= len(lines)}),
    }


def file_preview(data: bytes, filetype: str, checks: FileChecks, page: int = 1) -> dict[str, Any]:
    if filetype == "png":
        details = capacity_details(checks)
        return {"kind": "image", "page": 1, "pages": 1, "flagged_pages": [], **details}
    if filetype in SEPARATORS:
        return {"kind": "table", **table_preview(data, filetype, checks, page)}
    return {"kind": "text", **text_preview(data, checks, page)}

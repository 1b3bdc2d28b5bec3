"""How a frozen file is shown on the request page: tables as tables with failing cells marked, text as
text with flagged lines marked. PNGs are shown by the browser from the content URL.

Failing cells are marked with a CSS class *and* a visible note, so the page does not rely on colour.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from itertools import islice
from typing import Any

from exports.domain import CheckOutcome, FileChecks

MAX_ROWS = 200
MAX_LINES = 2000
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


def table_preview(data: bytes, filetype: str, checks: FileChecks) -> dict[str, Any]:
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=SEPARATORS[filetype])
    header = next(reader, [])
    rows = list(islice(reader, MAX_ROWS + 1))
    truncated = len(rows) > MAX_ROWS
    flags = _flags(checks)
    names = check_names(header)
    body = []
    for number, row in enumerate(rows[:MAX_ROWS], start=1):
        cells = []
        for j, value in enumerate(row):
            column = names[j] if j < len(names) else ""
            notes = flags.get((number, column))
            cells.append({"value": value, "flag": ", ".join(sorted(set(notes))) if notes else None})
        body.append({"number": number, "cells": cells})
    flagged_rows = sorted({row for row, _ in flags})
    return {
        "header": header,
        "rows": body,
        "truncated": truncated,
        "max_rows": MAX_ROWS,
        "flagged_elsewhere": [r for r in flagged_rows if r > MAX_ROWS][:50],
    }


def text_preview(data: bytes, checks: FileChecks) -> dict[str, Any]:
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = text.splitlines()
    flagged: dict[int, list[str]] = defaultdict(list)
    for (row, _column), notes in _flags(checks).items():
        flagged[row].extend(notes)
    shown = [
        {"number": n, "text": line, "flag": ", ".join(sorted(set(flagged[n]))) if n in flagged else None}
        for n, line in enumerate(lines[:MAX_LINES], start=1)
    ]
    return {"lines": shown, "truncated": len(lines) > MAX_LINES, "max_lines": MAX_LINES}

"""Tables inside documents: Markdown tables in text files, and table-shaped values in JSON files.

They are checked as tables (sdc_tables), not only for identifier patterns: a count is as disclosive in a
Markdown pipe table or a JSON array of records as in a CSV. Running text is not a table: where it holds
``n=3`` the count is checked, and any other number in it is left for review; the same goes for long or
multi-line JSON strings (a CSV kept as a string). What the checks cannot reach (tables past MAX_TABLES,
JSON nested past MAX_DEPTH) is review, never a silent pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import polars as pl

from exports import sdc_tables
from exports.domain import CheckOutcome, CheckResult, Location, worst
from exports.projects import Thresholds

SEPARATOR_ROW = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
MAX_TABLES = 200
MAX_DEPTH = 12
PROSE_NUMBER = re.compile(r"[0-9]")


@dataclass(frozen=True)
class FoundTable:
    where: str
    """For a person: "the table at line 12", "$.results[0]"."""
    frame: pl.DataFrame
    first_row: int
    """What data row 1 is called in findings: its line number in a text file; 0 in JSON (see _shift)."""
    header_row: int = 0
    """What the header (row 0) is called in findings: its line number in a text file, 0 in JSON."""
    too_deep: bool = False
    """A value nested deeper than MAX_DEPTH, not looked into: the file goes to review."""


def markdown_tables(text: str) -> tuple[list[FoundTable], set[int]]:
    """Every pipe table, and the (1-based) line numbers they cover."""
    lines = text.splitlines()
    found, covered = [], set()
    i = 0
    while i < len(lines) - 1 and len(found) <= MAX_TABLES:
        if "|" in lines[i] and SEPARATOR_ROW.match(lines[i + 1]) and "-" in lines[i + 1]:
            header = _cells(lines[i])
            end = i + 2
            while end < len(lines) and "|" in lines[end] and lines[end].strip():
                end += 1
            rows = [_cells(line) for line in lines[i + 2 : end]]
            found.append(FoundTable(f"the table at line {i + 1}", _frame(header, rows), i + 3, i + 1))
            covered.update(range(i + 1, end + 1))
            i = end
        else:
            i += 1
    return found, covered


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body.removeprefix("|")
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip().replace("\\|", "|") for c in CELL_SPLIT.split(body)]


def _frame(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> pl.DataFrame:
    names: list[str] = []
    for name in header:
        name = str(name)
        while name in names:
            name += "_"
        names.append(name)
    width = len(names)
    columns = {n: [_text(r[j]) if j < len(r) else "" for r in rows] for j, n in enumerate(names)}
    return pl.DataFrame(columns, schema={n: pl.String for n in names}) if width else pl.DataFrame()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def json_tables(obj: Any) -> list[FoundTable]:
    """Arrays of records or of numbers, objects of columns ({col: {row: value}}), pandas' ``split``
    layout, and any object's own numbers (as one row named by their keys), anywhere in the document."""
    return list(islice(_walk(obj, "$", 0), MAX_TABLES + 1))


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _walk(node: Any, path: str, depth: int) -> Iterator[FoundTable]:
    if depth > MAX_DEPTH:
        yield FoundTable(path, pl.DataFrame(), 0, too_deep=True)
        return
    table = _as_table(node)
    if table is not None:
        yield FoundTable(path, table, 0)
        return
    if isinstance(node, Mapping):
        loose = {str(k): v for k, v in node.items() if _number(v) or isinstance(v, str)}
        if any(_number(v) for v in loose.values()):
            # the object's own numbers, as a one-row table named by their keys ({"n": 3, "mean_age": 54.2})
            yield FoundTable(path, _frame(list(loose), [list(loose.values())]), 0)
    children = (
        node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    )
    for key, child in children:
        if not _scalar(child):
            yield from _walk(
                child, f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]", depth + 1
            )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_table(node: Any) -> pl.DataFrame | None:
    """A table-shaped value: records, pandas' split layout, {column: {row: value}}, or a list of numbers."""
    if isinstance(node, list) and node and all(map(_scalar, node)) and any(map(_number, node)):
        return _frame(["entry"], [[v] for v in node])
    if (
        isinstance(node, list)
        and node
        and all(isinstance(r, Mapping) and all(map(_scalar, r.values())) for r in node)
    ):
        header = list(dict.fromkeys(str(k) for r in node for k in r))
        return _frame(header, [[r.get(k) for k in header] for r in node])
    if not isinstance(node, Mapping) or not node:
        return None
    if isinstance(node.get("columns"), list) and isinstance(node.get("data"), list):
        rows = [r for r in node["data"] if isinstance(r, list)]
        index = node.get("index") if isinstance(node.get("index"), list) else None
        header = [str(c) for c in node["columns"]]
        if index and len(index) == len(rows):
            return _frame(["row", *header], [[i, *r] for i, r in zip(index, rows, strict=True)])
        return _frame(header, rows)
    values = list(node.values())
    if all(isinstance(v, Mapping) and v and all(map(_scalar, v.values())) for v in values):
        rows = list(dict.fromkeys(str(r) for v in values for r in v))
        return _frame(["row", *map(str, node)], [[r, *(v.get(r) for v in values)] for r in rows])
    return None


def check_found(tables: Sequence[FoundTable], t: Thresholds) -> list[CheckResult]:
    """The table checks of every table, merged into one result per check. Past MAX_TABLES: review."""
    merged: dict[str, list[tuple[FoundTable, CheckResult]]] = {}
    for found in tables[:MAX_TABLES]:
        if found.frame.width == 0 or found.frame.height == 0:
            continue
        for result in sdc_tables.check_counts(sdc_tables.read_frame(found.frame), t, ()):
            merged.setdefault(result.check, []).append((found, _shift(result, found)))
    results = [_merge(check, parts) for check, parts in merged.items()]
    deep = [f.where for f in tables[:MAX_TABLES] if f.too_deep]
    if deep:
        results.append(
            CheckResult(
                "tables_checked",
                "Tables checked",
                CheckOutcome.REVIEW,
                f"values nested more than {MAX_DEPTH} levels deep were not looked into: "
                f"{', '.join(deep[:5])}",
            )
        )
    if len(tables) > MAX_TABLES:
        results.append(
            CheckResult(
                "tables_checked",
                "Tables checked",
                CheckOutcome.REVIEW,
                f"more than {MAX_TABLES} tables in this file: only the first {MAX_TABLES} were checked; "
                "split the file",
            )
        )
    return results


def _shift(result: CheckResult, found: FoundTable) -> CheckResult:
    """Findings named where a checker finds them: the line of a Markdown table's row; in JSON (whose
    rows are not lines) row 0 and the value's path, so no wrong line of the file is marked."""
    if found.first_row == 0:
        cells = tuple(
            replace(
                c,
                row=0,
                column=f"{found.where} row {c.row}, {c.column}" if c.row else f"{found.where} {c.column}",
            )
            for c in result.cells
        )
        return replace(result, cells=cells)

    def row(n: int) -> int:
        return found.header_row if n == 0 else n + found.first_row - 1

    return replace(result, cells=tuple(replace(c, row=row(c.row)) for c in result.cells))


def _merge(check: str, parts: list[tuple[FoundTable, CheckResult]]) -> CheckResult:
    outcome = worst(r.outcome for _, r in parts)
    shown = (
        [(f, r) for f, r in parts if r.outcome is outcome] if outcome is not CheckOutcome.PASS else parts[:1]
    )
    message = "; ".join(f"{f.where}: {r.message}" for f, r in shown[:20])
    cells = tuple(c for _, r in parts for c in r.cells)[: sdc_tables.MAX_LISTED]
    total = sum(r.cell_total for _, r in parts)
    title = parts[0][1].title + (f" ({len(parts)} tables)" if len(parts) > 1 else "")
    return CheckResult(check, title, outcome, message, cells, total)


def prose_numbers(text: str, covered: set[int], t: Thresholds) -> CheckResult | None:
    """Numbers in running text: ``n=3`` is a count and is checked; any other number is left for review."""
    low: list[Location] = []
    other: list[Location] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if number in covered or not PROSE_NUMBER.search(line):
            continue
        counts = [int(m.replace(",", "")) for m in re.findall(sdc_tables.N_EQUALS, line)]
        small = [n for n in counts if n < t.min_count and (n > 0 or t.zeros_disclosive)]
        target = low if small else other
        target.append(Location(number, "text", line.strip()[:120], f"n={small[0]}" if small else "number"))
    title = "Numbers in running text"
    if low:
        return CheckResult(
            "prose_numbers",
            title,
            CheckOutcome.FAIL,
            f"{len(low)} line(s) give a count below {t.min_count} (n=...)",
            tuple(low[:200]),
            len(low),
        )
    if other:
        return CheckResult(
            "prose_numbers",
            title,
            CheckOutcome.REVIEW,
            f"{len(other)} line(s) of running text hold numbers; "
            "the checks cannot tell whether they are counts",
            tuple(other[:200]),
            len(other),
        )
    return None


def json_text_numbers(obj: Any, t: Thresholds) -> CheckResult | None:
    """Text with numbers inside JSON strings (a CSV or a paragraph stored as one string) is prose, not a
    table the checks can read: ``n=<small>`` fails, other numbers in long or multi-line strings are review."""
    lines = []
    for path, text in _strings(obj, "$", 0):
        if "\n" in text or len(text) > 40 or re.search(sdc_tables.N_EQUALS, text):
            lines.append((path, text))
    text = "\n".join(value.replace("\n", " / ") for _, value in lines)
    result = prose_numbers(text, set(), t)
    if result is None:
        return None
    cells = tuple(replace(c, column=lines[c.row - 1][0][:200]) for c in result.cells)
    return replace(result, check="json_text_numbers", title="Numbers in JSON text", cells=cells)


def _strings(node: Any, path: str, depth: int) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif depth <= MAX_DEPTH and isinstance(node, Mapping | list):
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, child in items:
            yield from _strings(
                child, f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]", depth + 1
            )

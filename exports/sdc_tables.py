"""Disclosure checks on CSV/TSV tables, computed from the frozen bytes with polars.

- Count columns are the ones the researcher declared or, failing that, the numeric columns whose values
  are all whole and non-negative and whose name does not say they are a label (id, year, age band...).
- Cells below the minimum count (default 10) fail; zeros fail too when the project treats them as
  disclosive (ACRO's default), since a zero says "nobody in this group has it".
- For each count column: min, min excluding zero, max, sum, and whether values look rounded.
- Percentage columns fail where their denominator is below the minimum count: the denominator comes
  from a column named like "total"/"denominator", or is inferred from the row's only count column.
- Every cell is scanned for direct identifiers (see sdc_identifiers), after a vectorized pre-filter.

Rows are numbered from 1 for the first data row (the header is not counted).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from exports import sdc_identifiers as ids
from exports.domain import CheckOutcome, CheckResult, Location
from exports.projects import Thresholds

MAX_LISTED = 1000
"""Failing cells kept per check; the total is always reported."""

LABEL_NAME = re.compile(
    r"(^|[_\s.\-])(id|code|year|yr|age|month|day|date|week|time|period|rank|index|idx|group|band|category|cat|"
    r"class|level|grade|stage|zip|postcode|region|sido|sigungu|concept|quarter|decile|quintile|row)s?($|[_\s.\-])"
    r"|^unnamed|^$|^index$",
    re.IGNORECASE,
)
PERCENT_NAME = re.compile(r"pct|percent|%|proportion|(^|[_\s])prop($|[_\s])|share", re.IGNORECASE)
SUPPRESSED = r"(?i)^(<\s*[0-9]+|\*+|-+|\.+|na|n/a|nan|null|none|x|c|s|suppressed|redacted)$"
"""Markers researchers write in place of a suppressed or missing count; they do not make a column text."""
DENOMINATOR_NAME = re.compile(
    r"(^|[_\s])(denominator|denom|total|n_total|total_n|base|population|at_risk)($|[_\s])", re.IGNORECASE
)


class TableParseError(Exception):
    pass


@dataclass(frozen=True)
class ParsedTable:
    frame: pl.DataFrame
    """Every column as text, as written."""
    numbers: dict[str, pl.Series]
    """Numeric columns (at least 80% of non-empty, non-suppressed cells parse as numbers), as Float64."""


def parse_table(data: bytes, separator: str) -> ParsedTable:
    """Read every column as text (so nothing is lost to type inference), then find the numeric ones."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        frame = pl.read_csv(
            io.BytesIO(data), separator=separator, infer_schema=False, has_header=True, raise_if_empty=False
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:  # ComputeError, NoDataError, ...
        raise TableParseError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    numbers = {}
    for name in frame.columns:
        text = frame[name].str.strip_chars()
        parsed = text.str.replace_all(",", "", literal=True).cast(pl.Float64, strict=False)
        nonempty = int(
            (text.is_not_null() & (text != "") & ~text.str.contains(SUPPRESSED).fill_null(False)).sum()
        )
        numeric = int(parsed.is_not_null().sum())
        if numeric and numeric >= 0.8 * nonempty:
            numbers[name] = parsed
    return ParsedTable(frame, numbers)


def count_columns(table: ParsedTable, declared: Sequence[str]) -> list[str]:
    if declared:
        return [c for c in declared if c in table.numbers]
    found = []
    for name, values in table.numbers.items():
        present = values.drop_nulls()
        if LABEL_NAME.search(name) or PERCENT_NAME.search(name) or present.is_empty():
            continue
        if bool((present >= 0).all()) and bool((present == present.floor()).all()):
            found.append(name)
    return found


def check_table(table: ParsedTable, thresholds: Thresholds, declared: Sequence[str]) -> list[CheckResult]:
    counts = count_columns(table, declared)
    results = [
        _min_count(table, counts, thresholds, declared),
        _zeros(table, counts, thresholds),
        _summary(table, counts),
        _percentages(table, counts, thresholds),
    ]
    results.extend(scan_identifiers(table.frame))
    return results


def _cells(table: ParsedTable, masks: dict[str, pl.Series], note: str) -> tuple[tuple[Location, ...], int]:
    """Failing cells in row order (at most MAX_LISTED) and how many there are in all."""
    total = 0
    picked: list[tuple[int, int, str]] = []
    order = {name: i for i, name in enumerate(table.frame.columns)}
    for name, mask in masks.items():
        hits = mask.fill_null(False)
        total += int(hits.sum())
        for row in hits.arg_true().head(MAX_LISTED).to_list():
            picked.append((row, order[name], name))
    picked.sort()
    cells = tuple(
        Location(row + 1, name, str(table.frame[name][row]), note) for row, _, name in picked[:MAX_LISTED]
    )
    return cells, total


def _min_count(table: ParsedTable, counts: list[str], t: Thresholds, declared: Sequence[str]) -> CheckResult:
    title = f"Cells below the minimum count of {t.min_count}"
    if not counts:
        return CheckResult(
            "min_count",
            title,
            CheckOutcome.REVIEW,
            "no count columns found; if the table has counts, declare them so they are checked",
        )
    masks = {c: (table.numbers[c] > 0) & (table.numbers[c] < t.min_count) for c in counts}
    cells, total = _cells(table, masks, f"below {t.min_count}")
    how = "declared" if declared else "detected"
    cols = ", ".join(counts)
    if total:
        return CheckResult(
            "min_count",
            title,
            CheckOutcome.FAIL,
            f"{total} cell(s) in count columns ({how}: {cols}) are between 1 and {t.min_count - 1}",
            cells,
            total,
            {"count_columns": counts},
        )
    return CheckResult(
        "min_count",
        title,
        CheckOutcome.PASS,
        f"no cell below {t.min_count} in count columns ({how}: {cols})",
        details={"count_columns": counts},
    )


def _zeros(table: ParsedTable, counts: list[str], t: Thresholds) -> CheckResult:
    title = "Zero cells" + (" (disclosive in this project)" if t.zeros_disclosive else "")
    masks = {c: table.numbers[c] == 0 for c in counts}
    cells, total = _cells(table, masks, "zero")
    if not total:
        return CheckResult("zeros", title, CheckOutcome.PASS, "no zero cells in count columns")
    outcome = CheckOutcome.FAIL if t.zeros_disclosive else CheckOutcome.REVIEW
    return CheckResult(
        "zeros",
        title,
        outcome,
        f"{total} zero cell(s) in count columns: a zero tells everyone in that group lacks it",
        cells,
        total,
    )


def _rounding(values: pl.Series) -> int | None:
    nonzero = values.drop_nulls().filter(values.drop_nulls() != 0)
    if nonzero.is_empty():
        return None
    for base in (10, 5):
        if bool((nonzero % base == 0).all()):
            return base
    return None


def _summary(table: ParsedTable, counts: list[str]) -> CheckResult:
    columns: dict[str, Any] = {}
    for name in counts:
        values = table.numbers[name].drop_nulls()
        nonzero = values.filter(values != 0)
        columns[name] = {
            "min": _num(values.min()),
            "min_nonzero": _num(nonzero.min()) if not nonzero.is_empty() else None,
            "max": _num(values.max()),
            "sum": _num(values.sum()),
            "rounded_to": _rounding(values),
        }
    rounded = [f"{n} (to {c['rounded_to']})" for n, c in columns.items() if c["rounded_to"]]
    message = f"{len(columns)} count column(s)"
    message += f"; rounded: {', '.join(rounded)}" if rounded else "; no column looks rounded to 5 or 10"
    return CheckResult(
        "count_summary",
        "Count columns: min, min excluding zero, max, sum, rounding",
        CheckOutcome.PASS,
        message,
        details={"columns": columns},
    )


def _num(value: Any) -> float | int | None:
    if value is None:
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


def _percentages(table: ParsedTable, counts: list[str], t: Thresholds) -> CheckResult:
    title = f"Percentages with a denominator below {t.min_count}"
    pct_cols = [c for c in table.numbers if PERCENT_NAME.search(c)]
    if not pct_cols:
        return CheckResult("small_denominators", title, CheckOutcome.PASS, "no percentage columns")
    denominators = [c for c in counts if DENOMINATOR_NAME.search(c)]
    numerators = [c for c in counts if c not in denominators]
    masks: dict[str, pl.Series] = {}
    unknown = []
    for pct in pct_cols:
        denominator = _denominator(table, pct, denominators, numerators)
        if denominator is None:
            unknown.append(pct)
            continue
        masks[pct] = (denominator > 0) & (denominator < t.min_count)
    cells, total = _cells(table, masks, f"denominator below {t.min_count}")
    if total:
        return CheckResult(
            "small_denominators",
            title,
            CheckOutcome.FAIL,
            f"{total} percentage cell(s) rest on fewer than {t.min_count} people",
            cells,
            total,
        )
    if unknown:
        return CheckResult(
            "small_denominators",
            title,
            CheckOutcome.REVIEW,
            f"cannot tell the denominator of {', '.join(unknown)}; the context should state it",
        )
    return CheckResult(
        "small_denominators", title, CheckOutcome.PASS, f"every percentage rests on at least {t.min_count}"
    )


def _denominator(
    table: ParsedTable, pct: str, denominators: list[str], numerators: list[str]
) -> pl.Series | None:
    """Per-row denominator: a total column if there is one, else count / share from the one count column."""
    if denominators:
        return table.numbers[denominators[0]]
    if len(numerators) != 1:
        return None
    share = table.numbers[pct]
    scale = 100.0 if (share.max() or 0) > 1 else 1.0
    # percentages are usually rounded, so the inferred denominator is rounded to a whole person
    return (table.numbers[numerators[0]] / (share / scale)).round(0).fill_nan(None)


def scan_identifiers(frame: pl.DataFrame) -> list[CheckResult]:
    """Identifier patterns in any cell. A vectorized pre-filter keeps Python's regexes off most cells."""
    found: dict[str, list[Location]] = {kind: [] for kind in ids.KINDS}
    for name in frame.columns:
        column = frame[name]
        birth = bool(ids.BIRTH_WORDS.search(name))
        if birth:
            rows = column.is_not_null().arg_true()
        else:
            rows = column.str.contains(ids.PREFILTER).fill_null(False).arg_true()
        for row in rows.to_list():
            value = column[row]
            for finding in ids.find_identifiers(value, birth_context=birth):
                found[finding.kind].append(Location(row + 1, name, ids.mask(finding.text), finding.kind))
    return [identifier_result(kind, cells) for kind, cells in found.items()]


def identifier_result(kind: str, cells: list[Location]) -> CheckResult:
    title, outcome_if_found = ids.KINDS[kind]
    if not cells:
        return CheckResult(f"identifiers.{kind}", title, CheckOutcome.PASS, "none found")
    cells.sort(key=lambda c: c.row)
    return CheckResult(
        f"identifiers.{kind}",
        title,
        outcome_if_found,
        f"{len(cells)} found",
        tuple(cells[:MAX_LISTED]),
        len(cells),
    )

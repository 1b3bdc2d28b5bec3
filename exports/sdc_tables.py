"""Disclosure checks on tables (CSV/TSV, and Markdown or JSON tables), computed from the frozen bytes.

A check says pass only when it could see what its rule needs. So the first question is what each
column's numbers are:

- **count**: declared by the researcher, or named like one (n, count, freq, patients, cases, total ...),
  or written as an annotated count (``3 (0.6%)``, ``3*``, ``n=3``, ``<5``, ``≤5``).
- **count?**: whole, non-negative numbers under a name that says nothing (``F``, ``2019``,
  ``age_40_49``). They are checked as counts, and the table is sent for review: whole-number sums look
  exactly like counts, and a sum over 7 people must not pass.
- **statistic**: named like a sum, mean, median, rate, cost ... or holding fractions. Threshold,
  dominance (NK) and p% need the counts and contributions behind each cell, which a table of statistics
  does not carry: review, never pass.
- **percent**: named like a percentage. The count behind it is recovered from a count or total column
  beside it and checked; without either, review.
- **label**: named only like a label (year, age_band, region_code ...), with no value in the name, and
  holding years that are years, or no number below the minimum count. Otherwise **label?** (review: a
  "group" of 3 may be a count), or **count?** for a "year" that is not a year.

Then: cells below the minimum count (default 10) fail, as do suppression markers narrower than it
(``<5`` says 0 to 4); zeros fail where the project treats them as disclosive (ACRO's default); a
suppressed cell (``<10``, ``*``, ``-``, blank) that the row or column totals give back fails, naming the
cell (one they put at 0 is review: ACRO's margins leave suppressed cells out); a total minus a partial
breakdown is a count too (n_total 120, n_male 117: 3 women); ``n=3`` in a header is a group size; and
every cell is scanned for direct identifiers (see sdc_identifiers).

Rows are numbered from 1 for the first data row; row 0 is the header.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from exports import sdc_identifiers as ids
from exports.domain import CheckOutcome, CheckResult, Location
from exports.projects import Thresholds

MAX_LISTED = 1000
"""Failing cells kept per check; the total is always reported."""
MAX_SOLVED_CELLS = 100_000
"""Count cells beyond which secondary suppression is not solved here (review instead): the solver is
Python."""

COUNT, MAYBE_COUNT, STATISTIC, PERCENT, LABEL = "count", "count?", "statistic", "percent", "label"
MAYBE_LABEL = "label?"


def _set(words: str) -> frozenset[str]:
    """Words of column names, as one readable string per kind."""
    return frozenset(words.split())


COUNT_WORDS = _set(
    "n count counts cnt freq frequency frequencies number num no nobs obs patients patient persons "
    "person people subjects participants individuals cases deaths events admissions visits users "
    "respondents births members 명 수 건수 환자수 인원 빈도"
)
TOTAL_WORDS = _set("total totals all overall 계 합계 전체 총계")
STAT_WORDS = _set(
    "sum mean means avg average median sd std stdev stddev se sem var variance rate rates ratio min "
    "max minimum maximum iqr q1 q3 p25 p50 p75 p90 p95 percentile quantile estimate est coef "
    "coefficient beta or hr rr irr ci lci uci lower upper lo hi cost costs amount income price score "
    "value values weight height bmi los days duration length dose sbp dbp incidence prevalence "
    "mortality aggregate agg per 평균 중앙값 표준편차 비용 금액"
)
PERCENT_WORDS = _set("pct percent percentage prop proportion share fraction 비율 %")
LABEL_WORDS = _set(
    "label id code year yr age month day date week time period rank index idx group grp band category "
    "cat class level grade stage zip postcode region sido sigungu concept quarter decile quintile row "
    "sex gender name type unnamed 연도 나이 지역 성별 구분"
)
YEAR_WORDS = _set("year yr 연도")
OTHER_DIGITS = r"[\d&&[^0-9]]"
"""Digits the checks do not read (fullwidth, Arabic-Indic, ...): a count in them is left for review."""
TOTAL_LABEL = r"(?i)^\s*(total|totals|all|overall|sum|합계|계|전체|총계)\s*$"

NUM = r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|[+-]?\.[0-9]+"
INT = r"[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+"
PLAIN = rf"^({NUM})$"
PERCENT_CELL = rf"^({NUM})\s*%$"
WITH_SHARE = rf"^({INT})\s*[(\[]\s*(?:{NUM})\s*(%?)\s*[)\]]$"
"""``3 (0.6%)``; ``12 (3.4)`` too (n (%) or mean (SD): read as a count, the column left for review)."""
FOOTNOTE = rf"^({INT})\s*[*†‡§#¹²³⁴⁵⁶⁷⁸⁹]+$"
N_EQUALS = rf"(?i)(?:^|[^a-z0-9])n\s*[=:]\s*({INT})"
N_PREFILTER = r"(?i)n\s*[=:]"
BOUND = rf"^(<=|=<|≤|⩽|<|＜)\s*({INT})$"
MARKER = r"(?i)^(\*+|-+|–|—|\.+|na|n/a|nan|null|none|x|c|s|suppressed|redacted|masked|>\s*[0-9][0-9,]*)$"
"""Written in place of a suppressed or missing count (a ``<n`` bound is read separately)."""
DIGIT = r"[0-9]"

STATISTICS_MESSAGE = (
    "cannot check threshold, dominance or p% without the counts and contributions behind each cell"
)


class TableParseError(Exception):
    pass


@dataclass(frozen=True)
class ParsedTable:
    frame: pl.DataFrame
    """Every column as text, as written."""
    numbers: dict[str, pl.Series]
    """Numeric columns (at least 80% of non-empty, non-suppressed cells read as numbers), as Float64.
    Annotated counts (``3 (0.6%)``, ``3*``, ``n=3``) are read as their count."""
    annotated: dict[str, pl.Series] = field(default_factory=dict)
    """Per numeric column: cells written as annotated counts (so certainly counts)."""
    ambiguous: dict[str, pl.Series] = field(default_factory=dict)
    """Per numeric column: ``12 (3.4)`` cells, a count with its share or a mean with its SD."""
    bounds: dict[str, pl.Series] = field(default_factory=dict)
    """Per numeric column: the largest value a ``<B`` / ``≤B`` cell allows (null elsewhere)."""
    suppressed: dict[str, pl.Series] = field(default_factory=dict)
    """Per numeric column: cells hidden by a marker, a bound, or left blank."""
    unreadable: dict[str, pl.Series] = field(default_factory=dict)
    """Per numeric column: cells with digits the checks could not read."""
    percent_cells: dict[str, pl.Series] = field(default_factory=dict)
    """Per numeric column: cells written as ``12.5%``."""
    n_equals: dict[str, pl.Series] = field(default_factory=dict)
    """Per column, numeric or not: the count in an ``n=3`` written anywhere in the cell."""


def parse_table(data: bytes, separator: str) -> ParsedTable:
    """Read every column as text (so nothing is lost to type inference), then read the numbers."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        frame = pl.read_csv(
            io.BytesIO(data), separator=separator, infer_schema=False, has_header=True, raise_if_empty=False
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:  # ComputeError, NoDataError, ...
        raise TableParseError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return read_frame(frame)


def read_frame(frame: pl.DataFrame) -> ParsedTable:
    """A table of text cells (from CSV, Markdown or JSON) with its numbers read."""
    frame = frame.select(pl.all().cast(pl.String))
    table = ParsedTable(frame, {})
    for name in frame.columns:
        _read_column(table, name, frame[name].str.strip_chars())
    return table


def _int(text: pl.Series, pattern: str, group: int = 1) -> pl.Series:
    return (
        text.str.extract(pattern, group).str.replace_all(",", "", literal=True).cast(pl.Float64, strict=False)
    )


def _read_column(table: ParsedTable, name: str, text: pl.Series) -> None:
    blank = text.is_null() | (text == "")
    plain = _int(text, PLAIN)
    rest = plain.is_null() & ~blank
    none = pl.Series(name, [None] * len(text), dtype=pl.Float64)
    if not bool(rest.any()):  # the common case: plain numbers and blanks only
        _keep_numbers(table, name, text, blank, plain, none, none, none, none, none)
        return
    n_eq = _int(text, N_EQUALS) if bool(text.str.contains(N_PREFILTER).any()) else none
    if n_eq.is_not_null().any():
        table.n_equals[name] = n_eq
    if _text_column(plain, rest, text):
        return
    percent = _int(text, PERCENT_CELL)
    share = _int(text, WITH_SHARE)
    footnote = _int(text, FOOTNOTE)
    bound_value = _int(text, BOUND, 2)
    strict = text.str.extract(BOUND, 1).is_in(["<", "＜"]).fill_null(False)
    bound = pl.select(pl.when(strict).then(bound_value - 1).otherwise(bound_value)).to_series()
    _keep_numbers(table, name, text, blank, plain, percent, share, footnote, n_eq, bound)


def _text_column(plain: pl.Series, rest: pl.Series, text: pl.Series) -> bool:
    """True when the column cannot reach 80% numbers even if every cell with a digit read as one: then the
    annotated forms need not be looked for (``n=`` is looked for in every column anyway)."""
    digits = rest & text.str.contains(DIGIT).fill_null(False)
    markers = rest & ~digits & text.str.contains(MARKER).fill_null(False)
    possible = int(plain.is_not_null().sum()) + int(digits.sum())
    filled = int((plain.is_not_null() | rest).sum()) - int(markers.sum())
    return possible == 0 or possible < 0.8 * filled


def _keep_numbers(
    table: ParsedTable,
    name: str,
    text: pl.Series,
    blank: pl.Series,
    plain: pl.Series,
    percent: pl.Series,
    share: pl.Series,
    footnote: pl.Series,
    n_eq: pl.Series,
    bound: pl.Series,
) -> None:
    """Record the column as numeric if at least 80% of its filled, unsuppressed cells read as numbers."""
    value = pl.select(pl.coalesce([plain, percent, share, footnote, n_eq]).alias(name)).to_series()
    marker = bound.is_not_null()
    if bool((value.is_null() & ~blank).any()):
        marker = marker | text.str.contains(MARKER).fill_null(False)
    filled = int((~blank & ~marker).sum())
    read = int(value.is_not_null().sum())
    if not read or read < 0.8 * filled:
        return
    if share.is_not_null().any():
        ambiguous = share.is_not_null() & (text.str.extract(WITH_SHARE, 2) != "%").fill_null(False)
    else:
        ambiguous = share.is_not_null()
    table.numbers[name] = value
    table.annotated[name] = (share.is_not_null() & ~ambiguous) | footnote.is_not_null() | n_eq.is_not_null()
    table.ambiguous[name] = ambiguous
    table.bounds[name] = bound
    table.suppressed[name] = blank | marker
    table.unreadable[name] = value.is_null() & ~blank & ~marker & text.str.contains(DIGIT).fill_null(False)
    table.percent_cells[name] = percent.is_not_null()


# ---------------------------------------------------------------------------------------------------
# What the numbers are


def words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("%", " % ")
    return [w for w in re.split(r"[^0-9a-z%가-힣]+", spaced.lower()) if w]


def classify(table: ParsedTable, declared: Sequence[str] = (), min_count: int = 10) -> dict[str, str]:
    """The kind of every numeric column (see the module docstring)."""
    return {name: _kind(table, name, declared, min_count) for name in table.numbers}


def _kind(table: ParsedTable, name: str, declared: Sequence[str], min_count: int) -> str:
    w = set(words(name))
    values = table.numbers[name].drop_nulls()
    whole = bool((values >= 0).all()) and bool((values == values.floor()).all())
    annotated = bool(table.annotated[name].any())
    if name in declared or annotated:
        return COUNT  # annotated counts first: a Table 1 column "n (%)" holds "3 (0.6%)"
    if w & PERCENT_WORDS or bool(table.percent_cells[name].any()):
        return PERCENT
    if w & STAT_WORDS:
        return STATISTIC
    if whole and (w & COUNT_WORDS or w & TOTAL_WORDS or annotated):
        return COUNT
    if not whole:
        return STATISTIC
    if w and w <= LABEL_WORDS and not annotated:
        return _label_kind(w, values, min_count)
    return MAYBE_COUNT


def _label_kind(w: set[str], values: pl.Series, min_count: int) -> str:
    """Numbers under a label's name are labels only where counts could not hide in them: years that are
    years, or no value below the minimum count. A "year" of 3 is a count; a "group" of 3 may be either."""
    if w & YEAR_WORDS:
        return LABEL if bool(((values >= 1800) & (values <= 2200)).all()) else MAYBE_COUNT
    return LABEL if bool((values >= min_count).all()) else MAYBE_LABEL


def _total_column(table: ParsedTable, name: str, kinds: dict[str, str]) -> bool:
    w = set(words(name))
    return kinds.get(name) == COUNT and bool(w & TOTAL_WORDS) and w <= TOTAL_WORDS | COUNT_WORDS


# ---------------------------------------------------------------------------------------------------
# The checks


def check_table(table: ParsedTable, thresholds: Thresholds, declared: Sequence[str]) -> list[CheckResult]:
    return [*check_counts(table, thresholds, declared), *scan_identifiers(table.frame)]


def check_counts(table: ParsedTable, thresholds: Thresholds, declared: Sequence[str]) -> list[CheckResult]:
    """Every check but the identifier scan."""
    kinds = classify(table, declared, thresholds.min_count)
    counts = [c for c, k in kinds.items() if k in (COUNT, MAYBE_COUNT)]
    recovered = _recovered_counts(table, kinds)
    return [
        _statistics(table, kinds),
        _min_count(table, counts, recovered, thresholds, kinds),
        _zeros(table, counts, recovered, thresholds),
        _summary(table, counts),
        _percentages(table, kinds, thresholds),
        _secondary(table, kinds),
        _implied(table, kinds, thresholds),
    ]


Mask = tuple[str, pl.Series, str]
"""(column, cells, note)"""


def _cells(table: ParsedTable, masks: Sequence[Mask]) -> tuple[tuple[Location, ...], int]:
    """Flagged cells in row order (at most MAX_LISTED) and how many there are in all (a cell once)."""
    order = {name: i for i, name in enumerate(table.frame.columns)}
    combined: dict[str, pl.Series] = {}
    notes: dict[tuple[int, str], str] = {}
    for name, mask, note in masks:
        mask = mask.fill_null(False)
        combined[name] = combined[name] | mask if name in combined else mask
        for row in mask.arg_true().head(MAX_LISTED).to_list():
            notes.setdefault((row, name), note)
    picked = sorted(notes, key=lambda key: (key[0], order[key[1]]))[:MAX_LISTED]
    cells = tuple(
        Location(row + 1, name, str(table.frame[name][row]), notes[(row, name)]) for row, name in picked
    )
    return cells, sum(int(m.sum()) for m in combined.values())


def _statistics(table: ParsedTable, kinds: dict[str, str]) -> CheckResult:
    title = "What the numbers are: counts, or statistics the checks cannot see behind"
    by_kind: dict[str, list[str]] = {}
    for name, kind in kinds.items():
        by_kind.setdefault(kind, []).append(name)
    unreadable = [(c, m, "numbers the checks cannot read") for c, m in table.unreadable.items() if c in kinds]
    unreadable += [
        (c, table.frame[c].str.contains(OTHER_DIGITS).fill_null(False), "digits the checks do not read")
        for c in table.frame.columns
    ]
    ambiguous = [(c, m, "n (%) or mean (SD)?") for c, m in table.ambiguous.items() if bool(m.any())]
    cells, total = _cells(table, unreadable + ambiguous)
    details = {"columns": by_kind}
    problems = []
    if by_kind.get(STATISTIC):
        problems.append(
            f"{', '.join(by_kind[STATISTIC])} hold statistics (sums, means, rates ...): {STATISTICS_MESSAGE}"
        )
    if by_kind.get(MAYBE_COUNT):
        problems.append(
            f"{', '.join(by_kind[MAYBE_COUNT])} hold whole numbers under names that do not say they are "
            "counts; they were checked as counts, but if they are sums (whole-number sums look the same), "
            "this service "
            f"{STATISTICS_MESSAGE}; declare count_columns if they are counts"
        )
    if by_kind.get(MAYBE_LABEL):
        problems.append(
            f"{', '.join(by_kind[MAYBE_LABEL])} hold numbers below the minimum count under a label's name "
            "(group, rank, stage ...): read as labels, not checked as counts; declare count_columns if they "
            "are counts"
        )
    if total:
        problems.append(f"{total} cell(s) hold numbers the checks could not read as counts")
    if problems:
        return CheckResult(
            "statistics", title, CheckOutcome.REVIEW, "; ".join(problems), cells, total, details
        )
    summary = ", ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items()) or "no numbers"
    return CheckResult("statistics", title, CheckOutcome.PASS, summary, details=details)


def _min_count(
    table: ParsedTable, counts: list[str], recovered: list[Mask], t: Thresholds, kinds: dict[str, str]
) -> CheckResult:
    title = f"Cells below the minimum count of {t.min_count}"
    low = f"below {t.min_count}"
    masks: list[Mask] = [(c, (table.numbers[c] > 0) & (table.numbers[c] < t.min_count), low) for c in counts]
    masks += [
        (
            c,
            table.bounds[c] < t.min_count - 1,
            f"suppression marker narrower than the minimum count of {t.min_count}",
        )
        for c in counts
    ]
    masks += [(c, (n > 0) & (n < t.min_count), f"n= {low}") for c, n in table.n_equals.items()]
    masks += [
        (c, (n > 0) & (n < t.min_count), note)
        for c, n, note in ((c, m, f"recovered count {low}") for c, m, _ in recovered)
    ]
    cells, total = _cells(table, masks)
    header = _header_counts(table, lambda n: 0 < n < t.min_count, f"n= in the header {low}")
    cells, total = header + cells, total + len(header)
    checked = counts + [c for c in table.n_equals if c not in counts] + [c for c, _, _ in recovered]
    details = {"count_columns": counts, "kinds": kinds}
    if total:
        return CheckResult(
            "min_count",
            title,
            CheckOutcome.FAIL,
            f"{total} cell(s) are counts between 1 and {t.min_count - 1}, or say only that they are "
            f"(checked: {', '.join(checked)})",
            cells,
            total,
            details,
        )
    if not checked:
        return CheckResult(
            "min_count",
            title,
            CheckOutcome.REVIEW,
            "no count columns found; if the table has counts, declare them so they are checked",
            details=details,
        )
    return CheckResult(
        "min_count",
        title,
        CheckOutcome.PASS,
        f"no cell below {t.min_count} in {', '.join(checked)}",
        details=details,
    )


def _header_counts(table: ParsedTable, hit: Any, note: str) -> tuple[Location, ...]:
    """``Treated (n=3)`` in a column name: the size of the whole column's group (row 0 is the header)."""
    found = []
    for name in table.frame.columns:
        for m in re.finditer(N_EQUALS, name):
            if hit(int(m.group(1).replace(",", ""))):
                found.append(Location(0, name, name, note))
    return tuple(found)


def _zeros(table: ParsedTable, counts: list[str], recovered: list[Mask], t: Thresholds) -> CheckResult:
    title = "Zero cells" + (" (disclosive in this project)" if t.zeros_disclosive else "")
    masks: list[Mask] = [(c, table.numbers[c] == 0, "zero") for c in counts]
    masks += [(c, n == 0, "n=0") for c, n in table.n_equals.items()]
    masks += [(c, m == 0, "zero share") for c, m, _ in recovered]
    cells, total = _cells(table, masks)
    header = _header_counts(table, lambda n: n == 0, "n=0 in the header")
    cells, total = header + cells, total + len(header)
    if not total:
        return CheckResult("zeros", title, CheckOutcome.PASS, "no zero cells in count columns")
    outcome = CheckOutcome.FAIL if t.zeros_disclosive else CheckOutcome.REVIEW
    message = f"{total} zero cell(s) in count columns: a zero tells everyone in that group lacks it"
    return CheckResult("zeros", title, outcome, message, cells, total)


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


# ---------------------------------------------------------------------------------------------------
# Percentages: the count behind each share


def _share(table: ParsedTable, pct: str) -> pl.Series:
    """The column as a fraction of 1: percentages unless the name says proportion and no value is > 1."""
    values = table.numbers[pct]
    w = set(words(pct))
    fraction = not (w & {"pct", "percent", "percentage", "%"}) and not bool(table.percent_cells[pct].any())
    return values if fraction and (values.max() or 0) <= 1 else values / 100.0


def _totals_for_shares(kinds: dict[str, str]) -> tuple[list[str], list[str]]:
    counts = [c for c, k in kinds.items() if k in (COUNT, MAYBE_COUNT)]
    denominators = [
        c
        for c in counts
        if set(words(c)) & (TOTAL_WORDS | {"denominator", "denom", "base", "population", "risk"})
    ]
    return denominators, [c for c in counts if c not in denominators]


def _recovered_counts(table: ParsedTable, kinds: dict[str, str]) -> list[Mask]:
    """Counts recovered as share x total, for percentage columns with a total beside them and no count."""
    denominators, numerators = _totals_for_shares(kinds)
    if not denominators or numerators:
        return []
    total = table.numbers[denominators[0]]
    return [
        (pct, (_share(table, pct) * total).round(0), "recovered")
        for pct, kind in kinds.items()
        if kind == PERCENT
    ]


def _percentages(table: ParsedTable, kinds: dict[str, str], t: Thresholds) -> CheckResult:
    title = f"Percentages with a denominator below {t.min_count}"
    pct_cols = [c for c, k in kinds.items() if k == PERCENT]
    if not pct_cols:
        return CheckResult("small_denominators", title, CheckOutcome.PASS, "no percentage columns")
    denominators, numerators = _totals_for_shares(kinds)
    masks: list[Mask] = []
    unknown = []
    for pct in pct_cols:
        denominator = _denominator(table, pct, denominators, numerators)
        if denominator is None:
            unknown.append(pct)
            continue
        masks.append(
            (pct, (denominator > 0) & (denominator < t.min_count), f"denominator below {t.min_count}")
        )
    cells, total = _cells(table, masks)
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
            f"cannot tell the denominator of {', '.join(unknown)}, so not the count behind it; "
            "put the count or the total beside it",
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
    # percentages are usually rounded, so the inferred denominator is rounded to a whole person
    return (table.numbers[numerators[0]] / _share(table, pct)).round(0).fill_nan(None)


# ---------------------------------------------------------------------------------------------------
# Secondary disclosure: suppressed cells the totals give back


def _secondary(table: ParsedTable, kinds: dict[str, str]) -> CheckResult:
    title = "Suppressed cells recoverable from the table's totals"
    counts = [c for c, k in kinds.items() if k in (COUNT, MAYBE_COUNT)]
    hidden = {c: table.suppressed[c].fill_null(False).to_numpy() for c in counts}
    if not counts or not any(h.any() for h in hidden.values()):
        return CheckResult("secondary_suppression", title, CheckOutcome.PASS, "no suppressed count cells")
    if table.frame.height * len(counts) > MAX_SOLVED_CELLS:
        return CheckResult(
            "secondary_suppression",
            title,
            CheckOutcome.REVIEW,
            f"suppressed cells in a table of more than {MAX_SOLVED_CELLS:,} count cells: not solved here; "
            "check by hand that the totals do not give them back",
        )
    values = np.column_stack([table.numbers[c].fill_null(np.nan).to_numpy() for c in counts]).astype(float)
    unknown = np.column_stack([hidden[c] | np.isnan(values[:, j]) for j, c in enumerate(counts)])
    total_col = _find_total_column(table, counts, kinds, values, unknown)
    total_row = _find_total_row(table, values, unknown)
    if total_col is None and total_row is None:
        return CheckResult(
            "secondary_suppression",
            title,
            CheckOutcome.PASS,
            "suppressed cells, but no row or column totals in this table "
            "(other outputs may still give them back)",
        )
    solved = _peel(values.copy(), unknown.copy(), total_row, total_col)
    found = sorted(
        (row, j, value) for j, rows in solved.items() for row, value in rows.items() if hidden[counts[j]][row]
    )
    return _secondary_result(table, counts, found)


def _secondary_result(
    table: ParsedTable, counts: list[str], found: list[tuple[int, int, float]]
) -> CheckResult:
    """Fail for hidden cells the totals give back. A hidden cell that comes out as 0 is review: either it
    is a zero, or the totals leave the suppressed cells out (as ACRO's margins do); one that comes out
    negative means the totals do not add up over the hidden cells, which gives nothing back."""
    title = "Suppressed cells recoverable from the table's totals"
    positive = [f for f in found if f[2] > 0.5]
    zero = [f for f in found if abs(f[2]) <= 0.5]
    shown = positive or zero
    cells = tuple(
        Location(
            row + 1, counts[j], str(table.frame[counts[j]][row]), f"recoverable from the totals: {value:g}"
        )
        for row, j, value in shown[:MAX_LISTED]
    )
    if positive:
        message = (
            f"{len(positive)} suppressed cell(s) can be worked out from the other cells and the totals: "
            "suppress more cells (secondary suppression) or drop the totals"
        )
        return CheckResult("secondary_suppression", title, CheckOutcome.FAIL, message, cells, len(positive))
    if zero:
        message = (
            f"{len(zero)} suppressed cell(s) come out as 0 from the totals: either they are zeros, or the "
            "totals leave the suppressed cells out; the context should say which"
        )
        return CheckResult("secondary_suppression", title, CheckOutcome.REVIEW, message, cells, len(zero))
    return CheckResult(
        "secondary_suppression",
        title,
        CheckOutcome.PASS,
        "no suppressed cell can be worked out from the totals",
    )


def _implied(table: ParsedTable, kinds: dict[str, str], t: Thresholds) -> CheckResult:
    """A total beside a partial breakdown implies the rest: n_total 120 and n_male 117 say 3 women. The
    remainder (total minus the other columns, or the Total row minus the other rows) is a count too."""
    title = f"Counts implied by a total minus its parts, below {t.min_count}"
    counts = [c for c, k in kinds.items() if k in (COUNT, MAYBE_COUNT)]
    totals = [j for j, c in enumerate(counts) if _total_column(table, c, kinds)]
    found: list[Location] = []
    if counts and table.frame.height * len(counts) <= MAX_SOLVED_CELLS:
        values = np.column_stack([table.numbers[c].fill_null(np.nan).to_numpy() for c in counts]).astype(
            float
        )
        for j in totals[:1]:
            rest = values[:, j] - np.delete(values, j, axis=1).sum(axis=1)
            found += _small_rest(table, rest, lambda i, j=j: (i, counts[j]), t)
        row = _named_total_row(table)
        if row is not None and values.shape[0] > 1:
            rest = values[row] - np.delete(values, row, axis=0).sum(axis=0)
            found += _small_rest(table, rest, lambda c, row=row: (row, counts[c]), t)
    if found:
        message = (
            f"{len(found)} total(s) minus their parts leave fewer than {t.min_count}: the rest is a count"
        )
        return CheckResult(
            "implied_counts", title, CheckOutcome.FAIL, message, tuple(found[:MAX_LISTED]), len(found)
        )
    return CheckResult(
        "implied_counts", title, CheckOutcome.PASS, "no total minus its parts leaves a small count"
    )


def _small_rest(table: ParsedTable, rest: np.ndarray, where: Any, t: Thresholds) -> list[Location]:
    """Remainders from 1 to threshold-1, where every remainder is whole and none negative (a breakdown)."""
    known = rest[~np.isnan(rest)]
    if not len(known) or (known < -0.5).any() or not np.allclose(known, np.round(known)):
        return []
    found = []
    for i, value in enumerate(rest):
        if 0.5 < value < t.min_count:
            row, column = where(i)
            found.append(
                Location(row + 1, column, str(table.frame[column][row]), f"implies {value:g} (the rest)")
            )
    return found


def _named_total_row(table: ParsedTable) -> int | None:
    for name in table.frame.columns:
        if name not in table.numbers:
            hits = table.frame[name].str.contains(TOTAL_LABEL).fill_null(False).arg_true().to_list()
            if hits:
                return hits[0]
    return None


def _find_total_column(
    table: ParsedTable, counts: list[str], kinds: dict[str, str], values: np.ndarray, unknown: np.ndarray
) -> int | None:
    """A count column that is the sum of the others on every row where all are known."""
    named = [j for j, name in enumerate(counts) if _total_column(table, name, kinds)]
    candidates = named or ([len(counts) - 1] if len(counts) >= 3 else [])
    known = ~unknown.any(axis=1)
    for j in candidates:
        others = np.delete(values[known], j, axis=1)
        if (named or known.sum() >= 2) and np.allclose(values[known, j], others.sum(axis=1)):
            return j
    return None


def _find_total_row(table: ParsedTable, values: np.ndarray, unknown: np.ndarray) -> int | None:
    """A row labelled Total (or the last row) that is the sum of the others wherever all are known."""
    named = []
    for name in table.frame.columns:
        if name not in table.numbers:
            named += table.frame[name].str.contains(TOTAL_LABEL).fill_null(False).arg_true().to_list()
    candidates = named[:1] or ([values.shape[0] - 1] if values.shape[0] >= 3 else [])
    known = ~unknown.any(axis=0)
    for i in candidates:
        others = np.delete(values[:, known], i, axis=0)
        if (named or known.sum() >= 2) and np.allclose(values[i, known], others.sum(axis=0)):
            return i
    return None


def _peel(values: np.ndarray, unknown: np.ndarray, total_row: int | None, total_col: int | None) -> dict:
    """Solve every margin equation with one unknown, again and again, as an attacker would."""
    solved: dict[int, dict[int, float]] = {}
    rows, cols = values.shape
    lines = []
    if total_col is not None:
        lines += [[(r, c) for c in range(cols) if c != total_col] + [(r, total_col)] for r in range(rows)]
    if total_row is not None:
        lines += [[(r, c) for r in range(rows) if r != total_row] + [(total_row, c)] for c in range(cols)]
    progress = True
    while progress:
        progress = False
        for line in lines:
            *parts, total = line
            missing = [p for p in line if unknown[p]]
            if len(missing) != 1:
                continue
            (r, c) = missing[0]
            known_sum = sum(values[p] for p in parts if p != (r, c))
            values[r, c] = values[total] - known_sum if (r, c) != total else known_sum
            unknown[r, c] = False
            solved.setdefault(c, {})[r] = float(values[r, c])
            progress = True
    return solved


# ---------------------------------------------------------------------------------------------------
# Identifiers


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

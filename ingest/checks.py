"""Checks of the raw source before anything is transformed: every bad input gets a named error, none is
dropped silently, and no error ever quotes a value.

A raw cell can hold anything, including the name and e-mail of a patient typed into a date field. Errors
and audit records are permanent (the trail is append-only), so they say *where* and *what kind*: file,
table, column, row number (1-based data row: line N+1 of a CSV with a header) and the kind of problem,
never the value. Each check reports at most a few rows per column, and how many there were in all.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from ingest import normalize
from ingest.errors import SourceError
from ingest.source import SourceTable
from ingest.spec import DatasetSpec, TableSpec
from ingest.transforms import parse_dates

ROW = "__row"
SHOWN_ROWS = 3


def _rows_where(src: SourceTable, problem: pl.Expr, extra: list[pl.Expr] | None = None) -> pl.DataFrame:
    """1-based rows where ``problem`` is true (with any ``extra`` columns), the first few only."""
    frame = src.scan().with_row_index(ROW, offset=1).filter(problem)
    return frame.select(ROW, *(extra or [])).head(SHOWN_ROWS).collect()


def _count(src: SourceTable, problem: pl.Expr) -> int:
    return int(src.scan().select(problem.sum()).collect().item())


def _problem(src: SourceTable, column: str, kind: str, problem: pl.Expr) -> str | None:
    n = _count(src, problem)
    if not n:
        return None
    rows = ", ".join(str(r) for r in _rows_where(src, problem)[ROW])
    return (
        f"{src.path}: table {src.name}: column {column}: {kind} in {n} row(s) (row {rows}"
        f"{', …' if n > SHOWN_ROWS else ''}); the value is not shown"
    )


def check_columns(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> None:
    """Every column the spec publishes or needs must be in the source: a missing quasi-identifier or kept
    column is an error naming it, not a traceback or a silently narrower table."""
    problems = []
    qis = set(spec.k_anonymity.quasi_identifiers) if spec.k_anonymity else set()
    for name, src in sources.items():
        table = spec.tables[name]
        for col, rule in table.columns.items():
            if col in src.schema or rule.transform == "drop" or rule.optional:
                continue
            what = "quasi-identifier column" if name == spec.person_table and col in qis else "column"
            problems.append(
                f"{src.path}: table {name}: {what} '{col}' ({rule.label}) is missing from the source; "
                f"provide it, or mark it optional: true in {spec.path}: tables.{name}.columns.{col}"
            )
        if table.person_column is not None and table.person_column not in src.schema:
            problems.append(f"{src.path}: table {name}: the person column '{table.person_column}' is missing")
    if problems:
        raise SourceError(problems)


def check_person_ids(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> None:
    """No null person id, no type mismatch with the person table, no record of a person the person table
    lacks (the k-anonymity gate never saw such a person, so its rows would vanish unreported)."""
    person = sources[spec.person_table]
    pid_type = person.schema[spec.person_column]
    problems: list[str | None] = []
    for name, src in sources.items():
        col = spec.tables[name].person_column
        if col is None or col not in src.schema:
            continue
        if (src.schema[col] == pl.String) != (pid_type == pl.String):
            problems.append(
                f"{src.path}: table {name}: column {col}: person ids are {src.schema[col]} here but "
                f"{pid_type} in the person table (text in a number column?)"
            )
            continue
        problems.append(_problem(src, col, "a null person id", pl.col(col).is_null()))
        if name != spec.person_table:
            known = person.scan().select(pl.col(spec.person_column).unique()).collect().to_series()
            orphan = pl.col(col).is_not_null() & ~pl.col(col).is_in(known.implode())
            problems.append(_problem(src, col, "a person id that is not in the person table", orphan))
    found = [p for p in problems if p]
    if found:
        raise SourceError(found)


def check_values(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> None:
    """Values that cannot become what the spec says: text in a numeric column, an unparseable date, a
    region or postcode that cannot be generalized. Each is reported by row and value class."""
    problems: list[str | None] = []
    for name, src in sources.items():
        for col, rule in spec.tables[name].columns.items():
            if col in src.schema:
                problems += _column_problems(src, col, rule, spec.tables[name])
    found = [p for p in problems if p]
    if found:
        raise SourceError(found)


def _column_problems(src: SourceTable, col: str, rule, table: TableSpec) -> list[str | None]:
    dtype = src.schema[col]
    value = pl.col(col)
    if rule.allow is not None and rule.allow.numeric and rule.transform == "keep":
        if dtype == pl.String:
            bad = value.is_not_null() & value.cast(pl.Float64, strict=False).is_null()
            return [_problem(src, col, f"text where {rule.allow.kind}s are declared", bad)]
        if rule.allow.kind == "integer" and dtype.is_float():
            return [_problem(src, col, "a fraction where integers are declared", value != value.round(0))]
    if dtype == pl.String and (rule.transform == "date_shift" or rule.method in ("year", "birth_year")):
        parsed = parse_dates(normalize.text(value))
        if rule.method in ("year", "birth_year"):
            parsed = pl.coalesce(parsed.dt.year(), normalize.text(value).cast(pl.Int32, strict=False))
        bad = value.is_not_null() & (normalize.text(value) != "") & parsed.is_null()
        return [_problem(src, col, "not a date", bad)]
    if rule.method == "region":
        cls = normalize.region_problem(col, dtype, rule.params["level"])
        return [_class_problem(src, col, cls)]
    if rule.method == "truncate":
        return [_class_problem(src, col, normalize.postcode_problem(col, dtype))]
    if rule.method in ("age_band", "top_code") and dtype == pl.String:
        bad = value.is_not_null() & value.cast(pl.Float64, strict=False).is_null()
        return [_problem(src, col, "text where ages are expected", bad)]
    return []


def _class_problem(src: SourceTable, col: str, cls: pl.Expr) -> str | None:
    """Values that cannot be generalized, by value class (the class is ours, never the value)."""
    found = _rows_where(src, cls.is_not_null(), [cls.alias("class")])
    if found.is_empty():
        return None
    return _problem(src, col, f"cannot be generalized ({found['class'][0]})", cls.is_not_null())


def check_duplicates(spec: DatasetSpec, src: SourceTable) -> dict[str, int]:
    """Several person-table rows with one person id. k counts persons, so a copied person must not look
    like a crowd: refuse, or (``person.duplicates: merge``) keep one of rows identical in every column.
    Returns the report: duplicate persons and rows merged."""
    pid = spec.person_column
    counted = src.scan().group_by(pid).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    dup = counted.select(pl.len(), (pl.col("n") - 1).sum()).collect().row(0)
    persons, extra = int(dup[0]), int(dup[1] or 0)
    if not persons:
        return {"duplicate_persons": 0, "rows_merged": 0}
    rows = _rows_where(src, pl.col(pid).is_duplicated())[ROW].to_list()
    where = f"{src.path}: table {src.name}: column {pid}: {persons} person id(s) on more than one row (row {', '.join(map(str, rows))}, …)"
    if spec.duplicates != "merge":
        raise SourceError(
            f"{where}; k counts persons, so duplicates are refused. Remove them, or set person.duplicates: "
            f"merge in {spec.path} to merge rows that are identical"
        )
    distinct = src.scan().unique().group_by(pid).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    conflicting = int(distinct.select(pl.len()).collect().item())
    if conflicting:
        raise SourceError(f"{where}; {conflicting} of them differ between their rows and cannot be merged")
    return {"duplicate_persons": persons, "rows_merged": extra}

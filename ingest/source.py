"""Raw source tables: finding them, opening them lazily, and refusing any that do not match the spec.

A source directory holds one file per table, ``<table>.csv`` or ``<table>.parquet`` (any case), or the file
a table names with ``file:``. Every column of every source table must be named in the spec: a column the
spec does not know could be anything (a name, a note, an RRN), so it is an error, not a silent drop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from ingest.errors import SourceError
from ingest.spec import DatasetSpec, TableSpec

EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CSV_INFER_ROWS = 100_000
_AS_TEXT = {"drop", "generalize:region", "generalize:truncate"}
"""Read as text from CSV whatever they look like: zero-padded codes ('08595') and phone numbers
('01012345678') must keep their leading zeros, or the region is wrong and the leak check is blind."""


@dataclass(frozen=True)
class SourceTable:
    """One raw table. CSV is parsed once, on first use, and held in memory: every later pass (distinct ids,
    identifier values, the transform) reads that, not the text again. Parquet is scanned lazily each time."""

    name: str
    path: Path
    format: str
    columns: tuple[str, ...]
    overrides: Mapping[str, Any]
    """Column -> dtype to read CSV text as (polars ``schema_overrides``)."""

    @cached_property
    def _frame(self) -> pl.DataFrame:
        try:
            return pl.read_csv(
                self.path,
                infer_schema_length=CSV_INFER_ROWS,
                try_parse_dates=True,
                schema_overrides=dict(self.overrides),
            )
        except OSError as exc:
            raise SourceError(f"{self.path}: table {self.name}: cannot read: {exc.strerror}") from None
        except pl.exceptions.PolarsError as exc:
            # Parser messages quote the offending cell; only its kind goes out (ingest.checks has rows).
            raise SourceError(
                f"{self.path}: table {self.name}: cannot parse as CSV ({type(exc).__name__}): a value does not "
                f"fit the column type inferred from the first {CSV_INFER_ROWS} rows, or the quoting or column "
                "count is broken; the value is not shown"
            ) from None

    @cached_property
    def schema(self) -> Mapping[str, pl.DataType]:
        """Column name -> dtype as scans produce it."""
        if self.format == "parquet":
            return dict(pl.scan_parquet(self.path).collect_schema())
        return dict(self._frame.schema)

    def scan(self) -> pl.LazyFrame:
        if self.format == "parquet":
            return pl.scan_parquet(self.path)
        return self._frame.lazy()


def open_sources(spec: DatasetSpec, source_dir: Path) -> dict[str, SourceTable]:
    """Open every table the spec names; raise SourceError listing every missing table and unknown column."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise SourceError(f"{source_dir}: source directory does not exist")
    listing = {p.name.lower(): p for p in source_dir.iterdir() if p.is_file()}
    problems: list[str] = []
    tables: dict[str, SourceTable] = {}
    for t in spec.tables.values():
        found = _find(t, listing, source_dir, problems)
        if found is None:
            continue
        table = _open(t, found, problems)
        if table is None:
            continue
        unknown = [c for c in table.columns if c not in t.columns]
        for c in unknown:
            problems.append(
                f"{found}: table {t.name}: column '{c}' is not in the spec "
                f"({spec.path}: tables.{t.name}.columns); say drop, keep, pseudonymize, date_shift or generalize"
            )
        if not unknown:
            tables[t.name] = table
    if spec.person_table not in tables and not any(spec.person_table in p for p in problems):
        problems.append(f"{source_dir}: the person table '{spec.person_table}' is required")
    if problems:
        raise SourceError(problems)
    return tables


def ignored_files(spec: DatasetSpec, source_dir: Path, tables: Mapping[str, SourceTable]) -> list[str]:
    """Files in the source directory that no table uses (hidden ones aside): reported, never published."""
    used = {t.path.name for t in tables.values()}
    return sorted(
        p.name
        for p in Path(source_dir).iterdir()
        if p.is_file() and p.name not in used and not p.name.startswith(".")
    )


def _find(t: TableSpec, listing: Mapping[str, Path], source_dir: Path, problems: list[str]) -> Path | None:
    names = [t.file] if t.file else [f"{t.name}{ext}" for ext in EXTENSIONS]
    hits = [listing[n.lower()] for n in names if n.lower() in listing]
    if len(hits) > 1:
        problems.append(f"{source_dir}: table {t.name}: ambiguous, found {', '.join(p.name for p in hits)}")
        return None
    if not hits:
        if not t.optional:
            problems.append(
                f"{source_dir}: table '{t.name}' not found (looked for {', '.join(names)}); "
                f"provide it or mark the table optional: true in the spec"
            )
        return None
    return hits[0]


def _open(t: TableSpec, path: Path, problems: list[str]) -> SourceTable | None:
    """Read only the header (or Parquet footer): enough to check columns before any data is parsed."""
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        problems.append(f"{path}: table {t.name}: unsupported file type (csv or parquet)")
        return None
    try:
        if fmt == "parquet":
            columns = tuple(pl.scan_parquet(path).collect_schema())
        else:
            columns = tuple(pl.read_csv(path, n_rows=0).columns)
    except OSError as exc:
        problems.append(f"{path}: table {t.name}: cannot read: {exc.strerror}")
        return None
    except pl.exceptions.PolarsError as exc:
        problems.append(f"{path}: table {t.name}: cannot read its header ({type(exc).__name__})")
        return None
    overrides = {
        c: pl.String for c in columns if fmt == "csv" and c in t.columns and t.columns[c].label in _AS_TEXT
    }
    return SourceTable(t.name, path, fmt, columns, overrides)


_LONG_DIGITS = re.compile(r"\d[\d-]{5,}\d")
_EMAIL = re.compile(r"[^\s@'\"`]+@[^\s@'\"`]+")


def redact(message: str) -> str:
    """A library error about a bad value may quote the value; keep its first line, mask numbers and e-mails."""
    first = message.strip().splitlines()[0] if message.strip() else message
    return _EMAIL.sub("<email>", _LONG_DIGITS.sub("<number>", first))[:300]

"""Allowlisted values: every column a spec keeps says what it may hold, and nothing else is published.

A denylist detector cannot win against an adversary who knows the raw data: a resident registration
number with full-width digits, a phone as ``(02) 583-6318``, ``… at naver dot com``, a romanised name.
So a kept column declares its content (``allow:``) and every value outside the declaration is suppressed
(published as null) and counted in the manifest's ``allowlist`` report:

- ``codes`` / ``codes_file``: a code list, or an OMOP CONCEPT table (tab- or comma-separated, column
  ``concept_code`` or the one named by ``column:``);
- ``pattern``: a named code pattern (``icd10``/``kcd``, ``atc``, ``loinc``), values canonicalized first
  (``e11 .9`` -> ``E11.9``);
- ``regex``: a full-match regular expression of your own;
- ``categorical``: a bounded set learned at ingest: a value is kept only if at least ``min_persons``
  distinct persons have it and it has the declared ``shape`` (default: one code-like token, ASCII letters,
  digits and ``. _ / % + -``, no spaces: a name or a sentence is not a category), and more than
  ``max_values`` such values refuses the ingest (the column is not categorical). The identifier detector
  also vets every learned value. The learned values are listed in the manifest for the reviewer;
- ``integer`` / ``number``: numbers in a declared ``[min, max]``; text in such a column is refused with
  its row number, a number outside the range is suppressed.

The identifier detector still runs afterwards, as the second line.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ingest import normalize
from ingest.errors import SpecError

PATTERNS: dict[str, str] = {
    # ICD-10 / KCD: letter, two digits, then up to 4 more characters after an optional dot.
    "icd10": r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$",
    "kcd": r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$",
    # ATC at any level: A, A10, A10B, A10BA, A10BA02.
    "atc": r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$",
    "loinc": r"^[0-9]{1,7}-[0-9]$",
}
CODE_SHAPE = r"[A-Za-z0-9][A-Za-z0-9._/%+-]{0,39}"
"""The default shape of a learned categorical value: one code-like token."""
KINDS = ("codes", "codes_file", "pattern", "regex", "categorical", "integer", "number")
NUMERIC = ("integer", "number")


@dataclass(frozen=True)
class Allow:
    """One column's declaration. ``describe()`` is how the report names it."""

    kind: str
    codes: frozenset[str] = frozenset()
    regex: str | None = None
    pattern: str | None = None
    max_values: int | None = None
    min_persons: int | None = None
    lo: float | None = None
    hi: float | None = None
    source: str | None = None
    """For codes_file: the file's name (its hash is part of the spec hash)."""

    def describe(self) -> str:
        if self.kind in NUMERIC:
            return f"{self.kind} in [{self.lo}, {self.hi}]"
        if self.kind == "categorical":
            return (
                f"categorical (at most {self.max_values} values, each of at least {self.min_persons} persons)"
            )
        if self.kind == "pattern":
            return f"pattern {self.pattern}"
        if self.kind == "regex":
            return f"regex {self.regex}"
        if self.kind == "codes_file":
            return f"{len(self.codes)} codes from {self.source}"
        return f"{len(self.codes)} codes"

    @property
    def numeric(self) -> bool:
        return self.kind in NUMERIC


def parse(doc: Mapping[str, Any], spec_dir: Path, at: str) -> Allow:
    """An ``allow:`` mapping (exactly one kind; the schema checks the shapes)."""
    (kind,) = [k for k in KINDS if k in doc]
    v = doc[kind]
    if kind == "codes":
        return Allow(kind, codes=frozenset(str(c).strip() for c in v))
    if kind == "codes_file":
        path = (spec_dir / v).resolve()
        return Allow(kind, codes=_read_codes(path, doc.get("column"), at), source=path.name)
    if kind == "pattern":
        return Allow(kind, regex=PATTERNS[v], pattern=v)
    if kind == "regex":
        return Allow(kind, regex=f"^(?:{v})$")
    if kind == "categorical":
        shape = v.get("shape", CODE_SHAPE)
        return Allow(kind, max_values=v["max_values"], min_persons=v["min_persons"], regex=f"^(?:{shape})$")
    return Allow(kind, lo=v["min"], hi=v["max"])


def _read_codes(path: Path, column: str | None, at: str) -> frozenset[str]:
    """One code a line, or an OMOP CONCEPT table (header with ``concept_code``, tab or comma separated)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{at}.allow.codes_file: {path}: cannot read: {exc.strerror}") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise SpecError(f"{at}.allow.codes_file: {path}: no codes")
    header = lines[0]
    if column is None and "concept_code" not in header:
        return frozenset(line.strip() for line in lines)
    dialect = "excel-tab" if "\t" in header else "excel"
    rows = list(csv.DictReader(lines, dialect=dialect))
    name = column or "concept_code"
    if name not in (rows[0].keys() if rows else ()):
        raise SpecError(f"{at}.allow.codes_file: {path}: no column '{name}' in its header")
    return frozenset(str(r[name]).strip() for r in rows if r.get(name))


def canonical(name: str, dtype: pl.DataType, allow: Allow) -> pl.Expr:
    """The value as it is checked and published: normalized text, or the number as it is."""
    if allow.numeric:
        return pl.col(name)
    value = normalize.as_text(name, dtype)
    if allow.kind == "pattern" and allow.pattern in ("icd10", "kcd", "atc"):
        value = value.str.to_uppercase().str.replace_all(r"[\s.]", "")
        if allow.pattern != "atc":
            value = (
                pl.when(value.str.len_chars() > 3)
                .then(pl.concat_str(value.str.slice(0, 3), pl.lit("."), value.str.slice(3)))
                .otherwise(value)
            )
    return value


def allowed(value: pl.Expr, allow: Allow, learned: frozenset[str] | None = None) -> pl.Expr:
    """True where the canonical value is within the declaration (null stays null, not suppressed)."""
    if allow.numeric:
        return value.is_between(allow.lo, allow.hi)
    if allow.kind in ("codes", "codes_file"):
        return value.is_in(pl.Series(sorted(allow.codes), dtype=pl.String).implode())
    if allow.kind == "categorical":
        return value.is_in(pl.Series(sorted(learned or ()), dtype=pl.String).implode())
    return value.str.contains(allow.regex or "^$")


def learn(frame: pl.LazyFrame, name: str, dtype, person: str | None, allow: Allow) -> pl.DataFrame:
    """The categorical values of one column that at least ``min_persons`` distinct persons hold (or rows,
    for a table without persons): (value, persons), most frequent first.

    Distinct (raw value, person) pairs first, then each distinct raw value canonicalized once: the text
    work is per spelling, not per row."""
    raw = pl.col(name).alias("raw")
    if person:
        pairs = frame.select(raw, pl.col(person).alias("p")).unique()
        counted = pl.col("p").n_unique()
    else:
        pairs = frame.select(raw).group_by("raw").agg(pl.len().alias("n"))
        counted = pl.col("n").sum()
    spellings = pairs.select("raw").unique().with_columns(canonical("raw", dtype, allow).alias("value"))
    return (
        pairs.join(spellings, on="raw")
        .drop_nulls("value")
        .filter(pl.col("value").str.contains(allow.regex or "^$"))
        .group_by("value")
        .agg(counted.alias("persons"))
        .filter(pl.col("persons") >= allow.min_persons)
        .sort(["persons", "value"], descending=[True, False])
        .collect()
    )

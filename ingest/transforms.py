"""Column transforms as polars expressions: date shift, and the generalizations.

Pseudonymization itself is a join against a table of (value, pseudonym) built by ingest.prf, so it is not
here. Each function takes the column's source dtype, because a CSV gives text where Parquet gives dates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from ingest import normalize
from ingest.spec import ColumnRule

OFFSET = "__offset_days"
"""Name of the per-row day-offset column the pipeline joins in from the person domain."""


DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y/%m/%d",
    "%Y%m%d",
)
"""Date text formats a source may use. Each is tried in turn, so one bad cell cannot change how the
others parse (polars infers a single format from the first value otherwise)."""


def parse_dates(text: pl.Expr) -> pl.Expr:
    """Text to datetime by the first format that fits; null where none does (ingest.checks refuses those
    rows, by row number, before anything is transformed)."""
    return pl.coalesce([text.str.to_datetime(f, strict=False) for f in DATE_FORMATS])


def as_temporal(name: str, dtype: pl.DataType) -> pl.Expr:
    """A date or datetime column; text is normalized first (full-width digits, odd dashes, spaces)."""
    col = pl.col(name)
    if dtype == pl.String:
        from ingest.normalize import text

        return parse_dates(text(col))
    return col


def date_shift(name: str, dtype: pl.DataType) -> pl.Expr:
    """Add the person's offset in whole days: intervals within a person survive exactly."""
    return (as_temporal(name, dtype) + pl.duration(days=pl.col(OFFSET))).alias(name)


def generalize(rule: ColumnRule, dtype: pl.DataType, reference_year: int) -> pl.Expr:
    method = rule.method
    p = rule.params
    col = pl.col(rule.column)
    if method == "year":
        return _year(rule.column, dtype).alias(rule.column)
    if method == "birth_year":
        return _birth_year(_year(rule.column, dtype), reference_year, p.get("top_code_age"), p["band"]).alias(
            rule.column
        )
    if method == "age_band":
        return _age_band(col, p["width"], p.get("top_code")).alias(rule.column)
    if method == "top_code":
        top = p["top_code"]
        return pl.when(col > top).then(pl.lit(top).cast(dtype)).otherwise(col).alias(rule.column)
    if method == "region":
        return normalize.region(rule.column, dtype, p["level"]).alias(rule.column)
    if method == "truncate":
        return normalize.postcode(rule.column, dtype, p["keep"]).alias(rule.column)
    raise ValueError(f"unknown generalization {method!r}")


def _year(name: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int32)
    if dtype == pl.String:  # a date, or a bare year written as text ('1963', '1963.0')
        year = normalize.code(pl.col(name)).cast(pl.Int32, strict=False)
        return pl.coalesce(as_temporal(name, dtype).dt.year().cast(pl.Int32), year)
    return as_temporal(name, dtype).dt.year().cast(pl.Int32)


def _birth_year(year: pl.Expr, reference_year: int, top_code_age: int | None, band: int) -> pl.Expr:
    """Top-code, then band. With top_code_age 90 and reference year 2025, everyone born in 1935 or before
    becomes 1935: the year means 'aged 90 or over'. A band of 5 floors years to multiples of 5."""
    if top_code_age is not None:
        floor = reference_year - top_code_age
        year = pl.when(year < floor).then(pl.lit(floor, pl.Int32)).otherwise(year)
    if band > 1:
        year = (year // band) * band
    return year.cast(pl.Int32)


def _age_band(age: pl.Expr, width: int, top: int | None) -> pl.Expr:
    """'40-44' style labels; ages at or above ``top`` become '90+'."""
    lo = (age // width * width).cast(pl.Int64)
    label = pl.format("{}-{}", lo, lo + (width - 1))
    if top is None:
        return label
    return pl.when(age >= top).then(pl.lit(f"{top}+")).otherwise(label)


def coarsen_date(expr: pl.Expr, unit: str) -> pl.Expr:
    """A shifted date floored to the start of its week or month (per-project coarsening)."""
    if unit == "day":
        return expr
    return expr.dt.truncate("1w" if unit == "week" else "1mo")


def coarsen_number(expr: pl.Expr, how: Mapping[str, Any]) -> pl.Expr:
    """Rounded to a multiple of ``round``, or floored to the lower edge of its bin (below the first edge:
    the first edge)."""
    if "round" in how:
        step = float(how["round"])
        return ((expr / step).round(0) * step).cast(pl.Float64)
    edges = sorted(float(e) for e in how["bins"])
    out = pl.lit(edges[0], pl.Float64)
    for edge in edges[1:]:
        out = pl.when(expr >= edge).then(pl.lit(edge, pl.Float64)).otherwise(out)
    return pl.when(expr.is_null()).then(pl.lit(None, pl.Float64)).otherwise(out)

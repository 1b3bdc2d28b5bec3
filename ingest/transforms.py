"""Column transforms as polars expressions: date shift, and the generalizations.

Pseudonymization itself is a join against a table of (value, pseudonym) built by ingest.prf, so it is not
here. Each function takes the column's source dtype, because a CSV gives text where Parquet gives dates.
"""

from __future__ import annotations

import polars as pl

from ingest.spec import ColumnRule

OFFSET = "__offset_days"
"""Name of the per-row day-offset column the pipeline joins in from the person domain."""

_DIGITS = r"^\d+$"
_REGION_DIGITS = {"sido": 2, "sigungu": 5}
"""Korean administrative codes: 시도 is the first 2 digits, 시군구 the first 5 (행정표준코드)."""
_REGION_WORDS = {"sido": 1, "sigungu": 2}
"""Korean addresses by name: '서울특별시 강남구 ...' -> 시도 is the first word, 시군구 the first two."""


def as_temporal(name: str, dtype: pl.DataType) -> pl.Expr:
    """A date or datetime column; text is parsed strictly (a bad value fails the ingest, naming the column)."""
    col = pl.col(name)
    if dtype == pl.String:
        return col.str.to_datetime(strict=True)
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
        return _region(col.cast(pl.String), p["level"]).alias(rule.column)
    if method == "truncate":
        return col.cast(pl.String).str.slice(0, p["keep"]).alias(rule.column)
    raise ValueError(f"unknown generalization {method!r}")


def _year(name: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int32)
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


def _region(text: pl.Expr, level: str) -> pl.Expr:
    code = text.str.slice(0, _REGION_DIGITS[level])
    words = text.str.split(" ").list.head(_REGION_WORDS[level]).list.join(" ")
    return pl.when(text.str.contains(_DIGITS)).then(code).otherwise(words)

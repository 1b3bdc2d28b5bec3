"""Normalization before generalization and before any check: one canonical spelling of every raw value.

An adversary (or a careless export) writes the same thing many ways: full-width digits (１２３), en-dashes,
a trailing space, a float's ``.0`` (``11680.0``). A rule that slices or matches the raw spelling then does
the wrong thing quietly: ``'11680 '`` is not all digits, so the region rule took it as a word and published
the 5-digit 시군구 code where the spec asked for the 2-digit 시도. Every value is therefore normalized
first (NFKC, one dash, trimmed, ``.0`` stripped), and a value that still cannot be generalized is refused
with its table, column, row number and *value class*, never the value.
"""

from __future__ import annotations

import polars as pl

DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
"""Hyphen, non-breaking hyphen, figure dash, en dash, em dash, bar, minus, small and full-width hyphens."""
SPACES = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"

# 시도 (first-level divisions) by their official names and the short forms extracts use.
SIDO_NAMES: dict[str, str] = {}
for _official, *_aliases in (
    ("서울특별시", "서울", "서울시"),
    ("부산광역시", "부산", "부산시"),
    ("대구광역시", "대구", "대구시"),
    ("인천광역시", "인천", "인천시"),
    ("광주광역시", "광주", "광주시"),
    ("대전광역시", "대전", "대전시"),
    ("울산광역시", "울산", "울산시"),
    ("세종특별자치시", "세종", "세종시"),
    ("경기도", "경기"),
    ("강원특별자치도", "강원", "강원도"),
    ("충청북도", "충북"),
    ("충청남도", "충남"),
    ("전북특별자치도", "전북", "전라북도"),
    ("전라남도", "전남"),
    ("경상북도", "경북"),
    ("경상남도", "경남"),
    ("제주특별자치도", "제주", "제주도"),
):
    for _name in (_official, *_aliases):
        SIDO_NAMES[_name] = _official
REGION_DIGITS = {"sido": 2, "sigungu": 5}


def text(expr: pl.Expr) -> pl.Expr:
    """NFKC (full-width digits and letters become ASCII), every dash one '-', every space one ' ', no
    zero-width characters, trimmed."""
    out = expr.str.normalize("NFKC")
    out = out.str.replace_all(f"[{ZERO_WIDTH}]", "")
    out = out.str.replace_all(f"[{DASHES}]", "-")
    out = out.str.replace_all(f"[{SPACES}\t]", " ")
    return out.str.strip_chars()


def code(expr: pl.Expr) -> pl.Expr:
    """A code as text: normalized, and a float's trailing ``.0`` (``11680.0``) removed."""
    return text(expr).str.replace(r"^(\d+)\.0+$", "${1}")


def as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """Any column as normalized code text (integers and floats from Parquet included)."""
    col = pl.col(name)
    if dtype.is_float():
        col = pl.when(col == col.round(0)).then(col.cast(pl.Int64, strict=False)).otherwise(col)
    return code(col.cast(pl.String))


def region(name: str, dtype: pl.DataType, level: str) -> pl.Expr:
    """시도 or 시군구 from an administrative code (first 2 or 5 digits) or from an address by name (first one
    or two words, the 시도 canonicalized to its official name). Null where it cannot be generalized; the
    pipeline refuses such values before publishing (see :func:`region_problem`)."""
    value = as_text(name, dtype)
    digits = value.str.replace_all(r"[\s-]", "")
    words = value.str.replace_all(r"\s+", " ").str.split(" ")
    sido = words.list.first().replace_strict(SIDO_NAMES, default=None, return_dtype=pl.String)
    by_name = (
        sido if level == "sido" else pl.concat_str(sido, pl.lit(" "), words.list.get(1, null_on_oob=True))
    )
    need = REGION_DIGITS[level]
    return (
        pl.when(digits.str.contains(r"^\d+$") & (digits.str.len_chars() >= need))
        .then(digits.str.slice(0, need))
        .when(digits.str.contains(r"^\d+$"))
        .then(pl.lit(None, pl.String))
        .otherwise(by_name)
    )


def region_problem(name: str, dtype: pl.DataType, level: str) -> pl.Expr:
    """The value class of a region that cannot be generalized, or null if it can."""
    value = as_text(name, dtype)
    digits = value.str.replace_all(r"[\s-]", "")
    need = REGION_DIGITS[level]
    return (
        pl.when(value.is_null() | (value == ""))
        .then(pl.lit(None, pl.String))
        .when(digits.str.contains(r"^\d+$") & (digits.str.len_chars() < need))
        .then(pl.lit(f"a code with fewer than {need} digits"))
        .when(digits.str.contains(r"^\d+$"))
        .then(pl.lit(None, pl.String))
        .when(region(name, dtype, level).is_null())
        .then(pl.lit("text that does not start with a 시도 name (nor a 시도 and a 시군구)"))
        .otherwise(pl.lit(None, pl.String))
    )


def postcode(name: str, dtype: pl.DataType, keep: int) -> pl.Expr:
    """The first ``keep`` digits of a 5-digit (or old 6-digit ``123-456``) postcode."""
    digits = as_text(name, dtype).str.replace_all(r"[\s-]", "")
    return pl.when(digits.str.contains(r"^\d{5,6}$")).then(digits.str.slice(0, keep))


def postcode_problem(name: str, dtype: pl.DataType) -> pl.Expr:
    value = as_text(name, dtype)
    digits = value.str.replace_all(r"[\s-]", "")
    return (
        pl.when(value.is_null() | (value == "") | digits.str.contains(r"^\d{5,6}$"))
        .then(pl.lit(None, pl.String))
        .otherwise(pl.lit("not a 5- or 6-digit postcode"))
    )

"""Pseudonym domains: each distinct raw id hashed once, then applied back to every table that uses it.

A domain is a set of columns whose equal values must get equal pseudonyms (``person_id`` in every table,
``visit_occurrence_id`` in visits and in the records that point at visits). For each domain the distinct
raw values are collected across all its columns and pushed through the keyed PRF once (ingest.prf).

Applying the result back is a lookup, not a row-by-row hash. OMOP surrogate keys are usually dense
integers, so the common case is an array indexed by ``id - min`` and a polars ``gather``: no hashing, no
join, order preserved. Sparse or text ids fall back to an order-preserving left join.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from ingest.errors import IngestError
from ingest.keys import purpose_key
from ingest.prf import HashPool, to_day_offsets, to_pseudonyms
from ingest.source import SourceTable

MAX_DENSE_SPAN = 256_000_000
"""Largest id range (max - min + 1) given a lookup array (2 GB of pseudonyms at most)."""
DENSE_FILL = 8
"""A range may be at most this many times the number of distinct ids to count as dense."""
HASH_SLICE = 8_000_000
"""Distinct values are turned into text and hashed this many at a time, to bound memory."""
_KEY = "__key"


@dataclass(frozen=True)
class DomainMap:
    domain: str
    size: int
    """Number of distinct raw values."""
    base: int | None = None
    """Dense domains: lookup index = raw id - base."""
    lookup: pl.Series | None = None
    """Dense domains: pseudonym by index (0 where no id has that value)."""
    offset_lookup: pl.Series | None = None
    keys: pl.Series | None = None
    """Sparse domains: distinct raw values (Int64 if every column of the domain is an integer, else String)."""
    pseudonyms: pl.Series | None = None
    offsets: pl.Series | None = None
    """Sparse domains: day offsets, for the person domain only."""

    def keep_only(self, lf: pl.LazyFrame, column: str, kept: pl.Series) -> pl.LazyFrame:
        """Rows whose raw ``column`` value's pseudonym is in ``kept``; rows with no value go too."""
        if self.lookup is not None:
            # Unused slots hold 0, which is never a pseudonym (they are all >= 2**62).
            chosen = self.lookup.is_in(kept.implode())
            return lf.filter(pl.lit(chosen).gather(pl.col(column).cast(pl.Int64) - self.base))
        assert self.keys is not None and self.pseudonyms is not None
        raw = self.keys.filter(self.pseudonyms.is_in(kept.implode()))
        return lf.filter(pl.col(column).cast(self.keys.dtype).is_in(raw.implode()))

    def apply(self, lf: pl.LazyFrame, column: str, out: str, offset_out: str | None = None) -> pl.LazyFrame:
        """Add ``out`` (the pseudonym of ``column``) and, if asked, ``offset_out`` (its day offset)."""
        if self.lookup is not None:
            index = pl.col(column).cast(pl.Int64) - self.base
            added = [pl.lit(self.lookup).gather(index).alias(out)]
            if offset_out and self.offset_lookup is not None:
                added.append(pl.lit(self.offset_lookup).gather(index).alias(offset_out))
            return lf.with_columns(added)
        assert self.keys is not None and self.pseudonyms is not None
        right = pl.DataFrame({_KEY + out: self.keys, out: self.pseudonyms})
        if offset_out and self.offsets is not None:
            right = right.with_columns(self.offsets.alias(offset_out))
        return lf.join(
            right.lazy(),
            left_on=pl.col(column).cast(self.keys.dtype),
            right_on=_KEY + out,
            how="left",
            coalesce=False,
            maintain_order="left",
        ).drop(_KEY + out)


def build_domain_map(
    domain: str,
    members: list[tuple[str, str]],
    sources: Mapping[str, SourceTable],
    key: bytes,
    pool: HashPool,
    *,
    max_shift_days: int | None = None,
) -> DomainMap:
    """Hash the domain's distinct values under its purpose key; add day offsets if ``max_shift_days``."""
    integer = all(sources[t].schema[c].is_integer() for t, c in members)
    columns = [(sources[t], c) for t, c in members]
    distinct, base, span = _distinct(columns, pl.Int64 if integer else pl.String)
    pseudonyms = to_pseudonyms(_prf(pool, purpose_key(key, f"pseudonym/{domain}"), distinct))
    if pl.Series(pseudonyms).n_unique() != len(pseudonyms):  # 62-bit values: about 1e-5 for 13 million ids
        raise IngestError(f"pseudonym domain {domain}: two ids got the same pseudonym; rotate the master key")
    offsets = None
    if max_shift_days is not None:
        offsets = to_day_offsets(_prf(pool, purpose_key(key, "date-shift"), distinct), max_shift_days)
    if base is None or span > DENSE_FILL * max(len(distinct), 1):
        return DomainMap(
            domain,
            len(distinct),
            keys=distinct,
            pseudonyms=pl.Series(pseudonyms),
            offsets=pl.Series(offsets) if offsets is not None else None,
        )
    index = distinct.to_numpy() - base
    lookup = np.zeros(span, dtype=np.int64)
    lookup[index] = pseudonyms
    offset_lookup = None
    if offsets is not None:
        offset_lookup = np.zeros(span, dtype=np.int32)
        offset_lookup[index] = offsets
    return DomainMap(
        domain,
        len(distinct),
        base=base,
        lookup=pl.Series(lookup),
        offset_lookup=pl.Series(offset_lookup) if offset_lookup is not None else None,
    )


def _prf(pool: HashPool, key: bytes, distinct: pl.Series) -> np.ndarray:
    # The PRF input is always the text form, so an id read as 42 from Parquet and "42" from CSV agree.
    parts = [
        pool.prf64(key, distinct.slice(i, HASH_SLICE).cast(pl.String))
        for i in range(0, len(distinct), HASH_SLICE)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _column(src: SourceTable, column: str, dtype: pl.DataType, unique: bool = False) -> pl.Series:
    expr = pl.col(column).cast(dtype)
    return src.scan().select(expr.unique() if unique else expr).collect().to_series().drop_nulls()


def _distinct(
    columns: list[tuple[SourceTable, str]], dtype: pl.DataType
) -> tuple[pl.Series, int | None, int]:
    """Distinct values over all columns of a domain, read one column at a time. Integers in a small enough
    range go through a bitmap (linear, no hashing, memory of one bit-ish per possible id)."""
    if dtype == pl.Int64:
        bounds = [
            src.scan()
            .select(pl.col(c).cast(pl.Int64).min().alias("lo"), pl.col(c).cast(pl.Int64).max().alias("hi"))
            .collect()
            .row(0)
            for src, c in columns
        ]
        present = [b for b in bounds if b[0] is not None]
        if present:
            lo, hi = min(b[0] for b in present), max(b[1] for b in present)
            span = hi - lo + 1
            if span <= MAX_DENSE_SPAN:
                seen = np.zeros(span, dtype=bool)
                for src, c in columns:
                    seen[_column(src, c, dtype).to_numpy() - lo] = True
                return pl.Series(np.flatnonzero(seen) + lo, dtype=pl.Int64), lo, span
    parts = [_column(src, c, dtype, unique=True) for src, c in columns]
    return pl.concat(parts).unique().sort(), None, 0

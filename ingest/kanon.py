"""The k-anonymity gate: equivalence classes over declared quasi-identifiers, and suppression down to k.

A class is the set of persons sharing every quasi-identifier value (after generalization: birth-year band,
sex, 시도 ...); a missing value is a value like any other. A class smaller than k cannot be kept partly, so
every person in it is suppressed: this removes exactly the persons needed and no more, and one pass is
enough because removing one class never changes another's size. The same holds for the optional l (distinct
l-diversity): a class with fewer than l distinct values of a sensitive attribute is suppressed whole.

Sensitive attributes may live in another table linked by the person column (the conditions of a person);
their l-diversity is then counted over the person-to-record join, as pycanon counts it on the joined frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

CLASS = "__class"
SIZE = "__class_size"
BUCKETS: tuple[tuple[int, int | None], ...] = (
    (1, 1),
    (2, 2),
    (3, 3),
    (4, 4),
    (5, 9),
    (10, 19),
    (20, 49),
    (50, 99),
    (100, 999),
    (1000, None),
)


@dataclass(frozen=True)
class KAnonymityReport:
    k_required: int
    l_required: int | None
    quasi_identifiers: tuple[str, ...]
    records: int
    suppressed: int
    k_before: int | None
    k_achieved: int | None
    classes_before: int
    classes_after: int
    histogram_before: Mapping[str, Mapping[str, int]]
    histogram_after: Mapping[str, Mapping[str, int]]
    l_diversity: Mapping[str, int | None]
    """Sensitive attribute -> distinct l-diversity after suppression (None: no records left to measure)."""

    def as_dict(self) -> dict:
        return {
            "k_required": self.k_required,
            "l_required": self.l_required,
            "quasi_identifiers": list(self.quasi_identifiers),
            "records": self.records,
            "suppressed": self.suppressed,
            "k_before": self.k_before,
            "k_achieved": self.k_achieved,
            "classes_before": self.classes_before,
            "classes_after": self.classes_after,
            "class_size_histogram_before": self.histogram_before,
            "class_size_histogram_after": self.histogram_after,
            "l_diversity": dict(self.l_diversity),
        }


def _bucket(lo: int, hi: int | None) -> str:
    return str(lo) if lo == hi else (f"{lo}-{hi}" if hi is not None else f"{lo}+")


def histogram(sizes: pl.Series) -> dict[str, dict[str, int]]:
    """Classes and records per class-size bucket."""
    out = {}
    for lo, hi in BUCKETS:
        in_bucket = sizes.filter((sizes >= lo) & (sizes <= (hi if hi is not None else sizes.max() or lo)))
        if len(in_bucket):
            out[_bucket(lo, hi)] = {"classes": len(in_bucket), "records": int(in_bucket.sum())}
    return out


def enforce(
    persons: pl.DataFrame,
    person_column: str,
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    sensitive: Mapping[str, pl.DataFrame] | None = None,
    l: int | None = None,
) -> tuple[pl.Series, KAnonymityReport]:
    """Persons to keep (their ``person_column`` values) and the report.

    ``sensitive`` maps an attribute name to a frame of (``person_column``, value) rows.
    """
    qi = list(quasi_identifiers)
    keys = persons.select(qi).unique().with_row_index(CLASS)
    # nulls_equal: a missing quasi-identifier is a value like any other, and its holders form one class.
    classes = persons.select(person_column, *qi).join(keys, on=qi, how="left", nulls_equal=True)
    # A class's size is its number of distinct persons, not rows: five copies of one person are one person.
    sizes = classes.group_by(CLASS).agg(pl.col(person_column).n_unique().alias(SIZE))
    failing = sizes.filter(pl.col(SIZE) < k).select(CLASS)
    diversity = _diversity(classes, person_column, sensitive or {})
    if l is not None:
        for frame in diversity.values():
            failing = pl.concat([failing, frame.filter(pl.col("l") < l).select(CLASS)])
    # A class with no sensitive records at all has nothing to diversify; l only judges classes it can see.
    kept_classes = sizes.join(failing.unique(), on=CLASS, how="anti")
    kept = classes.join(kept_classes.select(CLASS), on=CLASS, how="semi")
    report = KAnonymityReport(
        k_required=k,
        l_required=l,
        quasi_identifiers=tuple(qi),
        records=persons[person_column].n_unique(),
        suppressed=persons[person_column].n_unique() - kept[person_column].n_unique(),
        k_before=_min(sizes[SIZE]),
        k_achieved=_min(kept_classes[SIZE]),
        classes_before=sizes.height,
        classes_after=kept_classes.height,
        histogram_before=histogram(sizes[SIZE]),
        histogram_after=histogram(kept_classes[SIZE]),
        l_diversity={
            name: _min(frame.join(kept_classes.select(CLASS), on=CLASS, how="semi")["l"])
            for name, frame in diversity.items()
        },
    )
    return kept[person_column].unique(maintain_order=True), report


def _diversity(classes: pl.DataFrame, person_column: str, sensitive: Mapping[str, pl.DataFrame]) -> dict:
    """Attribute -> frame of (class, distinct values l) over the person-to-record join."""
    out = {}
    for name, rows in sensitive.items():
        value = next(c for c in rows.columns if c != person_column)
        joined = rows.join(classes.select(person_column, CLASS), on=person_column, how="inner")
        out[name] = joined.group_by(CLASS).agg(pl.col(value).n_unique().alias("l"))
    return out


def _min(values: pl.Series) -> int | None:
    return int(values.cast(pl.Int64).min()) if len(values) else None  # type: ignore[arg-type]

"""Re-identification risk and cross-project linkage, measured on what a project is about to see.

k-anonymity holds only over the quasi-identifiers a spec declares. The data carries others: the provider a
person sees, the set of their conditions, the gaps between their visits, their lab results. ARX and
sdcMicro measure risk as the share of records unique on a combination, and the smallest equivalence class;
this module does the same, per person, for the declared set and for each candidate the data carries:

- ``provider`` / ``care_site``: the declared quasi-identifiers plus the person's provider (or set of them);
- ``conditions``: the declared quasi-identifiers plus the person's set of condition codes;
- ``visit_gaps``: the person's sequence of gaps between visits, alone, over persons with 2 or more visits;
- ``lab_sequence``: the declared quasi-identifiers plus the person's labs (code, value, day relative to the
  first).

Linkage: per-project keys make pseudonyms unrelated, but two projects that get the same person's clinical
content can join on it. ``linkage`` joins this project's output with what another declared project gets
from the same source, on every column both publish (ids aside, dates as days since the person's first date
in the table, each coarsened to the coarser of the two), and counts persons linked one to one, and how many
of those are right. Both sides are computed in this project's pseudonym space and date offsets, so the truth
is known; using one set of offsets for both sides makes coarsened dates agree more than they would, so the
measure errs towards more linkage, not less.

Signatures: a person's rows in a table are hashed row by row (``struct.hash``) and added up (count and two
32-bit halves), which is order-free: a multiset of rows, and with relative dates in the rows, a sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import polars as pl

P = "__person"
H = "__h"


def _row_hash(columns: Sequence[str]) -> pl.Expr:
    if not columns:
        return pl.lit(0, pl.UInt64)
    return pl.struct(columns).hash(seed=7)


def relative_dates(lf: pl.LazyFrame, person: str, dates: Sequence[str]) -> pl.LazyFrame:
    """Dates as days since the person's first date in the table: shift-invariant, so comparable across
    projects whose offsets differ."""
    if not dates:
        return lf
    first = pl.min_horizontal([pl.col(d).cast(pl.Date) for d in dates]).min().over(person)
    return lf.with_columns((pl.col(d).cast(pl.Date) - first).dt.total_days().alias(d) for d in dates)


def multiset(lf: pl.LazyFrame, person: str, columns: Sequence[str], name: str, distinct: bool = False):
    """Per person: (rows, sum of high halves, sum of low halves) of the row hashes, as one u64 column."""
    rows = lf.select(pl.col(person).alias(P), _row_hash(columns).alias(H))
    if distinct:
        rows = rows.unique()
    sig = rows.group_by(P).agg(
        pl.len().cast(pl.UInt64).alias("n"),
        (pl.col(H) // 2**32).sum().alias("hi"),
        (pl.col(H) % 2**32).sum().alias("lo"),
    )
    return sig.select(P, pl.struct("n", "hi", "lo").hash(seed=11).alias(name))


def class_stats(frame: pl.DataFrame, keys: Sequence[str]) -> dict:
    """Persons, share of persons unique on ``keys``, and the smallest class (in distinct persons)."""
    persons = frame[P].n_unique()
    if not persons:
        return {"persons": 0, "unique_persons": 0, "unique_share": 0.0, "smallest_class": None}
    sizes = frame.group_by(list(keys)).agg(pl.col(P).n_unique().alias("s"))
    unique = int(sizes.filter(pl.col("s") == 1).height)
    return {
        "persons": persons,
        "unique_persons": unique,
        "unique_share": round(unique / persons, 4),
        "smallest_class": int(sizes["s"].min()),  # type: ignore[arg-type]
    }


def risk_report(
    persons: pl.DataFrame,
    person_table: str,
    person: str,
    quasi_identifiers: Sequence[str],
    tables: Mapping[str, tuple[pl.LazyFrame, str | None]],
    candidates: Mapping[str, list[str]],
    treatment: Mapping[str, str],
    view: View | None = None,
) -> dict:
    """The manifest's ``risk`` section. ``persons``: the published person table; ``tables``: name -> (its
    published frame, person column); ``candidates``: what spec.risk_candidates found; ``treatment``:
    candidate -> how the spec handles it."""
    base = persons.select(pl.col(person).alias(P), *quasi_identifiers)
    out = {
        "declared": {"quasi_identifiers": list(quasi_identifiers), **class_stats(base, quasi_identifiers)},
        "candidates": {},
    }
    for name, where in candidates.items():
        if name in ("provider", "care_site"):
            # The person's own provider and the providers of their visits: OMOP records take their provider
            # from the visit, so the other tables repeat it (and would cost a pass over every row each).
            where = [w for w in where if w.partition(".")[0] in (person_table, "visit_occurrence")] or where
        sig = _candidate(name, where, persons, person_table, person, tables, view)
        if sig is None:
            continue
        if name == "visit_gaps":
            frame, keys, scope = sig, ["sig"], "alone, persons with 2 or more visits"
        else:
            frame = base.join(sig, on=P, how="left")
            keys, scope = [*quasi_identifiers, "sig"], "with the declared quasi-identifiers"
        out["candidates"][name] = {
            "where": where,
            "measured": scope,
            "treatment": treatment.get(name, "declared quasi-identifier"),
            **class_stats(frame, keys),
        }
    return out


def _candidate(name, where, persons, person_table, person, tables, view=None) -> pl.DataFrame | None:
    """Per person, one signature column ``sig`` for a candidate."""
    parts = []
    for ref in where:
        tname, _, col = ref.partition(".")
        lf, pcol = tables[tname]
        if name in ("provider", "care_site"):
            if tname == person_table:  # the person's own provider: the value itself
                parts.append(persons.select(pl.col(person).alias(P), pl.col(col).hash(seed=3).alias(ref)))
            else:
                parts.append(multiset(lf, pcol, [col], ref, distinct=True).collect())
        elif name == "conditions":
            cols = [c for c in ("condition_source_value", "condition_concept_id") if c in lf.collect_schema()]
            parts.append(multiset(lf, pcol, cols[:1], ref, distinct=True).collect())
        elif name == "visit_gaps":
            visits = relative_dates(lf.select(pcol, col).unique(), pcol, [col])
            sig = multiset(visits, pcol, [col], "sig").collect()
            many = lf.group_by(pcol).agg(pl.col(col).n_unique().alias("v")).filter(pl.col("v") >= 2)
            return sig.join(many.select(pl.col(pcol).alias(P)).collect(), on=P, how="semi")
        elif name == "lab_sequence" and view is not None and tname in view.comparable:
            # Every published lab column, dates relative: at least as fine as (code, value, day), so the
            # uniqueness it measures is, if anything, higher. Shared with the same-view share.
            parts.append(view.signature(tname).rename({tname: ref}))
        elif name == "lab_sequence":
            schema = lf.collect_schema()
            cols = [
                c
                for c in (
                    "measurement_source_value",
                    "measurement_concept_id",
                    "value_as_number",
                    "measurement_date",
                )
                if c in schema
            ]
            dates = [c for c in cols if schema[c].is_temporal()]
            parts.append(multiset(relative_dates(lf, pcol, dates), pcol, cols, ref).collect())
    if not parts:
        return None
    frame = persons.select(pl.col(person).alias(P))
    for part in parts:
        frame = frame.join(part, on=P, how="left")
    cols = [c for c in frame.columns if c != P]
    return frame.select(P, pl.struct(cols).hash(seed=5).alias("sig"))


# -- linkage ------------------------------------------------------------------------------------------------


class View:
    """One project's published data, for linkage: person ids and, per table, its frame and what is
    comparable about it."""

    def __init__(
        self,
        persons: pl.Series,
        tables: Mapping[str, tuple[pl.LazyFrame, str]],
        comparable: Mapping[str, Sequence[str]],
        dates: str,
    ):
        self.persons = persons
        self.tables = tables
        self.comparable = comparable
        """table -> columns that carry the same meaning in any project (not pseudonyms)."""
        self.dates = dates
        self.signatures: dict[str, pl.DataFrame] = {}
        """table -> per-person signature over all its comparable columns (computed once, shared by the
        risk report and the same-view share)."""

    def signature(self, table: str) -> pl.DataFrame:
        if table not in self.signatures:
            lf, pcol = self.tables[table]
            cols = self.comparable[table]
            schema = lf.collect_schema()
            dates = [c for c in cols if schema[c].is_temporal()]
            self.signatures[table] = multiset(relative_dates(lf, pcol, dates), pcol, cols, table).collect()
        return self.signatures[table]


def fingerprints(view: View, common: Mapping[str, Sequence[str]], prepare=None) -> pl.DataFrame:
    """Per person of the view: one u64 over every common table's multiset signature (``prepare`` brings a
    table to the coarseness of the comparison; without it, the view's cached full signatures are used)."""
    frame = pl.DataFrame({P: view.persons})
    for tname, cols in common.items():
        if prepare is None:
            sig = view.signature(tname)
        else:
            lf, pcol = view.tables[tname]
            lf = prepare(tname, lf)
            schema = lf.collect_schema()
            dates = [c for c in cols if schema[c].is_temporal()]
            sig = multiset(relative_dates(lf, pcol, dates), pcol, cols, tname).collect()
        frame = frame.join(sig, on=P, how="left").with_columns(pl.col(tname).fill_null(0))
    sigs = [c for c in frame.columns if c != P]
    return frame.select(P, _row_hash(sigs).alias("fp"))


def common_columns(a: View, b: View) -> dict[str, list[str]]:
    return {
        t: [c for c in cols if c in b.comparable[t]] for t, cols in a.comparable.items() if t in b.comparable
    }


def link(a: pl.DataFrame, b: pl.DataFrame) -> dict:
    """Persons of ``a`` whose fingerprint is unique in ``a`` and matches exactly one person of ``b``."""
    ua = a.filter(pl.col("fp").is_unique())
    ub = b.filter(pl.col("fp").is_unique())
    pairs = ua.join(ub, on="fp", suffix="_b")
    correct = int((pairs[P] == pairs[f"{P}_b"]).sum())
    persons = a.height
    return {
        "persons": persons,
        "other_persons": b.height,
        "linked_one_to_one": pairs.height,
        "linked_correctly": correct,
        "share": round(correct / persons, 4) if persons else 0.0,
    }


def same_view_share(view: View) -> float:
    """The share of persons another project would link one to one if it got this very view."""
    fp = fingerprints(view, view.comparable)
    return round(int(fp["fp"].is_unique().sum()) / fp.height, 4) if fp.height else 0.0


def coarser(units: Iterable[str]) -> str:
    order = ["day", "week", "month"]
    return max(units, key=order.index)

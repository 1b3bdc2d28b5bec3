"""The sensitive-condition gate: records in the guideline's sensitive categories need consent or a DRB waiver.

The Korean guideline asks for consent in principle for mental illness, sexually transmitted infections,
HIV/AIDS, rare diseases, abuse and abortion. The preset lists each category's ICD-10/KCD code prefixes
and OMOP concept ids; this gate counts matching records in the source (before anything is written) and
refuses the whole ingest if a category is present that the spec has not declared, with its basis
(``consent`` or ``drb_waiver``) and a reference a reviewer can look up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from ingest.errors import RefusedError
from ingest.source import SourceTable
from ingest.spec import DatasetSpec


@dataclass(frozen=True)
class SensitiveReport:
    counts: Mapping[str, int]
    """Records per category found in the source (all categories, zero included)."""
    where: Mapping[str, list[str]]
    """Category -> ``table.column`` locations where it was found."""
    declared: Mapping[str, str]
    """Category -> '<basis>: <reference>' from the spec."""

    @property
    def undeclared(self) -> dict[str, int]:
        return {c: n for c, n in self.counts.items() if n and c not in self.declared}

    def as_dict(self) -> dict:
        return {"records": dict(self.counts), "declared": dict(self.declared)}


def count_sensitive(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> SensitiveReport:
    """Count sensitive records per category at every check location the dataset has.

    One group-by per location counts each distinct (concept, code) pair; only those few pairs are then
    classified, so the cost does not grow with the number of code prefixes.
    """
    categories = spec.preset.categories if spec.preset else {}
    counts = dict.fromkeys(categories, 0)
    where: dict[str, list[str]] = {c: [] for c in categories}
    for check in spec.sensitive_checks:
        src = sources.get(check.table)
        if src is None or not categories:
            continue
        cols = [c for c in (check.concept_column, check.code_column) if c and c in src.schema]
        if not cols:
            continue
        pairs = src.scan().group_by(cols).agg(pl.len().alias("__n")).collect()
        concept = (
            pairs[check.concept_column].cast(pl.Int64, strict=False)
            if check.concept_column in cols
            else pl.Series([None] * pairs.height, dtype=pl.Int64)
        )
        code = (
            pairs[check.code_column]
            .cast(pl.String)
            .str.replace_all(".", "", literal=True)
            .str.strip_chars()
            .str.to_uppercase()
            if check.code_column in cols
            else pl.Series([None] * pairs.height, dtype=pl.String)
        )
        for name, cat in categories.items():
            hit = concept.is_in(list(cat.concept_ids)).fill_null(False)
            for prefix in cat.icd10_prefixes:
                hit = hit | code.str.starts_with(prefix).fill_null(False)
            n = int(pairs["__n"].filter(hit).sum())
            if n:
                counts[name] += n
                where[name].append(f"{check.table}.{'/'.join(cols)}")
    declared = {d.category: f"{d.basis}: {d.reference}" for d in spec.declarations}
    return SensitiveReport(counts, where, declared)


def refuse_undeclared(spec: DatasetSpec, report: SensitiveReport) -> None:
    """Raise RefusedError naming each undeclared category, where it was found, and how to declare it."""
    missing = report.undeclared
    if not missing:
        return
    labels = spec.preset.categories if spec.preset else {}
    lines = [
        f"  {cat} ({labels[cat].label}): {n} record(s) in {', '.join(report.where[cat])}"
        for cat, n in missing.items()
    ]
    raise RefusedError(
        f"{spec.path}: the source holds sensitive-condition records the spec does not declare:\n"
        + "\n".join(lines)
        + "\nThe guideline asks for consent in principle. Declare the basis under sensitive_conditions.declarations "
        "({category, basis: consent|drb_waiver, reference}), or remove those records from the source.",
        "sensitive_undeclared",
        {"undeclared": missing, "records": dict(report.counts)},
    )

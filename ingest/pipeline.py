"""The ingest: raw tables in, one immutable, checksummed, pseudonymized dataset version out, or nothing.

Order of work, and why:

1. Load the spec (schema, consistency, preset rules) and open the sources. Every unknown column and missing
   table is reported before any data is read in full.
2. Count sensitive-condition records; refuse if a category is present but not declared.
3. Derive the project key (HKDF of the master key) and, per pseudonym domain, hash each *distinct* id once
   on both cores (ingest.prf). The person domain also gets each person's day offset.
4. Transform the person table, run the k-anonymity gate on it, and note which persons are kept.
5. Transform every other table: look pseudonyms and offsets up, generalize, drop, keep only rows of kept
   persons, sort by person pseudonym (so row order says nothing about raw ids or entry time), and write
   Parquet into staging.
6. Read every staged file back through the identifier detector; any unwaived finding refuses publication.
7. Write manifest.json, seal, and rename the staging directory into place; record the audit event.

Every outcome, including refusals and errors, is one ``dataset.ingest`` audit record.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from hub.paths import EnclavePaths
from ingest import allowlist, checks, normalize, risk, transforms
from ingest.detector import DETECTORS, Finding, KnownIdentifiers, blocking, flag_values, scan_outputs
from ingest.errors import IngestError, RefusedError, SourceError, SpecError
from ingest.kanon import KAnonymityReport, enforce
from ingest.keys import load_master_key, project_key
from ingest.prf import PARALLEL_MIN, HashPool
from ingest.pseudonyms import DomainMap, build_domain_map
from ingest.publish import FORMAT, DatasetStore, check_names, sha256_file, write_manifest
from ingest.sensitive import SensitiveReport, count_sensitive, refuse_undeclared
from ingest.source import SourceTable, ignored_files, open_sources, redact
from ingest.spec import FULL_VIEW, DatasetSpec, TableSpec, apply_view, leak_kinds, load_spec, risk_candidates

ADEQUACY = True
"""Allowlist suppression counts and the risk and linkage reports. Only bench/ingest.py turns this off, to
measure their cost against a baseline in the same run; an ingest without them publishes no report."""
OTHER = "OTHER"
"""What a rare code becomes under per-project ``coarsen.rare_codes``."""


@dataclass
class Adequacy:
    """What the ingest learned and suppressed on the way, for the manifest's adequacy reports."""

    learned: dict[tuple[str, str], pl.DataFrame] = field(default_factory=dict)
    """(table, column) -> categorical values kept, with their number of persons."""
    frequent: dict[tuple[str, str], pl.Series] = field(default_factory=dict)
    """(table, column) -> codes frequent enough to publish under rare-code grouping."""
    lookup: dict[tuple[str, str], pl.DataFrame] = field(default_factory=dict)
    """(table, column) -> (raw, published, bad) for each distinct raw value of a kept text column: codes
    repeat, so canonicalizing each distinct value once and looking rows up is far cheaper than per row."""
    suppressed: dict[str, int] = field(default_factory=dict)
    """``table.column`` -> cells outside the column's declaration, published as null."""
    clean: set[tuple[str, str]] = field(default_factory=set)
    """Kept columns whose every distinct value (text) or whose minimum and maximum (numbers) are already
    within the declaration as written: published as they are, with nothing suppressed (the common case,
    and the cheap one)."""
    duplicates: dict[str, int] = field(default_factory=dict)
    cohort: int | None = None

    def learned_set(self, table: str, column: str) -> frozenset[str]:
        frame = self.learned.get((table, column))
        return frozenset(frame["value"].to_list()) if frame is not None else frozenset()

    def tally(self, table: str, frame: pl.DataFrame) -> pl.DataFrame:
        """Add up and remove the ``__bad__<column>`` flags of a transformed frame."""
        flags = [c for c in frame.columns if c.startswith(BAD)]
        for c, n in zip(flags, frame.select(pl.col(flags).sum()).row(0) if flags else ()):
            key = f"{table}.{c.removeprefix(BAD)}"
            self.suppressed[key] = self.suppressed.get(key, 0) + int(n or 0)
        return frame.drop(flags)


BAD = "__bad__"

ACTION = "dataset.ingest"
PRF_NAME = "keyed BLAKE2b-64 under HKDF-SHA256(HKDF-SHA256(master key, project), purpose)"
MAX_ROWS_IN_MEMORY = 20_000_000
"""A table with more source rows is transformed and written in slices of persons (about 2 GB each)."""
MIN_KNOWN_VALUE_CHARS = 4
"""Raw identifier values shorter than this are too generic to search for as whole values."""


class AuditSink(Protocol):
    """The audit log (audit.AuditLog): ``append`` is durable when it returns."""

    def append(
        self,
        *,
        actor: str,
        action: str,
        project: str | None = None,
        target: str | None = None,
        outcome: str,
        details: Mapping[str, Any] | None = None,
    ) -> Any: ...


class Progress(Protocol):
    """What the CLI's progress bars need to know. ``total`` and ``amount`` are in the stage's own units."""

    def start(self, key: str, description: str, total: float | None = None) -> None: ...

    def advance(self, key: str, amount: float = 1) -> None: ...

    def finish(self, key: str) -> None: ...


class NoProgress:
    def start(self, key: str, description: str, total: float | None = None) -> None:
        pass

    def advance(self, key: str, amount: float = 1) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class IngestResult:
    project: str
    dataset: str
    version: str
    path: Path
    manifest: Mapping[str, Any]
    manifest_sha256: str
    seconds: float


def ingest_dataset(
    paths: EnclavePaths,
    spec_path: Path | str,
    source_dir: Path | str,
    project: str,
    *,
    audit: AuditSink,
    actor: str,
    version: str | None = None,
    k: int | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> IngestResult:
    """Ingest ``source_dir`` under ``spec_path`` for ``project`` and publish it; see the module docstring.

    ``k`` is the project's k: the stricter of it and the spec's wins.
    ``workers`` is the number of cores to hash on (default: all). Raises IngestError (nothing published,
    refusal audited) or returns the published version.
    """
    started = time.perf_counter()
    details: dict[str, Any] = {"spec": str(spec_path), "source": str(source_dir)}
    target = f"{Path(spec_path).stem.removesuffix('.spec')}@{version or 'next'}"
    try:
        spec = load_spec(spec_path).for_project(project).with_min_k(k)
        check_names(project, spec.dataset, version)
        store = DatasetStore(paths.data_dir)
        version = version or store.next_version(project, spec.dataset)
        target = f"{spec.dataset}@{version}"
        details["spec_sha256"] = spec.sha256
        result = _ingest(
            paths, spec, Path(source_dir), project, version, store, progress or NoProgress(), workers
        )
    except IngestError as exc:
        audit.append(
            actor=actor,
            action=ACTION,
            project=project,
            target=target,
            outcome=exc.outcome,
            details={
                **details,
                "reason": exc.reason,
                "error": redact(str(exc)),
                **({"report": exc.report} if isinstance(exc, RefusedError) else {}),
            },
        )
        raise
    except Exception as exc:
        audit.append(
            actor=actor,
            action=ACTION,
            project=project,
            target=target,
            outcome="error",
            # The exception's text may quote a raw value, and the trail is forever: its type only.
            details={**details, "reason": "internal_error", "error": type(exc).__name__},
        )
        raise
    published, manifest, manifest_sha = result
    try:
        audit.append(
            actor=actor,
            action=ACTION,
            project=project,
            target=target,
            outcome="ok",
            details={
                **details,
                "manifest_sha256": manifest_sha,
                "rows": manifest["rows_total"],
                "suppressed": (manifest["k_anonymity"] or {}).get("suppressed", 0),
                # Counts only: how much the allowlist held back, and the worst linkage share measured.
                "values_suppressed": sum((e.get("suppressed") or 0) for e in manifest["allowlist"].values()),
                "linkage_share": max(
                    (r["share"] for r in ((manifest.get("linkage") or {}).get("against") or {}).values()),
                    default=None,
                ),
            },
        )
    except BaseException:
        store.unpublish(project, spec.dataset, version)  # never leave a publication the trail does not show
        raise
    store.set_current(project, spec.dataset)
    return IngestResult(
        project, spec.dataset, version, published, manifest, manifest_sha, time.perf_counter() - started
    )


def _ingest(
    paths: EnclavePaths,
    spec: DatasetSpec,
    source_dir: Path,
    project: str,
    version: str,
    store: DatasetStore,
    progress: Progress,
    workers: int | None,
):
    store.refuse_if_published(project, spec.dataset, version)
    progress.start("read", "checking sources", None)
    sources = open_sources(spec, source_dir)
    checks.check_columns(spec, sources)
    _check_types(spec, sources)
    checks.check_person_ids(spec, sources)
    checks.check_values(spec, sources)
    adequacy = Adequacy(duplicates=checks.check_duplicates(spec, sources[spec.person_table]))
    sensitive = count_sensitive(spec, sources)
    refuse_undeclared(spec, sensitive)
    source_rows = {name: _rows(src.scan()) for name, src in sources.items()}
    key = project_key(load_master_key(paths.secrets_dir), project)
    with store.staging(project, spec.dataset, version) as staged, HashPool(workers) as pool:
        if max(source_rows.values()) >= PARALLEL_MIN:
            pool.warm_up()  # overlaps the workers' start-up with the reading below
        known = known_identifiers(spec, sources)
        progress.finish("read")
        maps = pseudonym_maps(spec, sources, key, pool, progress)
        pool.close()
        learn(spec, sources, maps, adequacy, known)
        kept, kreport = _write_person_table(spec, sources, maps, staged, progress, adequacy)
        for name, table in spec.tables.items():
            if name != spec.person_table and name in sources:
                _write_table(spec, table, sources[name], maps, kept, staged, source_rows[name], adequacy)
                progress.advance("tables")
        progress.finish("tables")
        findings = _detect(spec, sources, staged, known, progress)
        reports = _adequacy_reports(spec, sources, maps, staged, adequacy, source_dir, progress)
        manifest = _manifest(
            spec,
            project,
            version,
            sources,
            source_rows,
            maps,
            kreport,
            sensitive,
            findings,
            staged,
            source_dir,
            progress,
        )
        manifest.update(reports)
        manifest_sha = write_manifest(staged, manifest)
        published = store.publish(staged, project, spec.dataset, version)
    return published, manifest, manifest_sha


def _adequacy_reports(
    spec: DatasetSpec, sources, maps, staged: Path, adequacy: Adequacy, source_dir: Path, progress: Progress
) -> dict[str, Any]:
    """The manifest's adequacy sections: the project's view, duplicates, allowlist, risk and linkage."""
    reports: dict[str, Any] = {
        "minimization": {"project_view": spec.view.as_dict() if spec.projects else None},
        "person_duplicates": adequacy.duplicates,
        "cohort_persons": adequacy.cohort,
        "allowlist": _allowlist_report(spec, sources, adequacy),
        "risk": None,
        "linkage": None,
    }
    if not ADEQUACY:
        return reports
    progress.start("risk", "measuring re-identification and linkage risk", None)
    own = _published_view(spec, staged)
    persons = pl.read_parquet(staged / f"{spec.person_table}.parquet")
    qis = spec.k_anonymity.quasi_identifiers if spec.k_anonymity else ()
    treatment = {name: f"accepted: {reason}" for name, reason in spec.risk_accepted.items()}
    tables = {t: own.tables[t] for t in own.tables}
    reports["risk"] = risk.risk_report(
        persons, spec.person_table, spec.person_column, qis, tables, risk_candidates(spec), treatment, own
    )
    reports["linkage"] = _linkage(spec, sources, maps, own, adequacy, source_dir)
    progress.finish("risk")
    return reports


def _allowlist_report(spec: DatasetSpec, sources, adequacy: Adequacy) -> dict[str, Any]:
    out = {}
    for name in sources:
        for col, rule in spec.tables[name].columns.items():
            if rule.transform != "keep" or rule.allow is None or col not in sources[name].schema:
                continue
            entry: dict[str, Any] = {
                "declaration": rule.allow.describe(),
                "suppressed": adequacy.suppressed.get(f"{name}.{col}", 0) if ADEQUACY else None,
            }
            learned = adequacy.learned.get((name, col))
            if learned is not None:
                entry["values"] = {v: n for v, n in learned.iter_rows()}
            out[f"{name}.{col}"] = entry
    return out


def _comparable(spec: DatasetSpec, names) -> dict[str, list[str]]:
    """Per table, the published columns that mean the same in every project (pseudonyms do not)."""
    return {
        t: [
            c
            for c in spec.tables[t].output_columns()
            if spec.tables[t].columns[c].transform != "pseudonymize"
        ]
        for t in names
        if spec.tables[t].person_column is not None
    }


def _published_view(spec: DatasetSpec, staged: Path) -> risk.View:
    names = [t for t in spec.tables if (staged / f"{t}.parquet").is_file()]
    tables = {
        t: (pl.scan_parquet(staged / f"{t}.parquet"), spec.tables[t].person_column or spec.person_column)
        for t in names
        if spec.tables[t].person_column is not None
    }
    persons = pl.read_parquet(staged / f"{spec.person_table}.parquet", columns=[spec.person_column])
    return risk.View(persons.to_series(), tables, _comparable(spec, tables), spec.view.dates)


def _other_view(spec: DatasetSpec, other: str, sources, maps, source_dir: Path) -> tuple[risk.View, Adequacy]:
    """What project ``other`` gets from the same source, computed in this project's pseudonym space (its
    own pseudonyms would differ, but not the persons behind them, so the truth of a link is known)."""
    base = replace(spec, tables=spec.all_tables, view=FULL_VIEW)
    viewed = apply_view(base, spec.projects[other])
    # Other pseudonym domains are project-specific and not compared; only the person column is needed.
    tables = {
        name: replace(
            t,
            columns={
                c: (
                    replace(r, transform="drop")
                    if r.transform == "pseudonymize" and c != t.person_column
                    else r
                )
                for c, r in t.columns.items()
            },
        )
        for name, t in viewed.tables.items()
    }
    viewed = replace(viewed, tables=tables)
    theirs = open_sources(viewed, source_dir)
    theirs.update({n: s for n, s in sources.items() if n in theirs})
    adequacy = Adequacy()
    learn(viewed, theirs, maps, adequacy)
    table, src = viewed.tables[viewed.person_table], theirs[viewed.person_table]
    persons = _collect(_transform(viewed, table, src, maps, adequacy=adequacy), src)
    persons = persons.unique(viewed.person_column, keep="first")
    members = cohort(viewed, theirs, maps)
    if members is not None:
        persons = persons.filter(pl.col(viewed.person_column).is_in(members.implode()))
    kept = persons[viewed.person_column]
    if viewed.k_anonymity is not None:
        ka = viewed.k_anonymity
        kept, _ = enforce(persons, viewed.person_column, ka.quasi_identifiers, ka.k)
    comparable = _comparable(viewed, [n for n in viewed.tables if n in theirs])
    frames = {}
    for name, cols in comparable.items():
        t = viewed.tables[name]
        lf = _transform(viewed, t, theirs[name], maps, kept, adequacy)
        person = t.person_column or viewed.person_column
        frames[name] = (lf.select(person, *cols), person)
    return risk.View(kept, frames, comparable, viewed.view.dates), adequacy


def _linkage(spec: DatasetSpec, sources, maps, own: risk.View, adequacy: Adequacy, source_dir: Path) -> dict:
    """One-to-one linkage between this project's output and each other declared project's, and refusal
    above the spec's bound."""
    result: dict[str, Any] = {
        "same_view_share": risk.same_view_share(own),
        "max_share": spec.linkage_max_share,
        "against": {},
    }
    for other in sorted(spec.projects):
        if other == spec.view.project:
            continue
        theirs, their_adequacy = _other_view(spec, other, sources, maps, source_dir)
        common = risk.common_columns(own, theirs)
        prepare = _comparison(spec, spec.projects[other], adequacy, their_adequacy)
        a = risk.fingerprints(own, common, prepare)
        b = risk.fingerprints(theirs, common, prepare)
        result["against"][other] = {"compared": common, **risk.link(a, b)}
    worst = max((r["share"] for r in result["against"].values()), default=0.0)
    if spec.linkage_max_share is not None and worst > spec.linkage_max_share:
        raise RefusedError(
            f"{spec.path}: projects.{spec.view.project}: {worst:.1%} of its persons link one to one to another "
            f"project's data from the same source, above linkage.max_share {spec.linkage_max_share:.0%}; "
            "minimize or coarsen the project views (tables, records, cohort, coarsen). Nothing was published.",
            "linkage_above_bound",
            {
                "linkage": {
                    o: {k: v for k, v in r.items() if k != "compared"} for o, r in result["against"].items()
                }
            },
        )
    return result


def _comparison(spec: DatasetSpec, other, ours: Adequacy, theirs: Adequacy):
    """Both sides brought to the coarser of the two views: dates, numbers, grouped codes."""
    unit = risk.coarser([spec.view.dates, other.dates])
    numbers = {**other.numbers, **spec.view.numbers}
    rare = set(spec.view.rare_codes) | set(other.rare_codes)

    def prepare(table: str, lf: pl.LazyFrame) -> pl.LazyFrame:
        schema = lf.collect_schema()
        exprs = []
        for col, dtype in schema.items():
            ref = f"{table}.{col}"
            e = pl.col(col)
            if dtype.is_temporal():
                e = transforms.coarsen_date(e, unit)
            for how in (spec.view.numbers.get(ref), other.numbers.get(ref)):
                if how is not None and ref in numbers and dtype.is_numeric():
                    e = transforms.coarsen_number(e, how)
            if ref in rare:
                sets = [
                    s
                    for s in (ours.frequent.get((table, col)), theirs.frequent.get((table, col)))
                    if s is not None
                ]
                keep = sets[0] if len(sets) == 1 else sets[0].filter(sets[0].is_in(sets[1].implode()))
                e = pl.when(e.is_in(keep.implode())).then(e).when(e.is_not_null()).then(pl.lit(OTHER))
            exprs.append(e.alias(col))
        return lf.select(exprs)

    return prepare


def _rows(lf: pl.LazyFrame) -> int:
    return int(lf.select(pl.len()).collect().item())


def _check_types(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> None:
    """Source dtypes must fit their rules; under a preset, no date may be published unshifted."""
    problems = []
    for name, src in sources.items():
        for col, rule in spec.tables[name].columns.items():
            dtype = src.schema.get(col)
            if dtype is None:
                continue
            temporal = dtype in (pl.Date,) or isinstance(dtype, pl.Datetime)
            at = f"{src.path}: table {name}: column {col}"
            if rule.transform == "date_shift" and not (temporal or dtype == pl.String):
                problems.append(f"{at}: date_shift needs a date, datetime or date text, found {dtype}")
            if rule.method in ("age_band", "top_code") and not dtype.is_numeric():
                problems.append(f"{at}: {rule.method} needs numbers, found {dtype}")
            if rule.method in ("year", "birth_year") and not (
                temporal or dtype.is_integer() or dtype == pl.String
            ):
                problems.append(f"{at}: {rule.method} needs a date or a year, found {dtype}")
            if spec.preset and temporal and rule.transform == "keep":
                problems.append(
                    f"{at}: {spec.preset.name} preset: a {dtype} column cannot be kept as is "
                    f"(date_shift it, generalize it to a year, or drop it)"
                )
    if problems:
        raise SpecError(problems)


def known_identifiers(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> KnownIdentifiers:
    """Raw values of dropped direct-identifier columns, plus the spec's names files."""
    names = [
        pl.Series(
            [
                line.strip()
                for f in spec.names_files
                for line in f.read_text("utf-8").splitlines()
                if line.strip() and not line.startswith("#")
            ],
            dtype=pl.String,
        )
    ]
    values = []
    where = {}
    kinds = leak_kinds()
    for name, src in sources.items():
        cols = {
            c: r.kind
            for c, r in spec.tables[name].columns.items()
            if r.transform == "drop" and r.kind in kinds and c in src.schema
        }
        if not cols:
            continue
        # One pass over the table collects the distinct values of all its identifier columns.
        found = src.scan().select(pl.col(c).cast(pl.String).unique().drop_nulls().implode() for c in cols)
        for col, series in zip(cols, _collect(found, src).row(0)):
            series = pl.Series(series, dtype=pl.String)
            if cols[col] == "name":
                names.append(series.filter(series.str.len_chars() >= 2))
            else:
                values.append(series.filter(series.str.len_chars() >= MIN_KNOWN_VALUE_CHARS))
            where[f"{name}.{col}"] = cols[col]
    return KnownIdentifiers(
        names=pl.concat(names).unique(),
        values=pl.concat(values) if values else pl.Series([], dtype=pl.String),
        sources=where,
    )


def _domains(spec: DatasetSpec, sources: Mapping[str, SourceTable]) -> dict[str, list[tuple[str, str]]]:
    """Pseudonym domain -> the (table, column) pairs whose values it covers."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, src in sources.items():
        for col, rule in spec.tables[name].columns.items():
            if rule.transform == "pseudonymize" and col in src.schema:
                out.setdefault(rule.domain or col, []).append((name, col))
    return out


def pseudonym_maps(
    spec: DatasetSpec, sources: Mapping[str, SourceTable], key: bytes, pool: HashPool, progress: Progress
) -> dict[str, DomainMap]:
    """Every pseudonym domain, hashed; the person domain also carries each person's day offset."""
    domains = _domains(spec, sources)
    progress.start("pseudonyms", "pseudonymizing ids", len(domains))
    maps = {}
    for domain, members in domains.items():
        shift = spec.max_shift_days if domain == spec.person_domain else None
        maps[domain] = build_domain_map(domain, members, sources, key, pool, max_shift_days=shift)
        progress.advance("pseudonyms")
    progress.finish("pseudonyms")
    return maps


def _transform(
    spec: DatasetSpec,
    table: TableSpec,
    src: SourceTable,
    maps: Mapping[str, DomainMap],
    kept: pl.Series | None = None,
    adequacy: Adequacy | None = None,
) -> pl.LazyFrame:
    """The published form of one table, lazily, in source row order.

    With ``kept`` (person pseudonyms that passed the k-anonymity gate) only their rows remain; the source
    checks made sure every row's person is in the person table. Kept columns are normalized, checked
    against their declaration (out-of-declaration values become null, flagged in ``__bad__<column>``
    for ``Adequacy.tally``), and coarsened as the project's view asks.
    """
    lf = _records(spec, table, src, src.scan())
    if kept is not None and table.person_column is not None:
        lf = maps[spec.person_domain].keep_only(lf, table.person_column, kept)
    adequacy = adequacy or Adequacy()
    selected: list[pl.Expr] = []
    for i, col in enumerate(src.schema):
        rule = table.columns[col]
        dtype = src.schema[col]
        if rule.transform == "pseudonymize":
            offset = transforms.OFFSET if col == table.person_column else None
            lf = maps[rule.domain or col].apply(lf, col, f"__p{i}", offset)
            selected.append(pl.col(f"__p{i}").alias(col))
        elif rule.transform == "date_shift":
            shifted = transforms.date_shift(col, dtype)
            selected.append(transforms.coarsen_date(shifted, spec.view.dates).alias(col))
        elif rule.transform == "generalize":
            selected.append(transforms.generalize(rule, dtype, spec.reference_year))
        elif rule.transform == "keep":
            selected += _kept(spec, table.name, col, rule, dtype, adequacy)
    return lf.select(selected)


def _kept(spec: DatasetSpec, table: str, col: str, rule, dtype, adequacy: Adequacy) -> list[pl.Expr]:
    """A kept column within its declaration, and the flag of what fell outside it."""
    allow = rule.allow
    if not ADEQUACY:  # the benchmark's baseline: kept columns as they were before issue 20
        return [pl.col(col)]
    if (table, col) in adequacy.clean and not _coarsens(spec, table, col, adequacy):
        return [pl.col(col)]  # every value is already within the declaration, as written: nothing to do
    lookup = adequacy.lookup.get((table, col))
    if lookup is not None:
        raw = lookup["raw"]
        out = pl.col(col).replace_strict(raw, lookup["published"], default=None, return_dtype=pl.String)
        bad = pl.col(col).replace_strict(raw, lookup["bad"], default=False, return_dtype=pl.Boolean)
        return [_coarsened(spec, table, col, out, adequacy).alias(col), bad.alias(f"{BAD}{col}")]
    value = allowlist.canonical(col, dtype, allow)
    if allow.numeric and dtype == pl.String:
        value = value.cast(pl.Float64, strict=False)
    if not allow.numeric:
        value = pl.when(value != "").then(value)
    ok = allowlist.allowed(value, allow, adequacy.learned_set(table, col))
    out = _coarsened(spec, table, col, pl.when(ok).then(value), adequacy)
    return [out.alias(col), (value.is_not_null() & ~ok.fill_null(False)).alias(f"{BAD}{col}")]


def _coarsens(spec: DatasetSpec, table: str, col: str, adequacy: Adequacy) -> bool:
    return f"{table}.{col}" in spec.view.numbers or (table, col) in adequacy.frequent


def _coarsened(spec: DatasetSpec, table: str, col: str, out: pl.Expr, adequacy: Adequacy) -> pl.Expr:
    """A kept value coarsened as the project's view asks: numbers rounded or binned, rare codes grouped."""
    ref = f"{table}.{col}"
    if ref in spec.view.numbers:
        out = transforms.coarsen_number(out, spec.view.numbers[ref])
    frequent = adequacy.frequent.get((table, col))
    if frequent is not None:
        out = pl.when(out.is_in(frequent.implode())).then(out).when(out.is_not_null()).then(pl.lit(OTHER))
    return out


def _numbers_in_range(spec: DatasetSpec, name: str, src: SourceTable) -> set[tuple[str, str]]:
    """Kept numeric columns whose minimum and maximum are within the declared range (one pass per table)."""
    cols = [
        c
        for c, r in spec.tables[name].columns.items()
        if r.transform == "keep"
        and r.allow is not None
        and r.allow.numeric
        and c in src.schema
        and src.schema[c].is_numeric()
    ]
    if not cols:
        return set()
    bounds = _collect(
        src.scan().select(
            *(pl.col(c).min().alias(f"{c}\0min") for c in cols),
            *(pl.col(c).max().alias(f"{c}\0max") for c in cols),
        ),
        src,
    ).row(0, named=True)
    out = set()
    for c in cols:
        allow = spec.tables[name].columns[c].allow
        lo, hi = bounds[f"{c}\0min"], bounds[f"{c}\0max"]
        if allow is not None and (lo is None or (allow.lo <= lo and hi <= allow.hi)):
            out.add((name, c))
    return out


def _lookup(src: SourceTable, col: str, allow, learned: frozenset[str]) -> pl.DataFrame:
    """Each distinct raw value of a kept text column: what is published for it, and whether it fell
    outside the declaration."""
    dtype = src.schema[col]
    distinct = src.scan().select(pl.col(col).unique()).drop_nulls()
    value = allowlist.canonical(col, dtype, allow)
    value = pl.when(value != "").then(value)
    ok = allowlist.allowed(value, allow, learned)
    return _collect(
        distinct.select(
            pl.col(col).alias("raw"),
            pl.when(ok).then(value).cast(pl.String).alias("published"),
            (value.is_not_null() & ~ok.fill_null(False)).alias("bad"),
        ),
        src,
    )


def code_key(col: str, dtype: pl.DataType) -> pl.Expr:
    """A code compared by prefix: normalized, upper case, no dots or spaces ('i10.0 ' -> 'I100')."""
    return normalize.as_text(col, dtype).str.to_uppercase().str.replace_all(r"[\s.]", "")


def _prefixed(col: str, dtype: pl.DataType, prefixes) -> pl.Expr:
    key = code_key(col, dtype)
    wanted = [p.upper().replace(".", "").strip() for p in prefixes]
    return pl.any_horizontal([key.str.starts_with(p) for p in wanted]).fill_null(False)


def _records(spec: DatasetSpec, table: TableSpec, src: SourceTable, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Only the records the project's view covers (``projects.<id>.records``)."""
    if table.name not in spec.view.records:
        return lf
    col, prefixes = spec.view.records[table.name]
    return lf.filter(_prefixed(col, src.schema[col], prefixes))


def cohort(spec: DatasetSpec, sources, maps) -> pl.Series | None:
    """Person pseudonyms in the project's cohort: at least one record with one of the cohort's codes."""
    if spec.view.cohort is None:
        return None
    tname, col, prefixes = spec.view.cohort
    src, table = sources[tname], spec.all_tables[tname]
    person = table.person_column or spec.person_column
    lf = src.scan().filter(_prefixed(col, src.schema[col], prefixes)).select(person).unique()
    lf = maps[spec.person_domain].apply(lf, person, "__p")
    return _collect(lf.select("__p"), src).to_series().unique()


def learn(
    spec: DatasetSpec, sources, maps, adequacy: Adequacy, known: KnownIdentifiers | None = None
) -> None:
    """Categorical values (allow: categorical) and frequent codes (coarsen.rare_codes), before any table is
    written, so that every slice of a large table applies the same sets. A value the identifier detector
    would flag is never learned, however many persons share it: it is suppressed like any other."""
    for name, src in sources.items():
        table = spec.tables[name]
        for col, rule in table.columns.items():
            if not ADEQUACY:
                break
            if rule.transform == "keep" and rule.allow is not None and rule.allow.kind == "categorical":
                lf = _records(spec, table, src, src.scan())
                values = allowlist.learn(lf, col, src.schema[col], table.person_column, rule.allow)
                values = values.filter(~flag_values(values["value"], known or KnownIdentifiers()))
                if values.height > (rule.allow.max_values or 0):
                    raise SourceError(
                        f"{src.path}: table {name}: column {col}: {values.height} distinct values held by at "
                        f"least {rule.allow.min_persons} persons each, more than the declared max_values "
                        f"{rule.allow.max_values}: not a bounded categorical. Declare a vocabulary or drop it."
                    )
                adequacy.learned[(name, col)] = values
    for name, src in sources.items():
        for col, rule in spec.tables[name].columns.items():
            allow = rule.allow
            if (
                ADEQUACY
                and rule.transform == "keep"
                and allow is not None
                and col in src.schema
                and not allow.numeric
            ):
                learned = adequacy.learned_set(name, col)
                lookup = _lookup(src, col, allow, learned)
                adequacy.lookup[(name, col)] = lookup
                as_written = lookup["raw"].cast(pl.String) == lookup["published"]
                if src.schema[col] == pl.String and bool(as_written.fill_null(False).all()):
                    adequacy.clean.add((name, col))
        if ADEQUACY:
            adequacy.clean |= _numbers_in_range(spec, name, src)
    for ref, min_persons in spec.view.rare_codes.items():
        name, _, col = ref.partition(".")
        if name not in sources:
            continue
        table, src = spec.tables[name], sources[name]
        person = table.person_column or spec.person_column
        lf = _transform(spec, table, src, maps, adequacy=adequacy).select(person, col).drop_nulls(col)
        counts = lf.group_by(col).agg(pl.col(person).n_unique().alias("n")).filter(pl.col("n") >= min_persons)
        adequacy.frequent[(name, col)] = _collect(counts.select(col), src).to_series()


def _ordered(table: TableSpec, frame: pl.DataFrame) -> pl.DataFrame:
    """Order rows by person pseudonym. This is for privacy, not looks: in source order, rows follow raw ids
    and entry time across all persons, which would let a reader undo the per-person date shifts. The sort
    is stable, so each person's rows keep their source order and the output is deterministic."""
    if table.person_column is None:
        return frame
    return frame.sort(table.person_column, maintain_order=True)


def _write(frame: pl.DataFrame, path: Path) -> None:
    # zstd level 1: within a few per cent of the default level's size, at about half the time.
    frame.write_parquet(path, compression="zstd", compression_level=1)


def _write_person_table(
    spec: DatasetSpec, sources, maps, staged: Path, progress: Progress, adequacy: Adequacy
):
    progress.start("tables", "writing tables", len([t for t in spec.tables if t in sources]))
    table, src = spec.tables[spec.person_table], sources[spec.person_table]
    persons = adequacy.tally(table.name, _collect(_transform(spec, table, src, maps, adequacy=adequacy), src))
    # Merged duplicates (check_duplicates allowed only identical rows) leave one row per person.
    persons = persons.unique(spec.person_column, keep="first", maintain_order=True)
    members = cohort(spec, sources, maps)
    if members is not None:
        persons = persons.filter(pl.col(spec.person_column).is_in(members.implode()))
        adequacy.cohort = persons.height
    kreport = None
    kept = persons[spec.person_column]
    if spec.k_anonymity is not None:
        ka = spec.k_anonymity
        sensitive = {sa: _sensitive_rows(spec, sa, sources, maps) for sa in ka.sensitive_attributes}
        kept, kreport = enforce(
            persons, spec.person_column, ka.quasi_identifiers, ka.k, sensitive=sensitive, l=ka.l
        )
        persons = persons.filter(pl.col(spec.person_column).is_in(kept.implode()))
    _write(_ordered(table, persons), staged / f"{table.name}.parquet")
    progress.advance("tables")
    return persons[spec.person_column], kreport


def _sensitive_rows(spec: DatasetSpec, attribute: str, sources, maps) -> pl.DataFrame:
    """(person pseudonym, value) rows of a sensitive attribute, for l-diversity."""
    tname, _, col = attribute.rpartition(".")
    tname = tname or spec.person_table
    table, src = spec.tables[tname], sources[tname]
    person = table.person_column or spec.person_column  # the spec check guarantees the table has one
    frame = _collect(_transform(spec, table, src, maps).select(person, col), src)
    return frame.rename({person: spec.person_column})


def _write_table(
    spec: DatasetSpec,
    table: TableSpec,
    src: SourceTable,
    maps,
    kept: pl.Series,
    staged: Path,
    rows: int,
    adequacy: Adequacy,
) -> None:
    """Transform, filter, sort and write one table; a large one in slices of persons, to bound memory.

    The slices are consecutive ranges of person pseudonyms, so writing them one after the other gives the
    same order as sorting the whole table at once."""
    path = staged / f"{table.name}.parquet"
    slices = -(-rows // MAX_ROWS_IN_MEMORY)
    if table.person_column is None or slices <= 1:
        frame = _collect(_transform(spec, table, src, maps, kept, adequacy), src)
        _write(_ordered(table, adequacy.tally(table.name, frame)), path)
        return
    import pyarrow.parquet as pq

    persons = kept.drop_nulls().sort()
    writer = None
    try:
        for i in range(slices):
            part = persons.slice(
                len(persons) * i // slices, len(persons) * (i + 1) // slices - len(persons) * i // slices
            )
            frame = _collect(_transform(spec, table, src, maps, part, adequacy), src)
            frame = _ordered(table, adequacy.tally(table.name, frame)).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, frame.schema, compression="zstd", compression_level=1)
            writer.write_table(frame)
    finally:
        if writer is not None:
            writer.close()


def _collect(lf: pl.LazyFrame, src: SourceTable) -> pl.DataFrame:
    """Run a source query; a bad value (unparseable date, text in a number column) names the file."""
    try:
        return lf.collect()
    except pl.exceptions.PolarsError as exc:
        # A library message may quote the offending value: name the kind of error, never its text.
        raise SourceError(
            f"{src.path}: table {src.name}: a value could not be converted ({type(exc).__name__}); "
            "check the column types the spec expects"
        ) from None


def _detect(
    spec: DatasetSpec, sources, staged: Path, known: KnownIdentifiers, progress: Progress
) -> list[Finding]:
    progress.start("check", "checking output for identifiers", None)
    outputs = {t.name: (staged / f"{t.name}.parquet", t) for t in spec.tables.values() if t.name in sources}
    findings = scan_outputs(outputs, known)
    progress.finish("check")
    refused = blocking(findings)
    if refused:
        raise RefusedError(
            f"{spec.path}: the identifier detector found {len(refused)} problem(s) in the output; nothing was "
            "published:\n"
            + "\n".join(f"  {f.describe()}" for f in refused)
            + "\nFix the spec (drop or pseudonymize the column) or, if a finding is wrong, waive that detector "
            "on that column with a reason (waive: {detectors: [...], reason: ...}).",
            "identifier_detected",
            {"findings": [f.as_dict() for f in refused]},
        )
    return findings


def _manifest(
    spec: DatasetSpec,
    project: str,
    version: str,
    sources,
    source_rows,
    maps,
    kreport: KAnonymityReport | None,
    sensitive: SensitiveReport,
    findings: list[Finding],
    staged: Path,
    source_dir: Path,
    progress: Progress,
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    tables = {}
    progress.start("checksums", "checksumming", len(sources))
    for name, t in spec.tables.items():
        if name not in sources:
            continue
        path = staged / f"{name}.parquet"
        tables[name] = {
            "file": path.name,
            "rows": pq.read_metadata(path).num_rows,
            "source_rows": source_rows[name],
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "columns": {
                c: t.columns[c].label for c in sources[name].schema if t.columns[c].transform != "drop"
            },
            "dropped": [c for c in sources[name].schema if t.columns[c].transform == "drop"],
        }
        progress.advance("checksums")
    progress.finish("checksums")
    return {
        "format": FORMAT,
        "dataset": spec.dataset,
        "version": version,
        "project": project,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tool": {"name": "research-enclave ingest", "version": _tool_version()},
        "spec": {
            "file": spec.path.name,
            "sha256": spec.sha256,
            "preset": spec.preset.name if spec.preset else None,
        },
        "pseudonymization": {
            "prf": PRF_NAME,
            "domains": {d: m.size for d, m in maps.items()},
            "date_shift_max_days": spec.max_shift_days,
            "top_code_age": spec.top_code_age,
            "reference_year": spec.reference_year,
            "region_level": spec.region_level,
        },
        "rows_total": sum(t["rows"] for t in tables.values()),
        "tables": tables,
        "not_published": ignored_files(spec, source_dir, sources),
        "k_anonymity": kreport.as_dict() if kreport else None,
        "identifier_check": {
            "detectors": list(DETECTORS),
            "columns_checked": sum(len(t["columns"]) for t in tables.values()),
            "waived": [f.as_dict() for f in findings if f.waived],
        },
        "sensitive_conditions": sensitive.as_dict(),
    }


def _tool_version() -> str:
    try:
        return importlib.metadata.version("research-enclave")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from hub.paths import EnclavePaths
from ingest import transforms
from ingest.detector import DETECTORS, Finding, KnownIdentifiers, blocking, scan_outputs
from ingest.errors import IngestError, RefusedError, SourceError, SpecError
from ingest.kanon import KAnonymityReport, enforce
from ingest.keys import load_master_key, project_key
from ingest.prf import PARALLEL_MIN, HashPool
from ingest.pseudonyms import DomainMap, build_domain_map
from ingest.publish import FORMAT, DatasetStore, check_names, sha256_file, write_manifest
from ingest.sensitive import SensitiveReport, count_sensitive, refuse_undeclared
from ingest.source import SourceTable, ignored_files, open_sources, redact
from ingest.spec import DatasetSpec, TableSpec, leak_kinds, load_spec

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
        spec = load_spec(spec_path).with_min_k(k)
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
            details={**details, "reason": "internal_error", "error": redact(repr(exc))},
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
    _check_types(spec, sources)
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
        kept, kreport = _write_person_table(spec, sources, maps, staged, progress)
        for name, table in spec.tables.items():
            if name != spec.person_table and name in sources:
                _write_table(spec, table, sources[name], maps, kept, staged, source_rows[name])
                progress.advance("tables")
        progress.finish("tables")
        findings = _detect(spec, sources, staged, known, progress)
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
        manifest_sha = write_manifest(staged, manifest)
        published = store.publish(staged, project, spec.dataset, version)
    return published, manifest, manifest_sha


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
) -> pl.LazyFrame:
    """The published form of one table, lazily, in source row order.

    With ``kept`` (person pseudonyms that passed the k-anonymity gate) only their rows remain. Rows of
    suppressed persons go, and so do rows whose person is not in the person table: the gate never saw them.
    """
    lf = src.scan()
    if kept is not None and table.person_column is not None:
        lf = maps[spec.person_domain].keep_only(lf, table.person_column, kept)
    selected = []
    for i, col in enumerate(src.schema):
        rule = table.columns[col]
        dtype = src.schema[col]
        if rule.transform == "pseudonymize":
            offset = transforms.OFFSET if col == table.person_column else None
            lf = maps[rule.domain or col].apply(lf, col, f"__p{i}", offset)
            selected.append(pl.col(f"__p{i}").alias(col))
        elif rule.transform == "date_shift":
            selected.append(transforms.date_shift(col, dtype))
        elif rule.transform == "generalize":
            selected.append(transforms.generalize(rule, dtype, spec.reference_year))
        elif rule.transform == "keep":
            selected.append(pl.col(col))
    return lf.select(selected)


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


def _write_person_table(spec: DatasetSpec, sources, maps, staged: Path, progress: Progress):
    progress.start("tables", "writing tables", len([t for t in spec.tables if t in sources]))
    table, src = spec.tables[spec.person_table], sources[spec.person_table]
    persons = _collect(_transform(spec, table, src, maps), src)
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
    return kept, kreport


def _sensitive_rows(spec: DatasetSpec, attribute: str, sources, maps) -> pl.DataFrame:
    """(person pseudonym, value) rows of a sensitive attribute, for l-diversity."""
    tname, _, col = attribute.rpartition(".")
    tname = tname or spec.person_table
    table, src = spec.tables[tname], sources[tname]
    person = table.person_column or spec.person_column  # the spec check guarantees the table has one
    frame = _collect(_transform(spec, table, src, maps).select(person, col), src)
    return frame.rename({person: spec.person_column})


def _write_table(
    spec: DatasetSpec, table: TableSpec, src: SourceTable, maps, kept: pl.Series, staged: Path, rows: int
) -> None:
    """Transform, filter, sort and write one table; a large one in slices of persons, to bound memory.

    The slices are consecutive ranges of person pseudonyms, so writing them one after the other gives the
    same order as sorting the whole table at once."""
    path = staged / f"{table.name}.parquet"
    slices = -(-rows // MAX_ROWS_IN_MEMORY)
    if table.person_column is None or slices <= 1:
        _write(_ordered(table, _collect(_transform(spec, table, src, maps, kept), src)), path)
        return
    import pyarrow.parquet as pq

    persons = kept.drop_nulls().sort()
    writer = None
    try:
        for i in range(slices):
            part = persons.slice(
                len(persons) * i // slices, len(persons) * (i + 1) // slices - len(persons) * i // slices
            )
            frame = _ordered(table, _collect(_transform(spec, table, src, maps, part), src)).to_arrow()
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
        raise SourceError(f"{src.path}: table {src.name}: {redact(str(exc))}") from None


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

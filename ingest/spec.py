"""The pseudonymization spec: loading, schema validation, and the rules a valid spec must also follow.

A spec (``policies/datasets/<dataset>.spec.yaml``) names every column of every source table and says what
happens to it: ``drop``, ``keep``, ``pseudonymize`` (keyed PRF under the project key), ``date_shift`` (one
offset per person) or ``generalize`` (birth year, age band, top code, region, truncation). The schema is
``policies/schema/pseudonymization.schema.json``; the checks here are the ones a schema cannot express
(the person column must be pseudonymized in every table, quasi-identifiers must survive, the preset's
rules by identifier type). Every problem is reported at once, each naming the file and the field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hub.paths import REPO_ROOT
from ingest import allowlist
from ingest.allowlist import Allow
from ingest.errors import SpecError
from ingest.preset import DIRECT_IDENTIFIER_KINDS, Preset, SensitiveCheck, load_preset

SCHEMA_PATH = REPO_ROOT / "policies" / "schema" / "pseudonymization.schema.json"
TRANSFORMS = ("drop", "keep", "pseudonymize", "date_shift", "generalize")
DEFAULT_K = 5
DEFAULT_REGION_LEVEL = "sido"


@dataclass(frozen=True)
class Waiver:
    """The spec's explicit, reasoned exception to identifier-detector findings on one column."""

    detectors: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ColumnRule:
    column: str
    transform: str
    kind: str | None = None
    """Identifier kind: explicit in the spec, else inferred by the preset from the name (None if neither)."""
    domain: str | None = None
    """Pseudonym domain for ``pseudonymize``: equal values in one domain get equal pseudonyms."""
    method: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    waiver: Waiver | None = None
    allow: Allow | None = None
    """What a kept column may hold (ingest.allowlist); required for every ``keep``."""
    optional: bool = False
    """The source may lack this column; any other column the spec names must be there."""

    @property
    def label(self) -> str:
        """``generalize:<method>`` or the transform: how presets and the manifest name a rule."""
        return f"generalize:{self.method}" if self.transform == "generalize" else self.transform


@dataclass(frozen=True)
class TableSpec:
    name: str
    file: str | None
    optional: bool
    person_column: str | None
    columns: Mapping[str, ColumnRule]

    def output_columns(self) -> list[str]:
        return [c for c, rule in self.columns.items() if rule.transform != "drop"]


@dataclass(frozen=True)
class KAnonymitySpec:
    """Quasi-identifiers are columns of the person table: k counts persons, and suppression removes a person
    from every table."""

    k: int
    table: str
    quasi_identifiers: tuple[str, ...]
    sensitive_attributes: tuple[str, ...]
    l: int | None


@dataclass(frozen=True)
class ProjectView:
    """Per-project minimization and coarsening (``projects.<id>`` in the spec): only the tables, columns,
    records and persons the project's approval covers, at the coarseness it needs. Both cut what a project
    can link to another project's data through clinical content, which per-project keys cannot prevent."""

    project: str
    tables: tuple[str, ...] | None = None
    drop_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cohort: tuple[str, str, tuple[str, ...]] | None = None
    """(table, code column, code prefixes): persons with at least one such record."""
    records: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    """table -> (code column, prefixes): only those records of the table are published."""
    dates: str = "day"
    """day, week or month: shifted dates are floored to the start of the week or month."""
    numbers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``table.column`` -> {round: step} or {bins: [edges]}."""
    rare_codes: Mapping[str, int] = field(default_factory=dict)
    """``table.column`` -> min persons: rarer codes are published as ``OTHER``."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "tables": list(self.tables) if self.tables is not None else "all",
            "drop_columns": {t: list(c) for t, c in self.drop_columns.items()},
            "cohort": (
                {"table": self.cohort[0], "column": self.cohort[1], "prefixes": list(self.cohort[2])}
                if self.cohort
                else None
            ),
            "records": {t: {"column": c, "prefixes": list(p)} for t, (c, p) in self.records.items()},
            "dates": self.dates,
            "numbers": dict(self.numbers),
            "rare_codes": dict(self.rare_codes),
        }


FULL_VIEW = ProjectView(project="*")

RISK_CANDIDATES = {
    "provider": "provider ids (pseudonymized, but equal for equal providers)",
    "care_site": "care site ids",
    "conditions": "each person's set of condition codes",
    "visit_gaps": "each person's sequence of gaps between visits",
    "lab_sequence": "each person's sequence of lab codes and values",
}
"""Columns and patterns the data may carry that act as quasi-identifiers without being declared ones."""


@dataclass(frozen=True)
class Declaration:
    category: str
    basis: str
    reference: str


@dataclass(frozen=True)
class DatasetSpec:
    path: Path
    dataset: str
    preset: Preset | None
    person_table: str
    person_column: str
    max_shift_days: int | None
    top_code_age: int | None
    reference_year: int
    region_level: str
    k_anonymity: KAnonymitySpec | None
    names_files: tuple[Path, ...]
    declarations: tuple[Declaration, ...]
    sensitive_checks: tuple[SensitiveCheck, ...]
    tables: Mapping[str, TableSpec]
    sha256: str
    """Hash of the spec, the preset it uses and the names files: the manifest's ``spec.sha256``."""
    duplicates: str = "refuse"
    """Several person-table rows with one person id: ``refuse``, or ``merge`` identical ones (reported)."""
    risk_accepted: Mapping[str, str] = field(default_factory=dict)
    """Candidate quasi-identifier -> why the spec publishes it without k over it (RISK_CANDIDATES)."""
    projects: Mapping[str, ProjectView] = field(default_factory=dict)
    linkage_max_share: float | None = None
    """Refuse a project whose measured one-to-one linkage share to another declared project exceeds this."""
    view: ProjectView = FULL_VIEW
    all_tables: Mapping[str, TableSpec] = field(default_factory=dict)
    """Every table of the spec, before a project's view removed some (the cohort may need them)."""

    @property
    def person_domain(self) -> str:
        rule = self.tables[self.person_table].columns[self.person_column]
        return rule.domain or self.person_column

    def for_project(self, project: str) -> DatasetSpec:
        """This spec as ``project`` sees it: its view's tables, columns and coarsening. A spec that declares
        projects refuses any other project (it would get everything, unmeasured against the others)."""
        if not self.projects:
            return self
        view = self.projects.get(project)
        if view is None:
            raise SpecError(
                f"{self.path}: projects: '{project}' is not declared; this spec declares "
                f"{', '.join(sorted(self.projects))}. Add projects.{project} with the tables, columns and "
                "cohort its approval covers."
            )
        return apply_view(self, view)

    def with_min_k(self, k: int | None) -> DatasetSpec:
        """The stricter of the spec's k and a project's k (our choice: a project can only raise k)."""
        if k is not None and self.k_anonymity is None:
            raise SpecError(
                f"{self.path}: k_anonymity: the project asks for k={k}, but the spec declares no "
                "quasi_identifiers to hold it over"
            )
        if k is None or self.k_anonymity is None or k <= self.k_anonymity.k:
            return self
        return replace(self, k_anonymity=replace(self.k_anonymity, k=k))


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def load_spec(path: Path | str, *, today: dt.date | None = None) -> DatasetSpec:
    """Read, validate and resolve a spec. Raises SpecError listing every problem found."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, found {type(doc).__name__}")
    problems = [
        f"{path}: {_where(err.absolute_path)}: {_message(err)}"
        for err in sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if problems:
        raise SpecError(problems)
    spec = _resolve(doc, path, (today or dt.date.today()).year)
    problems = _spec_problems(spec)
    if spec.preset is not None:
        problems += _preset_problems(spec, spec.preset)
    if problems:
        raise SpecError([f"{path}: {p}" for p in problems])
    for view in spec.projects.values():
        apply_view(spec, view)  # each project's view must be a valid spec too
    return spec


def _where(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown field(s)")
    if err.validator == "not" and "required" in json.dumps(err.validator_value):
        return "method and its parameters (band, width, top_code, level, keep) belong to transform: generalize only"
    return err.message


def _resolve(doc: Mapping[str, Any], path: Path, this_year: int) -> DatasetSpec:
    preset = load_preset(doc["preset"]) if doc.get("preset") else None
    defaults = preset.defaults if preset else {}
    gen = {**defaults.get("generalization", {}), **doc.get("generalization", {})}
    shift = {**defaults.get("date_shift", {}), **doc.get("date_shift", {})}
    person = doc.get("person", {})
    person_table, person_column = person.get("table", "person"), person.get("column", "person_id")
    tables = {name: _table(name, t, person_column, preset, gen, path) for name, t in doc["tables"].items()}
    names_files = tuple((path.parent / f).resolve() for f in doc.get("detector", {}).get("names_files", ()))
    sensitive = doc.get("sensitive_conditions", {})
    checks = sensitive.get("checks")
    projects = {p: _view(p, v) for p, v in (doc.get("projects") or {}).items()}
    return DatasetSpec(
        path=path,
        dataset=doc["dataset"],
        preset=preset,
        person_table=person_table,
        person_column=person_column,
        max_shift_days=shift.get("max_days"),
        top_code_age=gen.get("top_code_age"),
        reference_year=gen.get("reference_year", this_year),
        region_level=gen.get("region_level", DEFAULT_REGION_LEVEL),
        k_anonymity=_k_anonymity(doc.get("k_anonymity"), defaults, person_table),
        names_files=names_files,
        declarations=tuple(
            Declaration(d["category"], d["basis"], d["reference"]) for d in sensitive.get("declarations", ())
        ),
        sensitive_checks=(
            tuple(SensitiveCheck(c["table"], c.get("concept_column"), c.get("code_column")) for c in checks)
            if checks is not None
            else (preset.checks if preset else ())
        ),
        tables=tables,
        sha256=_spec_hash(doc, preset, names_files, tables),
        duplicates=person.get("duplicates", "refuse"),
        risk_accepted=dict((doc.get("risk") or {}).get("accepted", {})),
        projects=projects,
        linkage_max_share=(doc.get("linkage") or {}).get("max_share"),
        all_tables=tables,
    )


def _view(project: str, doc: Mapping[str, Any]) -> ProjectView:
    coarsen = doc.get("coarsen", {})
    cohort = doc.get("cohort")
    return ProjectView(
        project=project,
        tables=tuple(doc["tables"]) if "tables" in doc else None,
        drop_columns={t: tuple(c) for t, c in doc.get("drop_columns", {}).items()},
        cohort=(cohort["table"], cohort["column"], tuple(map(str, cohort["prefixes"]))) if cohort else None,
        records={t: (r["column"], tuple(map(str, r["prefixes"]))) for t, r in doc.get("records", {}).items()},
        dates=coarsen.get("dates", "day"),
        numbers=dict(coarsen.get("numbers", {})),
        rare_codes={c: int(v["min_persons"]) for c, v in coarsen.get("rare_codes", {}).items()},
    )


def apply_view(spec: DatasetSpec, view: ProjectView) -> DatasetSpec:
    """The spec minimized to one project's view; the view is checked like the spec itself."""
    problems = _view_problems(spec, view)
    if problems:
        raise SpecError([f"{spec.path}: projects.{view.project}: {p}" for p in problems])
    tables = {}
    for name, t in spec.tables.items():
        if view.tables is not None and name not in view.tables:
            continue
        dropped = set(view.drop_columns.get(name, ()))
        columns = {
            c: (replace(r, transform="drop", method=None, params={}, allow=None) if c in dropped else r)
            for c, r in t.columns.items()
        }
        tables[name] = replace(t, columns=columns)
    k = spec.k_anonymity
    if k is not None:
        # A sensitive attribute in a table the project does not get is not disclosed to it: nothing to diversify.
        published = tuple(
            a
            for a in k.sensitive_attributes
            if (a.rpartition(".")[0] or spec.person_table) in tables
            and a.rpartition(".")[2] in tables[a.rpartition(".")[0] or spec.person_table].output_columns()
        )
        k = replace(k, sensitive_attributes=published)
    viewed = replace(spec, tables=tables, view=view, k_anonymity=k)
    problems = _spec_problems(viewed)
    if problems:
        raise SpecError([f"{spec.path}: projects.{view.project}: {p}" for p in problems])
    return viewed


def _view_problems(spec: DatasetSpec, view: ProjectView) -> list[str]:
    problems = []
    names = set(spec.tables)
    for t in view.tables or ():
        if t not in names:
            problems.append(f"tables: '{t}' is not a table of the spec")
    if view.tables is not None and spec.person_table not in view.tables:
        problems.append(f"tables: the person table '{spec.person_table}' must be published")
    published = set(view.tables if view.tables is not None else names)
    for t, cols in view.drop_columns.items():
        for c in cols:
            if t not in names or c not in spec.tables[t].columns:
                problems.append(f"drop_columns.{t}: '{c}' is not a column of the spec")
    located = [("cohort", view.cohort[0], view.cohort[1])] if view.cohort else []
    located += [(f"records.{t}", t, c) for t, (c, _) in view.records.items()]
    for at, t, c in located:
        if t not in published or c not in spec.tables[t].columns:
            problems.append(f"{at}: '{t}.{c}' is not a column of a table this project gets")
    for ref in [*view.numbers, *view.rare_codes]:
        t, _, c = ref.partition(".")
        if t not in published or c not in spec.tables[t].columns:
            problems.append(f"coarsen: '{ref}' is not a column (table.column) of a table this project gets")
    return problems


def _k_anonymity(
    doc: Mapping[str, Any] | None, defaults: Mapping[str, Any], person_table: str
) -> KAnonymitySpec | None:
    if doc is None:
        return None
    return KAnonymitySpec(
        k=doc.get("k", defaults.get("k_anonymity", {}).get("k", DEFAULT_K)),
        table=person_table,
        quasi_identifiers=tuple(doc["quasi_identifiers"]),
        sensitive_attributes=tuple(doc.get("sensitive_attributes", ())),
        l=doc.get("l"),
    )


def _table(
    name: str, doc: Mapping[str, Any], person_column: str, preset: Preset | None, gen, path: Path
) -> TableSpec:
    columns = {
        col: _rule(col, r, preset, gen, path, f"tables.{name}.columns.{col}")
        for col, r in doc["columns"].items()
    }
    default_person = person_column if person_column in columns else None
    return TableSpec(
        name=name,
        file=doc.get("file"),
        optional=doc.get("optional", False),
        person_column=doc.get("person_column", default_person),
        columns=columns,
    )


def _rule(
    column: str,
    doc: str | Mapping[str, Any],
    preset: Preset | None,
    gen: Mapping[str, Any],
    path: Path,
    at: str,
) -> ColumnRule:
    if isinstance(doc, str):
        doc = {"transform": doc}
    kind = doc.get("kind")
    if kind is None and preset is not None:
        inferred = preset.kind_of(column)
        kind = inferred.name if inferred else None
    waive = doc.get("waive")
    params = {k: doc[k] for k in ("band", "width", "top_code", "level", "keep") if k in doc}
    method = doc.get("method")
    if method == "birth_year":
        params.setdefault("band", 1)
        params.setdefault("top_code_age", gen.get("top_code_age"))
    elif method == "age_band":
        params.setdefault("width", 5)
        params.setdefault("top_code", gen.get("top_code_age"))
    elif method == "top_code":
        params.setdefault("top_code", gen.get("top_code_age"))
    elif method == "region":
        params.setdefault("level", gen.get("region_level", DEFAULT_REGION_LEVEL))
    allow_doc = doc.get("allow")
    if allow_doc is None and doc["transform"] == "keep" and preset is not None:
        allow_doc = preset.default_allow(column)
    try:
        allow = allowlist.parse(allow_doc, path.parent, f"{path}: {at}") if allow_doc else None
    except SpecError as exc:
        raise SpecError(exc.problems) from None
    return ColumnRule(
        column=column,
        transform=doc["transform"],
        allow=allow,
        optional=bool(doc.get("optional", False)),
        kind=None if kind == "none" else kind,
        domain=(doc.get("domain") or column) if doc["transform"] == "pseudonymize" else None,
        method=method,
        params=params,
        waiver=Waiver(tuple(waive["detectors"]), waive["reason"]) if waive else None,
    )


def _spec_hash(
    doc: Mapping[str, Any],
    preset: Preset | None,
    names_files: tuple[Path, ...],
    tables: Mapping[str, TableSpec],
) -> str:
    names: dict[str, str | None] = {}
    for f in names_files:
        try:
            names[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
        except OSError:
            names[f.name] = None  # reported as a problem by _spec_problems
    codes = {
        f"{t.name}.{c}": hashlib.sha256("\n".join(sorted(r.allow.codes)).encode()).hexdigest()
        for t in tables.values()
        for c, r in t.columns.items()
        if r.allow is not None and r.allow.kind == "codes_file"
    }
    canonical = {
        "spec": doc,
        "preset": preset.document if preset else None,
        "names_files": names,
        "codes_files": codes,
    }
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _spec_problems(spec: DatasetSpec) -> list[str]:
    """Consistency rules across tables that the schema cannot express."""
    problems: list[str] = []
    person = spec.tables.get(spec.person_table)
    if person is None:
        return [f"person.table: '{spec.person_table}' is not in tables"]
    pid = person.columns.get(spec.person_column)
    if pid is None or pid.transform != "pseudonymize":
        problems.append(
            f"tables.{spec.person_table}.columns.{spec.person_column}: the person id must be pseudonymize"
        )
        return problems
    for t in spec.tables.values():
        problems += _table_problems(spec, t)
    problems += _k_problems(spec)
    problems += _candidate_problems(spec)
    for f in spec.names_files:
        if not f.is_file():
            problems.append(f"detector.names_files: {f}: no such file")
    return problems


def _table_problems(spec: DatasetSpec, t: TableSpec) -> list[str]:
    problems = []
    at = f"tables.{t.name}"
    shifted = [c for c, r in t.columns.items() if r.transform == "date_shift"]
    if t.person_column is None:
        if shifted:
            problems.append(f"{at}: date_shift of {', '.join(shifted)} needs a person column (person_column)")
    else:
        rule = t.columns.get(t.person_column)
        if rule is None:
            problems.append(f"{at}.person_column: '{t.person_column}' is not in columns")
        elif rule.transform != "pseudonymize" or rule.domain != spec.person_domain:
            problems.append(
                f"{at}.columns.{t.person_column}: the person column must be pseudonymize in domain "
                f"'{spec.person_domain}', like {spec.person_table}.{spec.person_column}"
            )
    for c, r in t.columns.items():
        if r.transform == "keep" and r.allow is None:
            problems.append(
                f"{at}.columns.{c}: a kept column must declare what it may hold (allow: codes, codes_file, "
                "pattern, regex, categorical, integer or number), or be dropped"
            )
    if shifted and spec.max_shift_days is None:
        problems.append(f"{at}: date_shift needs date_shift.max_days (or a preset that sets it)")
    for c, r in t.columns.items():
        if r.method == "top_code" and r.params.get("top_code") is None:
            problems.append(f"{at}.columns.{c}: top_code needs top_code or generalization.top_code_age")
    return problems


def _k_problems(spec: DatasetSpec) -> list[str]:
    k = spec.k_anonymity
    if k is None:
        return []
    table = spec.tables.get(k.table)
    if table is None:
        return [f"k_anonymity.table: '{k.table}' is not in tables"]
    if table.person_column is None:
        return [
            f"k_anonymity.table: '{k.table}' has no person column, so suppression cannot reach other tables"
        ]
    problems = []
    outputs = set(table.output_columns())
    for i, qi in enumerate(k.quasi_identifiers):
        if qi not in outputs:
            problems.append(
                f"k_anonymity.quasi_identifiers[{i}]: '{qi}' is not an output column of {k.table}"
            )
    for i, sa in enumerate(k.sensitive_attributes):
        tname, _, col = sa.rpartition(".")
        other = spec.tables.get(tname or k.table)
        if other is None or col not in other.output_columns():
            problems.append(f"k_anonymity.sensitive_attributes[{i}]: '{sa}' is not an output column")
        elif other.person_column is None:
            problems.append(f"k_anonymity.sensitive_attributes[{i}]: table '{tname}' has no person column")
    return problems


def risk_candidates(spec: DatasetSpec) -> dict[str, list[str]]:
    """Candidate quasi-identifiers the published data carries: name -> where (``table.column``)."""
    found: dict[str, list[str]] = {}
    for t in spec.tables.values():
        if t.person_column is None:
            continue
        outputs = set(t.output_columns())
        for c in outputs:
            low = c.lower()
            if low.endswith("provider_id"):
                found.setdefault("provider", []).append(f"{t.name}.{c}")
            elif low.endswith("care_site_id"):
                found.setdefault("care_site", []).append(f"{t.name}.{c}")
        if t.name == "condition_occurrence" and outputs & {"condition_concept_id", "condition_source_value"}:
            found.setdefault("conditions", []).append(t.name)
        if t.name == "visit_occurrence" and "visit_start_date" in outputs:
            found.setdefault("visit_gaps", []).append(f"{t.name}.visit_start_date")
        if t.name == "measurement" and outputs & {"measurement_concept_id", "measurement_source_value"}:
            found.setdefault("lab_sequence", []).append(t.name)
    return found


def _candidate_problems(spec: DatasetSpec) -> list[str]:
    """Each candidate the data carries is a declared quasi-identifier or is left out with a reason."""
    declared = set(spec.k_anonymity.quasi_identifiers) if spec.k_anonymity else set()
    problems = []
    for name, where in sorted(risk_candidates(spec).items()):
        if name in spec.risk_accepted:
            continue
        person_cols = {w.partition(".")[2] for w in where if w.startswith(f"{spec.person_table}.")}
        if person_cols and person_cols <= declared and len(person_cols) == len(where):
            continue
        problems.append(
            f"risk.accepted.{name}: the published data carries {RISK_CANDIDATES[name]} ({', '.join(where)}), "
            "which can act as a quasi-identifier; add it to k_anonymity.quasi_identifiers, drop it, or justify "
            f"publishing it (risk: {{accepted: {{{name}: <reason>}}}})"
        )
    for name in spec.risk_accepted:
        if name not in RISK_CANDIDATES:
            problems.append(f"risk.accepted.{name}: not a candidate ({', '.join(RISK_CANDIDATES)})")
    return problems


def _preset_problems(spec: DatasetSpec, preset: Preset) -> list[str]:
    """The preset's rules by identifier kind, for every column of every table."""
    problems = []
    for t in spec.tables.values():
        for c, rule in t.columns.items():
            if rule.kind is None:
                continue
            kind = preset.kind(rule.kind)
            if kind is None:
                continue
            at = f"tables.{t.name}.columns.{c}"
            if rule.label not in kind.allowed:
                allowed = " or ".join(kind.allowed)
                problems.append(
                    f"{at}: {preset.name} preset: a {kind.name} column must be {allowed}, not {rule.label} "
                    f"({kind.rule}; if this is not a {kind.name}, say kind: none with a reason)"
                )
                continue
            problems += [f"{at}: {preset.name} preset: {p}" for p in _param_problems(spec, rule, kind)]
    known = set(preset.categories)
    for i, d in enumerate(spec.declarations):
        if d.category not in known:
            problems.append(
                f"sensitive_conditions.declarations[{i}].category: '{d.category}' is not a category"
            )
    return problems


def _param_problems(spec: DatasetSpec, rule: ColumnRule, kind) -> list[str]:
    """Generalizations must be at least as coarse as the preset asks."""
    p = rule.params
    limit = spec.top_code_age
    if rule.method == "birth_year" and limit is not None and (p.get("top_code_age") or 10**6) > limit:
        return [f"birth years must be top-coded at age {limit} or younger"]
    if rule.method in ("age_band", "top_code") and limit is not None and (p.get("top_code") or 10**6) > limit:
        return [f"ages must be top-coded at {limit} or lower (generalization.top_code_age)"]
    if rule.method == "region" and spec.region_level == "sido" and p.get("level") != "sido":
        return ["regions must be generalized to sido (generalization.region_level)"]
    if rule.method == "truncate" and kind.max_keep is not None and p.get("keep", 0) > kind.max_keep:
        return [f"a {kind.name} may keep at most {kind.max_keep} leading characters"]
    return []


def leak_kinds() -> frozenset[str]:
    """Kinds whose raw values are collected and searched for in every output value (see detector)."""
    return DIRECT_IDENTIFIER_KINDS - {"free_text", "photo"}

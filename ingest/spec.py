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

    @property
    def person_domain(self) -> str:
        rule = self.tables[self.person_table].columns[self.person_column]
        return rule.domain or self.person_column

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
    tables = {name: _table(name, t, person_column, preset, gen) for name, t in doc["tables"].items()}
    names_files = tuple((path.parent / f).resolve() for f in doc.get("detector", {}).get("names_files", ()))
    sensitive = doc.get("sensitive_conditions", {})
    checks = sensitive.get("checks")
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
        sha256=_spec_hash(doc, preset, names_files),
    )


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


def _table(name: str, doc: Mapping[str, Any], person_column: str, preset: Preset | None, gen) -> TableSpec:
    columns = {col: _rule(col, r, preset, gen) for col, r in doc["columns"].items()}
    default_person = person_column if person_column in columns else None
    return TableSpec(
        name=name,
        file=doc.get("file"),
        optional=doc.get("optional", False),
        person_column=doc.get("person_column", default_person),
        columns=columns,
    )


def _rule(
    column: str, doc: str | Mapping[str, Any], preset: Preset | None, gen: Mapping[str, Any]
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
    return ColumnRule(
        column=column,
        transform=doc["transform"],
        kind=None if kind == "none" else kind,
        domain=(doc.get("domain") or column) if doc["transform"] == "pseudonymize" else None,
        method=method,
        params=params,
        waiver=Waiver(tuple(waive["detectors"]), waive["reason"]) if waive else None,
    )


def _spec_hash(doc: Mapping[str, Any], preset: Preset | None, names_files: tuple[Path, ...]) -> str:
    names: dict[str, str | None] = {}
    for f in names_files:
        try:
            names[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
        except OSError:
            names[f.name] = None  # reported as a problem by _spec_problems
    canonical = {"spec": doc, "preset": preset.document if preset else None, "names_files": names}
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

"""Presets: rules by identifier type that every column of a spec must satisfy (ingest/presets/*.yaml).

A spec says what to do with each column; a preset says what is *allowed* for each kind of identifier,
whatever the spec says. The kind of a column is its explicit ``kind:`` in the spec, else the first kind
of the preset whose name patterns match. So a hospital's ``patient_tel`` column is a phone number, must
be dropped, and a spec that keeps it is refused before any data is read.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from ingest.errors import SpecError

NEVER_IDENTIFIERS = ("*concept_id",)
"""OMOP vocabulary codes (``*_concept_id``, ``*_source_concept_id``) say what happened, not to whom: no
name pattern may turn one into an identifier (``ethnicity_concept_id`` is not a city)."""

DIRECT_IDENTIFIER_KINDS = frozenset(
    {"rrn", "insurance_no", "mrn", "name", "phone", "email", "address", "photo", "device_id", "free_text"}
)


@dataclass(frozen=True)
class Kind:
    name: str
    rule: str
    allowed: tuple[str, ...]
    """``drop``, ``keep``, ``pseudonymize``, ``date_shift`` or ``generalize:<method>``."""
    patterns: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    max_keep: int | None = None

    def matches(self, column: str) -> bool:
        col = column.lower()
        if any(fnmatch.fnmatchcase(col, p.lower()) for p in self.excluded):
            return False
        return any(fnmatch.fnmatchcase(col, p.lower()) for p in self.patterns)


@dataclass(frozen=True)
class SensitiveCategory:
    name: str
    label: str
    icd10_prefixes: tuple[str, ...]
    """Normalised: upper case, dots removed."""
    concept_ids: tuple[int, ...]


@dataclass(frozen=True)
class SensitiveCheck:
    table: str
    concept_column: str | None
    code_column: str | None


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    defaults: Mapping[str, Any]
    kinds: tuple[Kind, ...]
    categories: Mapping[str, SensitiveCategory]
    checks: tuple[SensitiveCheck, ...]
    document: Mapping[str, Any]
    """The preset file as loaded: it goes into the spec hash, so changing the preset changes the hash."""

    def kind_of(self, column: str) -> Kind | None:
        if any(fnmatch.fnmatchcase(column.lower(), p) for p in NEVER_IDENTIFIERS):
            return None
        return next((kind for kind in self.kinds if kind.matches(column)), None)

    def default_allow(self, column: str) -> Mapping[str, Any] | None:
        """The preset's ``allow:`` for a kept column the spec declares nothing for (``*_concept_id``: an
        OMOP concept id is an integer)."""
        for pattern, allow in (self.defaults.get("allow") or {}).items():
            if fnmatch.fnmatchcase(column.lower(), pattern):
                return allow
        return None

    def kind(self, name: str) -> Kind | None:
        return next((kind for kind in self.kinds if kind.name == name), None)


def normalise_code(code: str) -> str:
    """ICD-10/KCD codes compare without dots and case: 'f32.9' and 'F329' are the same code."""
    return code.replace(".", "").strip().upper()


@cache
def load_preset(name: str) -> Preset:
    """Load a shipped preset by name (``kr-health``)."""
    try:
        text = resources.files("ingest.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"preset: unknown preset '{name}'") from None
    doc = yaml.safe_load(text)
    kinds = tuple(
        Kind(
            name=kname,
            rule=k["rule"],
            allowed=tuple(k["allowed"]),
            patterns=tuple(k["patterns"]),
            excluded=tuple(k.get("except", ())),
            max_keep=k.get("max_keep"),
        )
        for kname, k in doc["kinds"].items()
    )
    categories = {
        cname: SensitiveCategory(
            cname,
            c["label"],
            tuple(normalise_code(str(p)) for p in c["icd10_prefixes"]),
            tuple(c["concept_ids"]),
        )
        for cname, c in doc["sensitive_categories"].items()
    }
    checks = tuple(
        SensitiveCheck(c["table"], c.get("concept_column"), c.get("code_column"))
        for c in doc["sensitive_checks"]
    )
    return Preset(doc["preset"], doc["title"], doc["defaults"], kinds, categories, checks, doc)

"""The API input has one description: every documented field is validated, every validated field is
documented, and the OpenAPI document publishes exactly that description.

The bodies go through the real request code (exports.web.perform and create_from_body) with a stand-in
workflow that only records, so what is checked is what a request to the service meets."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from exports.domain import BadRequest
from exports.inputs import BODY_SCHEMAS
from exports.openapi import openapi_document
from exports.web import create_from_body, perform

# Valid bodies using every documented field (some actions read some fields only in one form).
BASES: dict[str, list[dict[str, Any]]] = {
    "create": [
        {
            "project": "p1",
            "groups": [
                {
                    "name": "main",
                    "context": "Table 1",
                    "controls": "n >= 10",
                    "files": [{"path": "t1.csv", "role": "output", "count_columns": ["n"]}],
                }
            ],
            "provenance": {"image_digest": "sha256:ab", "notebook": "a.ipynb"},
            "submit": False,
        },
        {
            "project": "p1",
            "paths": ["t1.csv"],
            "supporting": ["acro/results.json"],
            "group": "main",
            "context": "Table 1",
            "controls": "n >= 10",
        },
    ],
    "remove_file": [{"path": "t1.csv"}],
    "votes": [
        {"file_id": 1, "decision": "approve", "comment": "fine", "visibility": "checkers"},
        {"path": "t1.csv", "decision": "request_changes"},
    ],
    "review": [{"verdict": "votes"}],
    "return": [{"reason": "please explain"}],
    "comments": [{"text": "see row 3", "visibility": "researcher", "path": "t1.csv"}],
    "revoke": [{"reason": "released by mistake"}],
}
BASES["files"] = [{k: v for k, v in b.items() if k not in ("project", "submit")} for b in BASES["create"]]


class Recording(dict):
    """A JSON object that notes every key the code asks it for, as a dotted path."""

    def __init__(self, data: dict[str, Any], prefix: str, seen: set[str]):
        super().__init__({k: _wrap(v, f"{prefix}{k}", seen) for k, v in data.items()})
        self._prefix, self._seen = prefix, seen

    def _note(self, key: object) -> None:
        self._seen.add(f"{self._prefix}{key}")

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return super().__contains__(key)


def _wrap(value: Any, path: str, seen: set[str]) -> Any:
    if isinstance(value, dict):
        return Recording(value, f"{path}.", seen)
    if isinstance(value, list):
        return [_wrap(v, f"{path}[]", seen) for v in value]
    return value


class RecordingWorkflow:
    """Accepts every call, so only input validation can refuse."""

    def refusals(self, *args: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def get(self, identity: Any, request_id: str) -> Any:
        current = SimpleNamespace(id=1)
        return SimpleNamespace(id=request_id, current_file=lambda path: current if path == "t1.csv" else None)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: name


IDENTITY = SimpleNamespace(in_container=False, project=None, name="alice")


def _send(action: str, body: dict[str, Any]) -> None:
    if action == "create":
        create_from_body(RecordingWorkflow(), IDENTITY, body)  # type: ignore[arg-type]
    else:
        perform(RecordingWorkflow(), IDENTITY, "r1", action, body)  # type: ignore[arg-type]


def _documented(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every field path the schema describes (``groups[].files[].path``), with its own schema."""
    fields: dict[str, dict[str, Any]] = {}
    for name, sub in schema.get("properties", {}).items():
        fields[prefix + name] = sub
        if "items" in sub:
            fields[f"{prefix}{name}[]"] = sub["items"]
            fields.update(_documented(sub["items"], f"{prefix}{name}[]."))
        fields.update(_documented(sub, f"{prefix}{name}."))
    return fields


def _leaves(body: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(body, dict):
        for key, value in body.items():
            yield prefix + key
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(body, list):
        for value in body:
            yield prefix.rstrip(".") + "[]"
            yield from _leaves(value, prefix.rstrip(".") + "[].")


def _bad_value(schema: dict[str, Any]) -> Any:
    """A value the schema refuses: a word outside an enum, else a type the schema does not allow."""
    if "enum" in schema:
        return "not-a-choice"
    return 12.5 if "object" in schema.get("type", ()) else {"bad": True}


def _set(body: Any, path: str, value: Any) -> None:
    """Set the field at ``path`` (through every item of a list) to ``value``."""
    head, _, rest = path.partition(".")
    key = head.removesuffix("[]")
    if head.endswith("[]"):
        items = body[key]
        for i in range(len(items)):
            if rest:
                _set(items[i], rest, value)
            else:
                items[i] = value
    elif rest:
        _set(body[key], rest, value)
    else:
        body[key] = value


@pytest.mark.parametrize("action", sorted(BASES))
def test_every_field_the_code_reads_is_documented(action: str) -> None:
    documented = set(_documented(BODY_SCHEMAS[action]))
    for base in BASES[action]:
        seen: set[str] = set()
        _send(action, Recording(copy.deepcopy(base), "", seen))
        assert seen - documented == set(), f"{action}: read but not documented"


@pytest.mark.parametrize("action", sorted(BASES))
def test_the_examples_use_every_documented_field_and_pass(action: str) -> None:
    validator = Draft202012Validator(BODY_SCHEMAS[action])
    used: set[str] = set()
    for base in BASES[action]:
        validator.validate(base)
        _send(action, copy.deepcopy(base))
        used |= set(_leaves(base))
    assert set(_documented(BODY_SCHEMAS[action])) - used == set(), f"{action}: documented but not exercised"


def _cases() -> Iterator[tuple[str, str, int]]:
    for action, bases in sorted(BASES.items()):
        for field in sorted(_documented(BODY_SCHEMAS[action])):
            i = next(i for i, b in enumerate(bases) if field in set(_leaves(b)))
            yield action, field, i


@pytest.mark.parametrize(("action", "field", "base"), list(_cases()))
def test_every_documented_field_is_validated(action: str, field: str, base: int) -> None:
    schema = _documented(BODY_SCHEMAS[action])[field]
    body = copy.deepcopy(BASES[action][base])
    _set(body, field, _bad_value(schema))
    assert not Draft202012Validator(BODY_SCHEMAS[action]).is_valid(body), f"the schema allows {field}"
    with pytest.raises(BadRequest):
        _send(action, body)


def test_the_openapi_document_publishes_the_input_schemas() -> None:
    document = openapi_document("/services/exports/")
    paths = document["paths"]
    for action, schema in BODY_SCHEMAS.items():
        if action == "create":
            assert document["components"]["schemas"]["CreateRequest"] is schema
            continue
        body = paths[f"/api/requests/{{id}}/{action}"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] is schema
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)

"""What a researcher sends to create or revise a request, parsed from JSON with errors naming the field.

A request body looks like::

    {"groups": [{"name": "main", "context": "...", "controls": "...",
                 "files": [{"path": "results/table1.csv", "count_columns": ["n"]},
                           {"path": "acro/results.json", "role": "supporting"}]}],
     "provenance": {"image_digest": "sha256:...", "notebook": "analysis.ipynb"},
     "submit": true}

For the simple case, ``{"paths": [...], "context": "...", "controls": "..."}`` means one group "main".
Only paths are accepted, never bytes: the service reads the files itself.

``BODY_SCHEMAS`` below is the one description of every request body: the OpenAPI document publishes it
as it is, the parsers here take their enumerations and defaults from it, and
tests/unit/test_exports_inputs_schema.py proves that every documented field is validated by the request
code and every field it reads is documented.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exports.domain import BadRequest, FileDecision, FileRole, ReviewVerdict, Visibility

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
MAX_TEXT = 10_000
MAX_FILES = 100
DEFAULT_GROUP = "main"

# --------------------------------------------------------------------------------------------------
# The one description of the input (JSON Schema, as published in the OpenAPI document)

_STR: dict[str, Any] = {"type": "string"}
_OPTIONAL_STR: dict[str, Any] = {"type": ["string", "null"]}
_TEXT = {**_OPTIONAL_STR, "description": f"Trimmed; {MAX_TEXT} characters at most"}
_VISIBILITY = {
    "enum": [v.value for v in Visibility] + [None],
    "default": Visibility.CHECKERS.value,
    "description": "Who reads it: checkers only, or the researcher too once the round is over",
}
DECISIONS: Mapping[str, FileDecision] = {
    "approve": FileDecision.APPROVED,
    "request_changes": FileDecision.CHANGES_REQUESTED,
    "approved": FileDecision.APPROVED,
    "changes_requested": FileDecision.CHANGES_REQUESTED,
}
"""The decision words a vote accepts: the two documented ones first, then the stored names."""

FILE_SCHEMA: dict[str, Any] = {
    "type": ["object", "string"],
    "description": "A file to export; a bare string is its path",
    "required": ["path"],
    "properties": {
        "path": {**_STR, "description": "Relative to the workspace root (/workspace)"},
        "role": {"enum": [r.value for r in FileRole], "default": FileRole.OUTPUT.value},
        "count_columns": {
            "type": "array",
            "items": {**_STR, "minLength": 1, "maxLength": 256},
            "description": "Columns holding counts of people, for the threshold checks",
        },
    },
}
GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {
            **_STR,
            "default": DEFAULT_GROUP,
            "description": "Letters, digits, space, '_', '.', '-'; 64 characters at most",
        },
        "context": _TEXT,
        "controls": _TEXT,
        "files": {"type": "array", "items": FILE_SCHEMA},
    },
}
ADD_FILES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Either 'groups', or 'paths' with 'context' and 'controls' (one group 'main'). "
    f"{MAX_FILES} files at most in one call.",
    "properties": {
        "groups": {"type": "array", "items": GROUP_SCHEMA},
        "paths": {"type": "array", "items": _STR},
        "supporting": {"type": "array", "items": _STR},
        "group": {**_STR, "default": DEFAULT_GROUP, "description": "The group name for 'paths'"},
        "context": _TEXT,
        "controls": _TEXT,
        "provenance": {
            "type": ["object", "null"],
            "properties": {
                "image_digest": {**_OPTIONAL_STR, "maxLength": 256},
                "notebook": {**_OPTIONAL_STR, "maxLength": 1024},
            },
        },
    },
}
CREATE_SCHEMA: dict[str, Any] = {
    **ADD_FILES_SCHEMA,
    "description": ADD_FILES_SCHEMA["description"]
    + " From a notebook container the project is the container's own and may be omitted.",
    "properties": {
        "project": _OPTIONAL_STR,
        **ADD_FILES_SCHEMA["properties"],
        "submit": {"type": "boolean", "default": False, "description": "Submit at once"},
    },
}


def _body(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


BODY_SCHEMAS: Mapping[str, dict[str, Any]] = {
    "create": CREATE_SCHEMA,
    "files": ADD_FILES_SCHEMA,
    "remove_file": _body(["path"], path=_STR),
    "votes": _body(
        ["decision"],
        file_id={"type": ["integer", "string"], "description": "A whole number; or name the file by 'path'"},
        path=_STR,
        decision={"enum": list(DECISIONS)},
        comment=_TEXT,
        visibility=_VISIBILITY,
    ),
    "review": _body(
        [],
        verdict={"enum": [v.value for v in ReviewVerdict] + [None], "default": ReviewVerdict.VOTES.value},
    ),
    "return": _body(["reason"], reason=_STR),
    "comments": _body(["text"], text=_STR, visibility=_VISIBILITY, path=_OPTIONAL_STR),
    "revoke": _body(["reason"], reason=_STR),
}
"""Each action's request body, keyed by the last part of its path (``api/requests/<id>/<action>``);
"create" is ``POST api/requests``."""


@dataclass(frozen=True)
class FileInput:
    path: str
    role: FileRole = FileRole.OUTPUT
    count_columns: tuple[str, ...] = ()
    label: str = "path"
    """Where this came from in the body, for error messages (``groups[0].files[1].path``)."""


@dataclass(frozen=True)
class GroupInput:
    name: str
    context: str | None
    controls: str | None
    files: tuple[FileInput, ...]


@dataclass(frozen=True)
class ProvenanceClaims:
    """What the container says about itself. Recorded as reported, never used to decide anything."""

    image_digest: str | None = None
    notebook: str | None = None


def _text(value: Any, field: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"{field}: is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string")
    value = value.strip()
    if required and not value:
        raise BadRequest(f"{field}: must not be empty")
    if len(value) > limit:
        raise BadRequest(f"{field}: is longer than {limit} characters")
    return value


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequest(f"{field}: must be a JSON object")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{field}: must be a list")
    return value


def parse_groups(body: Mapping[str, Any]) -> list[GroupInput]:
    body = _object(body, "body")
    if "groups" in body:
        raw_groups = _list(body["groups"], "groups")
    elif "paths" in body:
        raw_groups = [
            {
                "name": body.get("group", DEFAULT_GROUP),
                "context": body.get("context"),
                "controls": body.get("controls"),
                "files": [{"path": p} for p in _list(body["paths"], "paths")]
                + [
                    {"path": p, "role": "supporting"} for p in _list(body.get("supporting", []), "supporting")
                ],
            }
        ]
    else:
        raise BadRequest("body: give 'groups' (or 'paths' with 'context' and 'controls')")
    groups = [_group(g, f"groups[{i}]") for i, g in enumerate(raw_groups)]
    _no_duplicates(groups)
    if sum(len(g.files) for g in groups) > MAX_FILES:
        raise BadRequest(f"groups: more than {MAX_FILES} files in one call")
    return groups


def _group(raw: Any, field: str) -> GroupInput:
    raw = _object(raw, field)
    name = _text(raw.get("name", DEFAULT_GROUP), f"{field}.name", required=True, limit=64)
    assert name is not None
    if not GROUP_NAME.match(name):
        raise BadRequest(f"{field}.name {name!r}: letters, digits, space, '_', '.', '-' only (64 at most)")
    files = tuple(
        _file(f, f"{field}.files[{j}]") for j, f in enumerate(_list(raw.get("files", []), f"{field}.files"))
    )
    return GroupInput(
        name,
        _text(raw.get("context"), f"{field}.context"),
        _text(raw.get("controls"), f"{field}.controls"),
        files,
    )


def _file(raw: Any, field: str) -> FileInput:
    if isinstance(raw, str):
        raw = {"path": raw}
    raw = _object(raw, field)
    role_raw = raw.get("role", FileRole.OUTPUT.value)
    try:
        role = FileRole(role_raw)
    except ValueError:
        raise BadRequest(f"{field}.role {role_raw!r}: must be 'output' or 'supporting'") from None
    columns = _list(raw.get("count_columns", []), f"{field}.count_columns")
    if not all(isinstance(c, str) and 0 < len(c) <= 256 for c in columns):
        raise BadRequest(f"{field}.count_columns: must be a list of column names")
    if not isinstance(raw.get("path"), str):
        raise BadRequest(f"{field}.path: a file path relative to the workspace is required")
    return FileInput(raw["path"], role, tuple(columns), f"{field}.path")


def _no_duplicates(groups: list[GroupInput]) -> None:
    """Group names here; file paths are compared after normalisation, in the workflow."""
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise BadRequest("groups: a group name is given twice")


def parse_provenance(body: Mapping[str, Any]) -> ProvenanceClaims:
    raw = body.get("provenance") or {}
    raw = _object(raw, "provenance")
    digest = _text(raw.get("image_digest"), "provenance.image_digest", limit=256)
    if digest and not re.fullmatch(r"[A-Za-z0-9@:._/+-]{1,256}", digest):
        raise BadRequest("provenance.image_digest: not an image digest")
    return ProvenanceClaims(
        digest or None, _text(raw.get("notebook"), "provenance.notebook", limit=1024) or None
    )


def parse_bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key}: must be true or false")
    return value


def parse_decision(value: Any) -> FileDecision:
    if not isinstance(value, str) or value not in DECISIONS:
        raise BadRequest(f"decision {value!r}: must be 'approve' or 'request_changes'")
    return DECISIONS[value]


def parse_verdict(value: Any) -> ReviewVerdict:
    try:
        return ReviewVerdict(value if value is not None else ReviewVerdict.VOTES.value)
    except ValueError:
        raise BadRequest(f"verdict {value!r}: must be 'votes' or 'reject'") from None


def parse_visibility(value: Any) -> Visibility:
    try:
        return Visibility(value if value is not None else Visibility.CHECKERS.value)
    except ValueError:
        raise BadRequest(f"visibility {value!r}: must be 'checkers' or 'researcher'") from None


def parse_comment(value: Any, field: str = "text", *, required: bool = True) -> str | None:
    return _text(value, field, required=required)

"""The OpenAPI 3.1 description of the export service's REST API, served at ``api/openapi.json``."""

from __future__ import annotations

from typing import Any

from exports.domain import RequestStatus
from exports.inputs import BODY_SCHEMAS, CREATE_SCHEMA, FILE_SCHEMA, GROUP_SCHEMA

STATUSES = [status.value for status in RequestStatus]
"""Taken from the domain, so a new status is documented the moment it exists."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Bad input; the message names the field or file"),
    "403": _json(_ref("Error"), "Not authenticated, or not allowed; the message says why"),
    "404": _json(_ref("Error"), "No such request or file"),
    "409": _json(_ref("Error"), "Not allowed in the request's current state"),
}


def _action(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/RequestId"}],
        "responses": {"200": _json(_ref("Request"), "The request after the action"), **ERRORS},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


STR = {"type": "string"}


def openapi_document(base: str) -> dict[str, Any]:
    """The whole document: request bodies come from exports.inputs, statuses from exports.domain."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Research enclave export review service", "version": "1"},
        "servers": [{"url": base.rstrip("/")}],
        "components": {
            "schemas": _schemas(),
            "parameters": {"RequestId": {"name": "id", "in": "path", "required": True, "schema": STR}},
            "securitySchemes": _security_schemes(),
        },
        "security": [{"hubToken": []}, {"hubOAuth": []}],
        "paths": {**_list_paths(), **_action_paths(), **_download_paths()},
    }


def _schemas() -> dict[str, Any]:
    return {
        "Error": _obj(["status", "error", "message"], status={"type": "integer"}, error=STR, message=STR),
        "FileInput": FILE_SCHEMA,
        "GroupInput": GROUP_SCHEMA,
        "CreateRequest": CREATE_SCHEMA,
        "CheckResult": _obj(
            ["check", "outcome"],
            check=STR,
            title=STR,
            outcome={"enum": ["pass", "review", "fail"]},
            message=STR,
            source={"enum": ["service", "researcher-acro"]},
            cell_total={"type": "integer"},
            cells={
                "type": "array",
                "items": _obj([], row={"type": "integer"}, column=STR, value=STR, note=STR),
            },
        ),
        "File": _obj(
            ["id", "path", "version", "sha256"],
            id={"type": "integer"},
            path=STR,
            version={"type": "integer"},
            sha256=STR,
            size={"type": "integer"},
            original_sha256={
                "type": ["string", "null"],
                "description": "the file as named, before canonical form",
            },
            original_size={"type": ["integer", "null"]},
            role=STR,
            group=STR,
            filetype=STR,
            current={"type": "boolean"},
            checks=_obj([], outcome=STR, results={"type": "array", "items": _ref("CheckResult")}),
            votes={"type": "array", "items": _obj([], reviewer=STR, decision=STR, round={"type": "integer"})},
        ),
        "Request": _obj(
            ["id", "project", "author", "status"],
            id=STR,
            project=STR,
            author=STR,
            status={"enum": STATUSES},
            round={"type": "integer"},
            files={"type": "array", "items": _ref("File")},
            previous_versions={"type": "array", "items": _ref("File")},
            comments={"type": "array", "items": {"type": "object"}},
            history={"type": "array", "items": {"type": "object"}},
            released={"type": "array", "items": {"type": "object"}},
            actions={"type": "array", "items": STR},
        ),
        "RequestSummary": _obj(
            ["id", "status"],
            id=STR,
            project=STR,
            author=STR,
            status={"enum": STATUSES},
            files={"type": "integer"},
            checks={"type": "object"},
            reviews_submitted={"type": "integer"},
            reviewers_required={"type": "integer"},
        ),
    }


def _list_paths() -> dict[str, Any]:
    return {
        "/api/requests": {
            "get": {
                "summary": "List requests: your own ('mine'), or the review queue ('queue', checkers and admins)",
                "parameters": [
                    {"name": "scope", "in": "query", "schema": {"enum": ["mine", "queue"]}},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": STR,
                        "description": "Comma-separated statuses",
                    },
                    {"name": "project", "in": "query", "schema": STR},
                    {"name": "order", "in": "query", "schema": {"enum": ["oldest", "newest"]}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            ["items", "total"],
                            items={"type": "array", "items": _ref("RequestSummary")},
                            total={"type": "integer"},
                            offset={"type": "integer"},
                            limit={"type": "integer"},
                        ),
                        "A page of requests",
                    ),
                    **ERRORS,
                },
            },
            "post": {
                "summary": "Create a request from workspace paths (the service reads and freezes the files)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateRequest")}},
                },
                "responses": {"201": _json(_ref("Request"), "The new request"), **ERRORS},
            },
        },
        "/api/requests/{id}": {
            "get": _action("One request, as the caller may see it (blinding applies)", None)
        },
    }


ACTIONS = {
    "files": "Add files or new versions (PENDING or RETURNED)",
    "remove_file": "Remove a file (old versions are kept)",
    "submit": "Submit, or resubmit after RETURNED",
    "withdraw": "Withdraw (PENDING or RETURNED)",
    "votes": "A checker's vote on one file (changeable until the review is submitted)",
    "review": "Submit this checker's review; with the last required review the system decides",
    "return": "Return early to the researcher, with a reason",
    "comments": "Comment (researchers' comments are always visible to checkers)",
    "revoke": "Revoke a release (checkers and admins)",
}
"""The POST actions on one request; an action with a body takes its schema from inputs.BODY_SCHEMAS."""


def _action_paths() -> dict[str, Any]:
    return {
        f"/api/requests/{{id}}/{name}": _path_post(_action(summary, BODY_SCHEMAS.get(name)))
        for name, summary in ACTIONS.items()
    }


def _download_paths() -> dict[str, Any]:
    return {
        "/api/requests/{id}/files/{file_id}/content": {
            "get": {
                "summary": "The frozen bytes of an image file, for display",
                "parameters": [
                    {"$ref": "#/components/parameters/RequestId"},
                    {"name": "file_id", "in": "path", "required": True, "schema": {"type": "integer"}},
                ],
                "responses": {"200": {"description": "image/png"}, **ERRORS},
            }
        },
        "/requests/{id}/download/{file_id}": {
            "get": {
                "summary": "Download a released file (the requester only, from a browser session)",
                "parameters": [
                    {"$ref": "#/components/parameters/RequestId"},
                    {"name": "file_id", "in": "path", "required": True, "schema": {"type": "integer"}},
                ],
                "responses": {"200": {"description": "The released bytes; header X-Export-SHA256"}, **ERRORS},
            }
        },
        "/api/whoami": {
            "get": {
                "summary": "Who the service thinks you are",
                "responses": {"200": {"description": "identity"}, **ERRORS},
            }
        },
    }


def _security_schemes() -> dict[str, Any]:
    return {
        "hubToken": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "'token <JupyterHub API token>' (a notebook server's own token, "
            "or a user token with custom:exports:* scopes)",
        },
        "hubOAuth": {"type": "apiKey", "in": "cookie", "name": "service-exports"},
    }


def _path_post(op: dict[str, Any]) -> dict[str, Any]:
    return {"post": op}

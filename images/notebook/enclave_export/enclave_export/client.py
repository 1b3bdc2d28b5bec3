"""The HTTP calls, with the standard library only (the image installs this offline)."""

from __future__ import annotations

import json
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

DEFAULT_WORKSPACE = "/workspace"
TIMEOUT_SECONDS = 300  # the service reads and checks every file before it answers


class ExportClientError(Exception):
    """A refusal or failure, with the service's message (which names the file or field at fault)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _workspace_root() -> str:
    return os.environ.get("ENCLAVE_WORKSPACE", DEFAULT_WORKSPACE).rstrip("/") or "/"


def to_workspace_path(path: str, cwd: str | None = None) -> str:
    """``path`` (absolute, or relative to the current directory) as a path relative to /workspace.

    Only the text is changed (no symlink is resolved here): the service checks the real file itself.
    """
    root = _workspace_root()
    if not path or not path.strip():
        raise ExportClientError("an empty path names no file")
    full = path if posixpath.isabs(path) else posixpath.join(cwd or os.getcwd(), path)
    full = posixpath.normpath(full)
    if full == root or not full.startswith(root + "/"):
        raise ExportClientError(f"{path}: only files inside {root} can be exported")
    return full[len(root) + 1 :]


def _base_url() -> str:
    url = os.environ.get("ENCLAVE_EXPORT_URL", "")
    if not url:
        raise ExportClientError(
            "ENCLAVE_EXPORT_URL is not set: this command works inside an enclave notebook"
        )
    return url if url.endswith("/") else url + "/"


def _token() -> str:
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise ExportClientError(
            "JUPYTERHUB_API_TOKEN is not set: this command works inside an enclave notebook"
        )
    return token


def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = urllib.parse.urljoin(_base_url(), path)
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "token " + _token())
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as response:
            return json.loads(response.read().decode("utf-8") or "null")
    except urllib.error.HTTPError as exc:
        raise ExportClientError(_error_message(exc), exc.code) from None
    except urllib.error.URLError as exc:
        raise ExportClientError(f"cannot reach the export service at {_base_url()}: {exc.reason}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    raw = exc.read().decode("utf-8", "replace")
    try:
        message = json.loads(raw).get("message") or raw
    except (ValueError, AttributeError):
        message = raw.strip() or exc.reason
    return f"{exc.code}: {message}"


def _provenance() -> dict[str, str]:
    claims = {}
    if os.environ.get("ENCLAVE_IMAGE_DIGEST"):
        claims["image_digest"] = os.environ["ENCLAVE_IMAGE_DIGEST"]
    notebook = os.environ.get("JPY_SESSION_NAME")  # set by Jupyter for a notebook's kernel
    if notebook:
        try:
            claims["notebook"] = to_workspace_path(notebook, cwd=_workspace_root())
        except ExportClientError:
            pass
    return claims


def _files(paths: Iterable[str], role: str, count_columns: list[str] | None) -> list[dict[str, Any]]:
    files = []
    for p in paths:
        entry: dict[str, Any] = {"path": to_workspace_path(p), "role": role}
        if count_columns and role == "output":
            entry["count_columns"] = list(count_columns)
        files.append(entry)
    return files


def _group(
    paths: Iterable[str],
    supporting: Iterable[str],
    group: str,
    context: str | None,
    controls: str | None,
    count_columns: list[str] | None,
) -> dict[str, Any]:
    return {
        "name": group,
        "context": context,
        "controls": controls,
        "files": _files(paths, "output", count_columns) + _files(supporting, "supporting", None),
    }


def request(
    paths: Iterable[str],
    context: str,
    controls: str,
    *,
    supporting: Iterable[str] = (),
    group: str = "main",
    count_columns: list[str] | None = None,
    submit: bool = True,
) -> dict[str, Any]:
    """Ask to export ``paths`` (relative to the current directory or absolute under /workspace).

    ``context`` says what the outputs are; ``controls`` says which disclosure controls were applied.
    ``supporting`` files (e.g. ACRO's results.json) help the checkers and are never released.
    Returns the request as the service describes it, including the automated check results.
    """
    body = {
        "groups": [_group(paths, supporting, group, context, controls, count_columns)],
        "provenance": _provenance(),
        "submit": submit,
    }
    return call("POST", "api/requests", body)


def list_requests(status: str | None = None) -> list[dict[str, Any]]:
    query = "?scope=mine&limit=200" + (f"&status={urllib.parse.quote(status)}" if status else "")
    return call("GET", "api/requests" + query)["items"]


def show(request_id: str) -> dict[str, Any]:
    return call("GET", f"api/requests/{urllib.parse.quote(request_id)}")


def withdraw(request_id: str) -> dict[str, Any]:
    return call("POST", f"api/requests/{urllib.parse.quote(request_id)}/withdraw", {})


def resubmit(
    request_id: str,
    paths: Iterable[str] = (),
    *,
    context: str | None = None,
    controls: str | None = None,
    supporting: Iterable[str] = (),
    group: str = "main",
    count_columns: list[str] | None = None,
) -> dict[str, Any]:
    """Add new versions of files (old versions are kept), then submit again."""
    rid = urllib.parse.quote(request_id)
    paths, supporting = list(paths), list(supporting)
    if paths or supporting or context is not None or controls is not None:
        body = {
            "groups": [_group(paths, supporting, group, context, controls, count_columns)],
            "provenance": _provenance(),
        }
        call("POST", f"api/requests/{rid}/files", body)
    return call("POST", f"api/requests/{rid}/submit", {})

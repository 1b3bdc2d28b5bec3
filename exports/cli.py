"""``enclave export``: the operator's read-only view of the export queue, and the release retry.

Reviewing happens in the export service's pages (administrators cannot vote); from the host an operator
can list and inspect requests, and release what a crash left APPROVED.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from exports.domain import RequestStatus
from exports.projects import StaticProjectDirectory
from exports.storage import RequestQuery, SQLStorage, default_db_url
from ground.commands import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="inspect export requests; retry releases")
    sub = parser.add_subparsers(dest="export_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("list", help="list export requests (oldest first)")
    p.add_argument("--status", help="comma-separated statuses (default: all)")
    p.add_argument("--project")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = sub.add_parser("show", help="one request: files, hashes, checks, history")
    p.add_argument("request_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)

    p = sub.add_parser("retry", help="deliver pending audit events and release requests left APPROVED")
    p.set_defaults(handler=_retry)


def _storage(paths: Any) -> SQLStorage:
    url = os.environ.get("ENCLAVE_EXPORTS_DB_URL") or default_db_url(paths.state_dir)
    return SQLStorage.open(url)


def _cli_error(message: str) -> Exception:
    return CLIError(message)


def _statuses(raw: str | None) -> tuple[RequestStatus, ...]:
    if not raw:
        return ()
    try:
        return tuple(RequestStatus(s.strip().upper()) for s in raw.split(","))
    except ValueError:
        raise _cli_error(f"--status {raw!r}: use {', '.join(s.value for s in RequestStatus)}") from None


def _list(args: argparse.Namespace, paths: Any) -> int:
    if not 1 <= args.limit <= 10_000:
        raise _cli_error(f"--limit {args.limit}: must be between 1 and 10000")
    page = _storage(paths).list(RequestQuery(_statuses(args.status), args.project, None, True, 0, args.limit))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": s.id,
                        "project": s.project,
                        "author": s.author,
                        "status": s.status.value,
                        "submitted_at": s.submitted_at,
                        "files": s.file_count,
                        "checks": dict(s.checks),
                    }
                    for s in page.items
                ],
                indent=1,
            )
        )
        return 0
    for s in page.items:
        checks = " ".join(f"{k}={v}" for k, v in sorted(s.checks.items()) if v)
        print(
            f"{s.id}  {s.status.value:<18}  {s.project:<16}  {s.author:<10}  files={s.file_count}  {checks}"
        )
    print(f"{len(page.items)} of {page.total}")
    return 0


def _show(args: argparse.Namespace, paths: Any) -> int:
    request = _storage(paths).get(args.request_id)
    if request is None:
        raise _cli_error(f"request {args.request_id!r}: no such export request")
    if args.json:
        print(
            json.dumps(
                {
                    "id": request.id,
                    "project": request.project,
                    "author": request.author,
                    "status": request.status.value,
                    "round": request.round,
                    "files": [
                        {
                            "path": f.path,
                            "version": f.version,
                            "current": f.current,
                            "sha256": f.sha256,
                            "checks": f.checks.outcome.value,
                        }
                        for f in request.files
                    ],
                    "history": [
                        {"to": h.to_status.value, "actor": h.actor, "at": h.at, "reason": h.reason}
                        for h in request.history
                    ],
                    "released": [{"path": r.path, "sha256": r.sha256} for r in request.released],
                },
                indent=1,
            )
        )
        return 0
    print(
        f"{request.id}  {request.status.value}  project {request.project}  by {request.author}  round {request.round}"
    )
    for f in request.files:
        mark = "" if f.current else "  (replaced)"
        print(f"  {f.path} v{f.version} {f.role.value} {f.sha256} checks={f.checks.outcome.value}{mark}")
    for h in request.history:
        print(f"  {h.at}  -> {h.to_status.value:<18} by {h.actor}: {h.reason}")
    return 0


def _retry(args: argparse.Namespace, paths: Any) -> int:
    from exports.service import ConfigError, open_audit_log
    from exports.workflow import ExportWorkflow

    try:
        sink = open_audit_log(paths.state_dir)
    except ConfigError as exc:
        raise _cli_error(str(exc)) from None
    workflow = ExportWorkflow.at(
        paths.state_dir / "exports", _storage(paths), StaticProjectDirectory([]), sink
    )
    workflow.deliver_audit()
    released = workflow.release_pending()
    print(f"released: {', '.join(released) if released else 'nothing pending'}")
    return 0

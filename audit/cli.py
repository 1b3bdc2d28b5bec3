"""``enclave audit verify | show | checkpoint``.

Exit status of ``verify``: 0 the log verified; 3 it did not (tamper evidence: the first bad record is
named on stderr); 1 it could not be verified (missing or exposed key, no log), as for every CLIError.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit import keys
from audit.errors import AuditError
from audit.log import MIRROR_ENV, AuditLog
from audit.query import RecordFilter, read_records
from audit.verify import Reason, VerifyReport, verify_log
from hub.cli import CLIError

if TYPE_CHECKING:
    from hub.paths import EnclavePaths

EXIT_VERIFY_FAILED = 3

_Handler = Callable[[argparse.Namespace, "EnclavePaths"], int | None]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="verify and read the tamper-evident audit trail",
        description="Verify and read the audit trail in <state>/audit. See audit/README.md for its format.",
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = sub.add_parser(
        "verify",
        help="check every MAC, chain link, sequence number and signed checkpoint",
        description="Check the whole log and name the first bad record: modified, deleted, inserted, "
        "reordered, truncated, or bad checkpoint.",
        epilog="exit status: 0 verified; 3 verification failed; 1 could not verify (e.g. missing key)",
    )
    verify.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        metavar="FILE",
        help="another copy of the checkpoints to check against: the mirror kept on other storage, or lines "
        "extracted from syslog (journalctl -t enclave-audit -o cat). Only copies the attacker could not "
        "rewrite make a rollback of the audit directory detectable. Repeatable.",
    )
    verify.add_argument(
        "--public-key",
        metavar="FILE",
        help="a checkpoint public key you trust (default: the one derived from the signing key in "
        "<state>/secrets, or without secrets, the checkpoint-key.pub beside the log)",
    )
    verify.add_argument(
        "--no-mac-key",
        action="store_true",
        help="verify without the secret MAC key: checks chain links, sequence numbers and checkpoints, but "
        "cannot tell whether a record's contents were edited",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_verify)

    show = sub.add_parser(
        "show",
        help="print records, filtered",
        description="Print audit records in log order. Times: 2025-11-24 (a whole day), 2025-11-24T09:00, "
        "2025-11-24T09:00+09:00, or 30m / 24h / 7d ago; UTC unless an offset is given. This does not verify "
        "the records; run 'enclave audit verify' for that.",
    )
    show.add_argument("--since", help="records at or after this time")
    show.add_argument("--until", help="records before this time (a date alone includes that day)")
    show.add_argument("--actor", help="only this user or service")
    show.add_argument("--project", help="only this project")
    show.add_argument("--action", help="only this action; globs allowed, e.g. 'export.*'")
    show.add_argument("--outcome", choices=("ok", "denied", "error"), help="only this outcome")
    show.add_argument("--json", action="store_true", help="one stored record (JSON) per line, for tools")
    show.set_defaults(handler=_show)

    checkpoint = sub.add_parser(
        "checkpoint",
        help="write a signed checkpoint now",
        description="Write a signed checkpoint of the log as it is now. Writers checkpoint every N records "
        "or T seconds while they append; run this from cron so that a quiet log is covered too.",
    )
    checkpoint.set_defaults(handler=_checkpoint)


def _operator_errors(handler: _Handler) -> _Handler:
    """Audit errors are operator errors here: the message already names the file and what is wrong."""

    @wraps(handler)
    def wrapper(args: argparse.Namespace, paths: EnclavePaths) -> int | None:
        try:
            return handler(args, paths)
        except AuditError as exc:
            raise CLIError(str(exc)) from None

    return wrapper


@_operator_errors
def _verify(args: argparse.Namespace, paths: EnclavePaths) -> int:
    audit_dir = paths.audit_dir
    if not audit_dir.is_dir():
        raise CLIError(f"{audit_dir}: no audit log here (nothing was ever recorded, or it was deleted)")
    for extra in args.checkpoints:
        if not Path(extra).is_file():
            raise CLIError(f"--checkpoints {extra}: no such file")
    mac_key = None if args.no_mac_key else keys.load_mac_key(paths.secrets_dir, create=False)
    public_key, key_problem = _trusted_public_key(args, paths)
    mirror = os.environ.get(MIRROR_ENV)
    report = verify_log(
        audit_dir,
        mac_key=mac_key,
        public_key=public_key,
        checkpoint_copies=([Path(mirror)] if mirror else []) + [Path(p) for p in args.checkpoints],
    )
    if key_problem and report.ok:
        report = dataclasses.replace(
            report,
            ok=False,
            reason=Reason.BAD_CHECKPOINT,
            bad_checkpoint=str(audit_dir / keys.PUBLIC_KEY_FILE),
            detail=key_problem,
        )
    if args.json:
        print(json.dumps(dataclasses.asdict(report), sort_keys=True))
    elif report.ok:
        _print_ok(report)
    else:
        print(f"enclave: audit log FAILED verification: {report.summary()}", file=sys.stderr)
    return 0 if report.ok else EXIT_VERIFY_FAILED


def _trusted_public_key(args: argparse.Namespace, paths: EnclavePaths) -> tuple[Ed25519PublicKey, str]:
    """The key to check checkpoints with, and a problem to report if the copy beside the log differs."""
    beside = paths.audit_dir / keys.PUBLIC_KEY_FILE
    if args.public_key:
        return keys.load_public_key(Path(args.public_key)), ""
    if args.no_mac_key:  # an auditor without secrets: the copy beside the log is all there is
        return keys.load_public_key(beside), ""
    trusted = keys.load_signing_key(paths.secrets_dir, create=False).public_key()
    if beside.exists() and keys.public_key_pem(trusted) != beside.read_bytes():
        return trusted, (
            f"the checkpoint public key beside the log does not match the signing key in {paths.secrets_dir}: "
            "one of them was replaced"
        )
    return trusted, ""


def _print_ok(report: VerifyReport) -> None:
    print(report.summary())
    print(f"checkpoint key sha256 {report.key_id}")
    if report.uncovered:
        print(
            f"note: {report.uncovered} record(s) after the last checkpoint are not yet covered by a signed "
            "checkpoint; their removal would not be detectable until the next one"
        )
    if report.torn_tail:
        print(
            f"note: {report.torn_tail} ends with an incomplete line: an append interrupted by a crash, never "
            "acknowledged; the next writer cuts it off"
        )
    for warning in report.warnings:
        print(f"warning: {warning}")


@_operator_errors
def _show(args: argparse.Namespace, paths: EnclavePaths) -> int:
    if not paths.audit_dir.is_dir():
        raise CLIError(f"{paths.audit_dir}: no audit log here")
    flt = RecordFilter.build(args.since, args.until, args.actor, args.project, args.action, args.outcome)
    try:
        for record in read_records(paths.audit_dir, flt):
            print(_as_json(record) if args.json else _as_text(record))
    except BrokenPipeError:  # `enclave audit show | head` is normal use, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _as_json(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _as_text(record: dict[str, Any]) -> str:
    details = json.dumps(record.get("details") or {}, sort_keys=True, ensure_ascii=False)
    fields = [
        record.get("ts", "?"),
        f"#{record.get('seq')}",
        f"{record.get('outcome', '?'):<6}",
        str(record.get("actor")),
        str(record.get("action")),
        f"project={record.get('project') or '-'}",
        f"target={record.get('target') or '-'}",
        details if details != "{}" else "",
    ]
    return "  ".join(fields).rstrip()


@_operator_errors
def _checkpoint(args: argparse.Namespace, paths: EnclavePaths) -> int:
    with AuditLog.open(paths.state_dir) as log:
        written = log.checkpoint()
    if written is None:
        print("the audit log is empty; no checkpoint written")
    else:
        print(f"checkpoint written: seq {written['seq']} at {written['ts']}")
    return 0

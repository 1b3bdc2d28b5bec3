"""``enclave audit verify | show | checkpoint``, and the same as ``python -m audit verify | show | checkpoint``.

The audit package stands alone (standard library and ``cryptography`` only), so that an auditor can copy
``audit/`` next to a copy of the trail and verify it without the rest of the enclave. ``hub/cli.py`` adds
these commands to ``enclave`` through ``register()``; ``main()`` is the standalone entry point.

Exit status of ``verify``: 0 the log verified; 3 it did not (tamper evidence: the first bad record is
named on stderr); 1 it could not be verified (missing or exposed key, no log).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit import keys
from audit.errors import AuditError
from audit.log import AuditLog, witness_from_env
from audit.query import RecordFilter, read_records
from audit.verify import Reason, VerifyReport, verify_log

EXIT_VERIFY_FAILED = 3
DEFAULT_STATE_DIR = "/var/lib/enclave"


class StatePaths(Protocol):
    """What the commands need to know of the installation (``hub.paths.EnclavePaths`` is one)."""

    @property
    def state_dir(self) -> Path: ...
    @property
    def audit_dir(self) -> Path: ...
    @property
    def secrets_dir(self) -> Path: ...


@dataclass(frozen=True)
class AuditPaths:
    """The layout ``python -m audit`` assumes: ``<state>/audit`` and ``<state>/secrets``."""

    state_dir: Path

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"


class CommandError(AuditError):
    """A refusal the operator can act on; printed as ``enclave: <message>``, exit status 1."""


_Handler = Callable[[argparse.Namespace, StatePaths], int | None]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify | show | checkpoint`` to the ``enclave`` command (hub/cli.py)."""
    audit = subparsers.add_parser(
        "audit",
        help="verify and read the tamper-evident audit trail",
        description="Verify and read the audit trail in <state>/audit. See audit/README.md for its format.",
    )
    add_commands(audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m audit``: the same commands, with nothing of the enclave but this package."""
    parser = argparse.ArgumentParser(
        prog="python -m audit",
        description="Verify and read an enclave audit trail. See audit/README.md for its format.",
    )
    parser.add_argument(
        "--state-dir",
        help=f"the directory holding audit/ and secrets/ (default: $ENCLAVE_STATE_DIR or {DEFAULT_STATE_DIR})",
    )
    add_commands(parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True))
    args = parser.parse_args(argv)
    state = args.state_dir or os.environ.get("ENCLAVE_STATE_DIR") or DEFAULT_STATE_DIR
    return args.handler(args, AuditPaths(Path(state).resolve())) or 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:

    verify = sub.add_parser(
        "verify",
        help="check every MAC, chain link, sequence number and signed checkpoint",
        description="Check the whole log and name the first bad record: modified, deleted, inserted, "
        "reordered, truncated, or bad checkpoint.",
        epilog="exit status: 0 verified; 3 verification failed; 1 could not verify (e.g. missing key)",
    )
    verify.add_argument(
        "--witness",
        "--checkpoints",
        dest="witnesses",
        action="append",
        default=[],
        metavar="FILE",
        help="a witness: a copy of the checkpoints kept outside the state directory, to compare the log and "
        "checkpoints.jsonl against. The witness file ($ENCLAVE_AUDIT_WITNESS, checked by default when set), "
        "or lines extracted from syslog or the journal (journalctl -t enclave-audit -o cat; grep "
        "enclave-audit /var/log/auth.log). Only a witness the attacker could not rewrite makes a rollback "
        "or rewrite of the whole audit directory detectable. Repeatable.",
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
    checkpoint.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="keep running and write a checkpoint every SECONDS (what the demo runs; under systemd, "
        "enclave-audit-checkpoint.timer runs the one-shot form instead)",
    )
    checkpoint.set_defaults(handler=_checkpoint)


def _operator_errors(handler: _Handler) -> _Handler:
    """Audit errors are operator errors here: the message already names the file and what is wrong."""

    @wraps(handler)
    def wrapper(args: argparse.Namespace, paths: StatePaths) -> int | None:
        try:
            return handler(args, paths)
        except AuditError as exc:
            print(f"enclave: {exc}", file=sys.stderr)
            return 1

    return wrapper


@_operator_errors
def _verify(args: argparse.Namespace, paths: StatePaths) -> int:
    audit_dir = paths.audit_dir
    if not audit_dir.is_dir():
        raise CommandError(f"{audit_dir}: no audit log here (nothing was ever recorded, or it was deleted)")
    for extra in args.witnesses:
        if not Path(extra).is_file():
            raise CommandError(f"--witness {extra}: no such file")
    mac_key = None if args.no_mac_key else keys.load_mac_key(paths.secrets_dir, create=False)
    public_key, key_problem = _trusted_public_key(args, paths)
    witness = witness_from_env()
    report = verify_log(
        audit_dir,
        mac_key=mac_key,
        public_key=public_key,
        checkpoint_copies=([Path(witness)] if witness else []) + [Path(p) for p in args.witnesses],
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


def _trusted_public_key(args: argparse.Namespace, paths: StatePaths) -> tuple[Ed25519PublicKey, str]:
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
    if report.witnessed:
        print(
            f"witness: {report.witnessed} checkpoint(s) found there agree with the log and checkpoints.jsonl"
        )
    else:
        print(
            "note: no witness checked; a rollback or consistent rewrite of the whole audit directory is not "
            "detectable without one (--witness, $ENCLAVE_AUDIT_WITNESS)"
        )
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
def _show(args: argparse.Namespace, paths: StatePaths) -> int:
    if not paths.audit_dir.is_dir():
        raise CommandError(f"{paths.audit_dir}: no audit log here")
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
def _checkpoint(args: argparse.Namespace, paths: StatePaths) -> int:
    if args.every is not None:
        return _checkpoint_forever(paths.state_dir, args.every)
    with AuditLog.open(paths.state_dir) as log:
        written = log.checkpoint()
    if written is None:
        print("the audit log is empty; no checkpoint written")
    else:
        print(f"checkpoint written: seq {written['seq']} at {written['ts']}")
    return 0


def _checkpoint_forever(state_dir: Path, every: float) -> int:
    """The demo's stand-in for the systemd timer. A failed checkpoint (full disk, a key problem) is
    reported and retried next time: the loop must outlive a bad minute."""
    if every <= 0:
        raise CommandError(f"--every {every}: must be a positive number of seconds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    while True:
        try:
            with AuditLog.open(state_dir) as log:
                written = log.checkpoint()
            if written is not None:
                print(f"checkpoint written: seq {written['seq']} at {written['ts']}", flush=True)
        except (AuditError, OSError) as exc:
            print(f"enclave: checkpoint failed, retrying in {every:g} s: {exc}", file=sys.stderr, flush=True)
        time.sleep(every)

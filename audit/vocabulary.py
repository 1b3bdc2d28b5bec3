"""The audit vocabulary: every action the enclave records, as data.

The vocabulary is versioned. Every record carries ``"vocab": VOCABULARY_VERSION`` so that a reader in five
years knows which table below a record was written against. Adding an action or tightening a rule bumps the
version; an action is never renamed or reused with a new meaning, because old records keep their old name.

Rules that hold for every action:
- ``outcome`` is ``ok``, ``denied`` (policy said no) or ``error`` (something broke).
- Any outcome other than ``ok`` carries ``details["reason"]``: a short machine-readable reason such as
  ``not_member``, ``bad_credentials`` or ``project_expired``. A refusal without a reason cannot be reviewed.
- ``actor`` is a username as in the directory (``alice``) or a service as ``service:<name>``
  (``service:hub``, ``service:idle-culler``, ``service:enclave-policy``, ``service:exports``,
  ``service:ingest``), or ``address:<ip>`` for a source the hub could not name (no token, no session).

``check_entry()`` enforces the table; ``AuditLog.append()`` calls it before anything is written, so a
forgotten field is an error at the call site in tests, not a gap in the trail found during an inspection.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audit.errors import AuditRecordError, UnknownActionError

VOCABULARY_VERSION = 2
# 2 (December 2026) added: hub.refused, gate.throttled, gate.activity, network.refused, audit.spooled,
# audit.tail_skipped, auth.mfa, auth.revoke, auth.directory, service.stop. Version 1 records stay valid.

OUTCOMES: frozenset[str] = frozenset({"ok", "denied", "error"})


@dataclass(frozen=True)
class ActionSpec:
    """One kind of audit record: what it means, and what a record of it must carry."""

    name: str
    description: str
    needs_project: bool = False
    needs_target: bool = False
    details: tuple[str, ...] = ()
    """Keys that ``details`` must always contain."""
    details_if_ok: tuple[str, ...] = ()
    """Keys needed only when the action happened (outcome ok): a refused spawn has no image yet."""
    outcomes: frozenset[str] = OUTCOMES


def _table(*specs: ActionSpec) -> Mapping[str, ActionSpec]:
    table = {spec.name: spec for spec in specs}
    assert len(table) == len(specs), "duplicate action in the vocabulary"
    return table


def _server(name: str, description: str) -> ActionSpec:
    """Server events. target is the server name (the project id); image_digest is the image's sha256."""
    return ActionSpec(
        name, description, needs_project=True, needs_target=True, details_if_ok=("image_digest",)
    )


def _export(
    name: str, description: str, details: tuple[str, ...] = (), outcomes: frozenset[str] = OUTCOMES
) -> ActionSpec:
    """Export lifecycle events. target is the export request id."""
    return ActionSpec(
        name, description, needs_project=True, needs_target=True, details=details, outcomes=outcomes
    )


ACTIONS: Mapping[str, ActionSpec] = _table(
    # Authentication
    ActionSpec(
        "auth.login",
        "A login attempt. actor is the username tried. Failures: outcome denied, "
        "reason such as bad_credentials, not_accredited, unknown_user.",
    ),
    ActionSpec("auth.logout", "A user logged out."),
    ActionSpec(
        "auth.mfa",
        "The second factor (TOTP, hub/mfa.py). actor is the user, or the administrator for a reset; target "
        "is the user. details.event is enrol, ok, failed, replay, locked (refused while locked), lockout "
        "(a lockout began) or reset.",
        needs_target=True,
        details=("event",),
    ),
    ActionSpec(
        "auth.revoke",
        "The directory no longer accredits a user (left the enclave groups, disabled or deleted): their "
        "servers were stopped, API tokens deleted and hub groups removed. target is the user; "
        "details.reason says which, details.stopped / tokens / groups what was undone.",
        needs_target=True,
        details=("reason",),
    ),
    ActionSpec(
        "auth.directory",
        "The directory's reachability changed, as the hub's services see it. details.state is outage, "
        "restored or grace_expired (running servers stopped after ldap.outage_grace_seconds).",
        needs_target=True,
        details=("state",),
    ),
    # Notebook servers
    _server(
        "server.spawn",
        "A request to start a notebook server. Refusals: outcome denied, reason "
        "not_member, project_expired, not_accredited, project_inactive, image_not_allowed.",
    ),
    _server("server.start", "A notebook server came up and is ready."),
    _server("server.stop", "A notebook server was stopped by its user or an administrator."),
    _server("server.cull", "The idle culler stopped a notebook server."),
    # Policy
    ActionSpec(
        "policy.change",
        "Any change to policy (project, member, dataset grant, expiry, resources). "
        "target is the policy file or object; details.change says what (e.g. member.add).",
        needs_target=True,
        details=("change",),
    ),
    ActionSpec(
        "policy.enforce",
        "The enclave acted on its own to enforce policy, e.g. stopped a server "
        "whose project expired or whose member was removed. details.reason says which rule.",
        needs_project=True,
        needs_target=True,
        details=("reason",),
    ),
    # Data
    ActionSpec(
        "dataset.ingest",
        "A dataset version was ingested and pseudonymized. target is <dataset>@<version>.",
        needs_target=True,
    ),
    ActionSpec(
        "dataset.mount",
        "A dataset was mounted read-only into a project's server.",
        needs_project=True,
        needs_target=True,
    ),
    # Export lifecycle
    _export("export.create", "An export request was created."),
    _export("export.view", "A request and its files were opened (by a checker, or the researchers)."),
    _export("export.file_add", "A file (new version) was added to an export request."),
    _export("export.submit", "A request was submitted (or resubmitted) for review."),
    _export("export.withdraw", "The researcher withdrew a request."),
    _export(
        "export.vote",
        "A checker voted on a file (details.decision), or submitted their review (details.review); the "
        "status moves that reviews cause are recorded with this action too.",
    ),
    _export("export.comment", "A comment was added to a request."),
    _export(
        "export.decision",
        "A request was decided: details.decision is approved, rejected or returned.",
        details=("decision",),
    ),
    _export("export.release", "Approved files were copied to the release store."),
    _export("export.download", "Released files were downloaded."),
    _export("export.revoke", "A release was revoked and its download closed."),
    ActionSpec(
        "export.refused",
        "An export step was refused (self-review, disallowed file type, wrong state, size cap); "
        "details.attempted names the step. project and target when known: a refused create has no request.",
        outcomes=frozenset({"denied"}),
    ),
    # Attacks on the walls
    ActionSpec(
        "sidedoor.refused",
        "A way out other than the export queue was tried and blocked, e.g. "
        "details.route files-download, nbconvert-download, upload-too-large.",
        details=("route",),
        outcomes=frozenset({"denied"}),
    ),
    # The audit trail itself (audit/: the spool for a full disk, and a damaged tail)
    ActionSpec(
        "audit.spooled",
        "Records written to the reserved spool while the trail could not be written (full disk) were "
        "appended just before this record: details.count, first_seq, last_seq, since (when the first was "
        "spooled). Outcome error, reason spool_damaged, when spool bytes failed their MAC and were dropped.",
        details=("count",),
    ),
    ActionSpec(
        "audit.tail_skipped",
        "A writer found the log's last line(s) damaged and continued the chain from the last readable record "
        "(details.continued_from); the damaged bytes (details.segment, offset, bytes) stay as evidence and "
        "verification fails there.",
        details=("segment", "offset", "continued_from"),
        outcomes=frozenset({"error"}),
    ),
    # Operations (issue 19, hub/services.py)
    ActionSpec(
        "service.stop",
        "A starting hub stopped a managed service (target: exports, enclave-gate, enclave-policy, "
        "idle-culler) that a previous hub left running (details.reason stale; pid, ports, signal).",
        needs_target=True,
        details=("reason", "pid"),
    ),
    # Gate, hub and network refusals (issue 11, gate: hub/gate.py, hub/netlog.py, hub/audit_hooks.py).
    # All written through audit.aggregate.RefusalAggregator: details.repeated counts the repeats of a window.
    ActionSpec(
        "gate.throttled",
        "A container sent more hub requests than its server's rate limit at the gate and got 429. "
        "actor and target are the user and server the token belongs to; details.route the first request.",
        details=("route",),
        outcomes=frozenset({"denied"}),
    ),
    ActionSpec(
        "gate.activity",
        "An activity report at the gate was refused (reason malformed) or carried timestamps in the "
        "future, which were set to now before the hub saw them (reason future_timestamp).",
        details=("route",),
        outcomes=frozenset({"denied"}),
    ),
    ActionSpec(
        "hub.refused",
        "The hub (or the export service) refused a request worth an auditor's attention: an administrator "
        "opening, starting or minting a token for someone else's server, or a form posted without _xsrf. "
        "details.route says which; details.status the hub's answer.",
        details=("route",),
        outcomes=frozenset({"denied"}),
    ),
    ActionSpec(
        "network.refused",
        "The host firewall refused packets from an enclave container (reason to-host or forward). "
        "details.destination is the first one of the window; details.repeated counts the rest (logged "
        "packets, rate limited per container: a lower bound).",
        details=("destination",),
        outcomes=frozenset({"denied"}),
    ),
)


def check_entry(
    action: str,
    outcome: str,
    project: str | None,
    target: str | None,
    details: Mapping[str, Any],
) -> ActionSpec:
    """Check one would-be record against the vocabulary. Raises AuditRecordError naming the field."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise UnknownActionError(_unknown_action_message(action))
    if outcome not in spec.outcomes:
        allowed = ", ".join(sorted(spec.outcomes))
        raise AuditRecordError(f"audit record {action}: outcome: {outcome!r} is not one of {allowed}")
    if spec.needs_project and not project:
        raise AuditRecordError(f"audit record {action}: project: required")
    if spec.needs_target and not target:
        raise AuditRecordError(f"audit record {action}: target: required")
    required = spec.details + (spec.details_if_ok if outcome == "ok" else ("reason",))
    for key in required:
        if details.get(key) in (None, ""):
            raise AuditRecordError(f"audit record {action} ({outcome}): details.{key}: required")
    return spec


def _unknown_action_message(action: str) -> str:
    close = difflib.get_close_matches(str(action), ACTIONS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"audit record: action: {action!r} is not in audit vocabulary v{VOCABULARY_VERSION} "
        f"(audit/vocabulary.py){hint}"
    )

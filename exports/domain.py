"""The export request as data: states, files, votes and comments, and the one table of allowed moves.

Everything here is pure: frozen dataclasses and functions of them. Storage, HTTP and the file system
live elsewhere, so a reader can check the rules of the airlock without reading any I/O.

The lifecycle (DESIGN.md section 4) is modelled on OpenSAFELY airlock's, plus a revoke::

    PENDING  -> SUBMITTED | WITHDRAWN                  researcher
    SUBMITTED -> PARTIALLY_REVIEWED | RETURNED         first checker's review (or early return)
    PARTIALLY_REVIEWED -> REVIEWED | RETURNED          last required checker's review
    REVIEWED -> APPROVED | REJECTED | RETURNED         decision, derived from the reviews
    RETURNED -> SUBMITTED | WITHDRAWN                  researcher (new file versions allowed)
    APPROVED -> RELEASED                               system copies approved files to release store
    RELEASED -> REVOKED                                checker/admin, download closed

How the decision is taken: when the last required review arrives, the request becomes REVIEWED and,
in the same database transaction, ``decide()`` derives the outcome from the reviews alone: any checker
who chose "reject" makes it REJECTED; otherwise any file with changes requested makes it RETURNED;
otherwise every output file was approved by every required checker and it is APPROVED. The decision is
recorded as its own transition and audit event, with "service:exports" as actor and the reviewers as reasons.
No single person can approve: an approval is always the agreement of N independent reviews.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

# --------------------------------------------------------------------------------------------------
# Errors. Each carries the HTTP status it maps to, so the web layer has one place to translate them.


class ExportError(Exception):
    """Base of every refusal the service reports to a person. The message names the thing at fault;
    ``reason`` is a short machine-readable code for the audit trail (e.g. ``self_review``)."""

    http_status = 400
    code = "bad_request"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or self.code


class BadRequest(ExportError):
    """The input is malformed or incomplete (a missing field, an unknown file, an empty context)."""


class FileRefused(ExportError):
    """A named workspace file cannot be exported: unsafe path, wrong type, too large, not regular."""

    code = "file_refused"


class PermissionDenied(ExportError):
    """The actor may not do this to this request. The message says why, for a person to read."""

    http_status = 403
    code = "permission_denied"


class NotFound(ExportError):
    http_status = 404
    code = "not_found"


class InvalidTransition(ExportError):
    """The move is not in VALID_STATE_TRANSITIONS (for example a vote on an approved request)."""

    http_status = 409
    code = "invalid_transition"


# --------------------------------------------------------------------------------------------------
# Enumerations


class RequestStatus(str, Enum):
    PENDING = "PENDING"
    """The researcher created the request; files and context can still change."""
    SUBMITTED = "SUBMITTED"
    """The researcher submitted it; the files are frozen and wait for checkers."""
    PARTIALLY_REVIEWED = "PARTIALLY_REVIEWED"
    """A checker submitted a review; more independent reviews are needed."""
    REVIEWED = "REVIEWED"
    """The last required checker submitted a review; the system decides in the same transaction."""
    APPROVED = "APPROVED"
    """The system found every output file approved by every required checker; release follows."""
    REJECTED = "REJECTED"
    """The system rejected it because a checker chose to reject the request. Final."""
    RETURNED = "RETURNED"
    """A checker returned it early, or the reviews requested changes; the researcher may revise."""
    WITHDRAWN = "WITHDRAWN"
    """The researcher withdrew it. Final."""
    RELEASED = "RELEASED"
    """The system copied the approved bytes to the release store; the requester may download."""
    REVOKED = "REVOKED"
    """A checker or admin revoked the release; downloads are closed. Final."""

    def __str__(self) -> str:
        return self.value


S = RequestStatus

VALID_STATE_TRANSITIONS: Mapping[RequestStatus, frozenset[RequestStatus]] = {
    S.PENDING: frozenset({S.SUBMITTED, S.WITHDRAWN}),
    S.SUBMITTED: frozenset({S.PARTIALLY_REVIEWED, S.RETURNED}),
    S.PARTIALLY_REVIEWED: frozenset({S.REVIEWED, S.RETURNED}),
    S.REVIEWED: frozenset({S.APPROVED, S.REJECTED, S.RETURNED}),
    S.RETURNED: frozenset({S.SUBMITTED, S.WITHDRAWN}),
    S.APPROVED: frozenset({S.RELEASED}),
    S.RELEASED: frozenset({S.REVOKED}),
    S.REJECTED: frozenset(),
    S.WITHDRAWN: frozenset(),
    S.REVOKED: frozenset(),
}

EDITABLE_STATES = frozenset({S.PENDING, S.RETURNED})
"""The researcher may add or replace files and change context only here."""
UNDER_REVIEW_STATES = frozenset({S.SUBMITTED, S.PARTIALLY_REVIEWED})
"""Checkers may vote and submit reviews only here."""
FINAL_STATES = frozenset(s for s, targets in VALID_STATE_TRANSITIONS.items() if not targets)
"""Nothing moves out of these: the request is closed for good."""
INITIAL_STATE = S.PENDING
"""Every request starts here (recorded as a change from no status)."""

STATUS_AUDIT_ACTIONS: Mapping[RequestStatus, str] = {
    S.PENDING: "export.create",
    S.SUBMITTED: "export.submit",
    S.WITHDRAWN: "export.withdraw",
    S.PARTIALLY_REVIEWED: "export.vote",
    S.REVIEWED: "export.vote",
    S.APPROVED: "export.decision",
    S.REJECTED: "export.decision",
    S.RETURNED: "export.decision",
    S.RELEASED: "export.release",
    S.REVOKED: "export.revoke",
}
"""The audit action recorded when a request enters each status (as airlock keys its events by status):
a move is audited under the action of where it goes, never one chosen at the call site."""


def round_after(request: ExportRequest, target: RequestStatus) -> int:
    """The review round once ``request`` has moved to ``target``: every (re)submission starts a new one."""
    return request.round + 1 if target is S.SUBMITTED else request.round


def round_of_new_file(request: ExportRequest) -> int:
    """The round a file added now is for: the next submission's, since files change only while
    editable (PENDING before round 1, RETURNED after round n, so the file is for round n + 1)."""
    return max(request.round if request.status is S.PENDING else request.round + 1, 1)


class FileRole(str, Enum):
    OUTPUT = "output"
    """A file asked for release: checkers vote on it, and only these are ever released."""
    SUPPORTING = "supporting"
    """Shown to checkers to help them judge (for example ACRO's results.json); never released."""


class FileDecision(str, Enum):
    APPROVED = "approved"
    """This checker finds the file safe to release."""
    CHANGES_REQUESTED = "changes_requested"
    """This checker wants the researcher to change or explain the file."""


class ReviewVerdict(str, Enum):
    VOTES = "votes"
    """The review is the per-file votes."""
    REJECT = "reject"
    """The checker asks for the whole request to be rejected (for example, raw data)."""


class Visibility(str, Enum):
    CHECKERS = "checkers"
    """Seen by output checkers and admins only."""
    RESEARCHER = "researcher"
    """Also seen by the requester, once the current review round is over."""


class CheckOutcome(str, Enum):
    PASS = "pass"
    REVIEW = "review"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        return {"pass": 0, "review": 1, "fail": 2}[self.value]


def worst(outcomes: Iterable[CheckOutcome]) -> CheckOutcome:
    """The most severe outcome; PASS when there is none."""
    return max(outcomes, key=lambda o: o.severity, default=CheckOutcome.PASS)


# --------------------------------------------------------------------------------------------------
# Check results (computed by the service from frozen bytes; see exports.checks)


@dataclass(frozen=True)
class Location:
    """Where a check found something: a table cell (row is the 1-based data row) or a text line."""

    row: int
    column: str
    value: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "value": self.value, "note": self.note}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Location:
        return cls(int(data["row"]), str(data["column"]), str(data["value"]), str(data.get("note", "")))


@dataclass(frozen=True)
class CheckResult:
    """One named check on one file: pass, fail or review, with the cells at fault."""

    check: str
    title: str
    outcome: CheckOutcome
    message: str
    cells: tuple[Location, ...] = ()
    cell_total: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)
    source: str = "service"
    """"service" when computed here; "researcher-acro" when reported by the researcher's ACRO session."""

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "title": self.title,
            "outcome": self.outcome.value,
            "message": self.message,
            "cells": [c.to_json() for c in self.cells],
            "cell_total": self.cell_total,
            "details": dict(self.details),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            check=data["check"],
            title=data["title"],
            outcome=CheckOutcome(data["outcome"]),
            message=data["message"],
            cells=tuple(Location.from_json(c) for c in data.get("cells", ())),
            cell_total=int(data.get("cell_total", 0)),
            details=dict(data.get("details", {})),
            source=data.get("source", "service"),
        )


@dataclass(frozen=True)
class FileChecks:
    """All check results for one frozen file."""

    filetype: str
    results: tuple[CheckResult, ...]

    @property
    def outcome(self) -> CheckOutcome:
        """The worst of all results. Researcher-reported results can only make it stricter."""
        return worst(r.outcome for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"filetype": self.filetype, "results": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileChecks:
        return cls(data["filetype"], tuple(CheckResult.from_json(r) for r in data.get("results", ())))


# --------------------------------------------------------------------------------------------------
# The request and its parts


@dataclass(frozen=True)
class Provenance:
    """Where a file came from. ``server`` is verified (from the server's hub token); the image digest
    and notebook are as reported by the container unless ``image_digest_source`` says otherwise."""

    via: str
    """"server-token" (the in-container client) or "web" (the researcher's page)."""
    server: str | None = None
    image_digest: str | None = None
    image_digest_source: str | None = None
    notebook: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Provenance:
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class FileGroup:
    """Files that share a context and disclosure controls, as airlock's file groups do."""

    name: str
    context: str
    controls: str


@dataclass(frozen=True)
class RequestFile:
    """One version of one file, frozen in quarantine under its sha256."""

    id: int
    path: str
    group: str
    version: int
    role: FileRole
    sha256: str
    size: int
    filetype: str
    added_by: str
    added_at: str
    round: int
    """The submission round this version was added for (1 for the first submission)."""
    current: bool
    """False once a newer version replaced it or it was removed; old versions are kept."""
    provenance: Provenance
    checks: FileChecks
    count_columns: tuple[str, ...] = ()
    original_sha256: str | None = None
    """The bytes the researcher named, before canonicalization (exports.canonical); never released.
    None for versions frozen before outputs were canonicalized."""
    original_size: int | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Vote:
    file_id: int
    reviewer: str
    decision: FileDecision
    round: int
    at: str


@dataclass(frozen=True)
class Review:
    """A checker's submitted review of one round: their votes on every output file count from now."""

    reviewer: str
    round: int
    verdict: ReviewVerdict
    at: str


@dataclass(frozen=True)
class Comment:
    id: int
    author: str
    author_role: str
    """"researcher" or "checker"."""
    visibility: Visibility
    text: str
    round: int
    at: str
    file_path: str | None = None


@dataclass(frozen=True)
class StatusChange:
    from_status: RequestStatus | None
    to_status: RequestStatus
    actor: str
    at: str
    reason: str = ""


@dataclass(frozen=True)
class ReleasedFile:
    file_id: int
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ExportRequest:
    id: str
    project: str
    author: str
    status: RequestStatus
    round: int
    """Submission round: 0 before the first submission, +1 on every (re)submission."""
    created_at: str
    updated_at: str
    groups: tuple[FileGroup, ...] = ()
    files: tuple[RequestFile, ...] = ()
    """Every version of every file, oldest first."""
    votes: tuple[Vote, ...] = ()
    reviews: tuple[Review, ...] = ()
    comments: tuple[Comment, ...] = ()
    history: tuple[StatusChange, ...] = ()
    released: tuple[ReleasedFile, ...] = ()

    @property
    def current_files(self) -> tuple[RequestFile, ...]:
        return tuple(f for f in self.files if f.current)

    @property
    def output_files(self) -> tuple[RequestFile, ...]:
        return tuple(f for f in self.current_files if f.role is FileRole.OUTPUT)

    def group(self, name: str) -> FileGroup | None:
        return next((g for g in self.groups if g.name == name), None)

    def file_by_id(self, file_id: int) -> RequestFile | None:
        return next((f for f in self.files if f.id == file_id), None)

    def current_file(self, path: str) -> RequestFile | None:
        return next((f for f in self.current_files if f.path == path), None)

    def reviews_in_round(self, round_: int | None = None) -> tuple[Review, ...]:
        r = self.round if round_ is None else round_
        return tuple(v for v in self.reviews if v.round == r)

    def votes_by(self, reviewer: str, round_: int | None = None) -> dict[int, FileDecision]:
        r = self.round if round_ is None else round_
        return {v.file_id: v.decision for v in self.votes if v.reviewer == reviewer and v.round == r}

    def has_reviewed(self, reviewer: str) -> bool:
        return any(r.reviewer == reviewer for r in self.reviews_in_round())


@dataclass(frozen=True)
class RequestSummary:
    """The row the queue shows: enough to sort and filter without loading every file."""

    id: str
    project: str
    author: str
    status: RequestStatus
    round: int
    created_at: str
    updated_at: str
    submitted_at: str | None
    file_count: int
    checks: Mapping[str, int]
    """How many current output files have each worst outcome: {"pass": n, "review": n, "fail": n}."""
    reviewers: tuple[str, ...] = ()
    """Checkers who submitted a review in the current round."""


@dataclass(frozen=True)
class AuditEvent:
    """What storage writes to the audit outbox in the same transaction as the change it describes."""

    actor: str
    action: str
    project: str | None
    target: str | None
    outcome: str = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "action": self.action,
            "project": self.project,
            "target": self.target,
            "outcome": self.outcome,
            "details": dict(self.details),
        }


# --------------------------------------------------------------------------------------------------
# The state machine


def check_transition(request: ExportRequest, target: RequestStatus) -> None:
    """Raise InvalidTransition unless the table allows ``request.status -> target``."""
    if target not in VALID_STATE_TRANSITIONS[request.status]:
        allowed = ", ".join(sorted(s.value for s in VALID_STATE_TRANSITIONS[request.status])) or "nothing"
        raise InvalidTransition(
            f"request {request.id}: cannot move from {request.status.value} to {target.value} "
            f"(from {request.status.value} it can move to: {allowed})"
        )


def apply_transition(
    request: ExportRequest, target: RequestStatus, *, actor: str, at: str, reason: str = ""
) -> ExportRequest:
    """The request after the move; checks the table first. Resubmission starts a new review round."""
    check_transition(request, target)
    change = StatusChange(request.status, target, actor, at, reason)
    return dataclasses.replace(
        request,
        status=target,
        round=round_after(request, target),
        updated_at=at,
        history=request.history + (change,),
    )


def decide(request: ExportRequest, reviewers_required: int) -> tuple[RequestStatus, str]:
    """The outcome of a REVIEWED request, from its current round's reviews alone, with the reason."""
    reviews = request.reviews_in_round()
    if len(reviews) < reviewers_required:
        raise InvalidTransition(
            f"request {request.id}: {len(reviews)} of {reviewers_required} reviews; no decision yet"
        )
    rejecting = sorted(r.reviewer for r in reviews if r.verdict is ReviewVerdict.REJECT)
    if rejecting:
        return S.REJECTED, f"rejected by {', '.join(rejecting)}"
    changes = sorted(
        {
            f.path
            for f in request.output_files
            for r in reviews
            if _vote(request, r.reviewer, f.id) is not FileDecision.APPROVED
        }
    )
    if changes:
        return S.RETURNED, f"changes requested on {', '.join(changes)}"
    names = ", ".join(sorted(r.reviewer for r in reviews))
    return S.APPROVED, f"every output file approved by {names}"


def _vote(request: ExportRequest, reviewer: str, file_id: int) -> FileDecision | None:
    return request.votes_by(reviewer).get(file_id)


def status_after_review(request: ExportRequest, reviewers_required: int) -> RequestStatus:
    """Where a request goes when a review has just been added to its current round."""
    if len(request.reviews_in_round()) >= reviewers_required:
        return S.REVIEWED
    return S.PARTIALLY_REVIEWED


# --------------------------------------------------------------------------------------------------
# Small helpers every module needs


def utcnow() -> str:
    """A fixed-width UTC timestamp: sorts as text, reads as ISO 8601."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_request_id() -> str:
    """Sortable by creation time, unguessable enough not to be enumerated: ``r`` + ms + random."""
    return f"r{int(time.time() * 1000):011x}{secrets.token_hex(4)}"

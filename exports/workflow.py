"""The operations of the export queue: each checks permissions and the state table, then changes storage.

Every operation is synchronous (the web layer runs it on a small thread pool) and follows one shape:

1. work that can fail without side effects first (reading and checking workspace files);
2. one storage transaction that re-loads the request, applies the pure rules from ``domain`` and
   ``permissions``, and writes the change with its audit event;
3. delivery of the audit outbox to the audit log.

A refusal (PermissionDenied, InvalidTransition, a bad path...) changes nothing and is itself audited
as ``export.refused``, with what was attempted and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from audit.aggregate import RefusalAggregator, clip
from exports import canonical, workspace
from exports import checks as checks_mod
from exports.domain import (
    EDITABLE_STATES,
    INITIAL_STATE,
    STATUS_AUDIT_ACTIONS,
    UNDER_REVIEW_STATES,
    AuditEvent,
    BadRequest,
    Comment,
    ExportError,
    ExportRequest,
    FileDecision,
    FileGroup,
    FileRole,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    Provenance,
    ReleasedFile,
    RequestFile,
    RequestStatus,
    Review,
    ReviewVerdict,
    StatusChange,
    Visibility,
    Vote,
    check_transition,
    decide,
    new_request_id,
    round_after,
    status_after_review,
    utcnow,
)
from exports.inputs import FileInput, GroupInput, ProvenanceClaims
from exports.permissions import (
    Identity,
    check_can_download,
    check_can_request,
    check_can_review,
    check_can_revoke,
    check_can_view,
    check_is_author,
)
from exports.projects import ProjectDirectory, ProjectInfo
from exports.storage import NewFile, Page, RequestQuery, RequestTransaction, Storage
from exports.store import Quarantine, ReleaseStore, sha256_hex

log = logging.getLogger("exports")
S = RequestStatus
SYSTEM = "service:exports"
"""The actor of moves nobody makes by hand: the decision, and the release."""
MAX_BYTES_PER_CALL = 256 * 1024 * 1024
"""Files are held in memory between checking and quarantining; this bounds one call."""
REFUSAL_WINDOW_SECONDS = 60.0
"""Repeated refusals from one caller within this window become one record with a count."""
UNSEEN = "no export request {!r} that you may see"
"""One answer for a request that does not exist and one the caller may not see: no existence oracle."""


class AuditSink(Protocol):
    """The audit log: ``audit.AuditLog`` in production, a list-backed fake in tests."""

    def append(self, **kwargs: Any) -> Any: ...


class ProvenanceSource(Protocol):
    """Optional: the digest of the image a server runs, as the hub or engine knows it."""

    def image_digest(self, user: str, server: str) -> str | None: ...


class AuditDelivery:
    """Moves audit events from the database outbox to the audit log, oldest first, one at a time,
    so a crash between the two repeats at most one record (recognisable by its ``outbox_id``)."""

    def __init__(self, storage: Storage, sink: AuditSink, lock_path: Path):
        self.storage = storage
        self.sink = sink
        self.lock_path = lock_path
        self._lock = threading.Lock()

    def deliver(self) -> int:
        delivered = 0
        with self._lock, _file_lock(self.lock_path):
            while batch := self.storage.undelivered_audit():
                for outbox_id, event in batch:
                    kwargs = event.as_kwargs()
                    kwargs["details"] = {**kwargs["details"], "outbox_id": outbox_id}
                    try:
                        self.sink.append(**kwargs)
                    except ValueError as exc:
                        # the log refused this record as malformed (a bug here, not a full disk): keep it
                        # in the outbox, marked, so it cannot block every later record
                        log.error("audit log refused outbox record %d: %s", outbox_id, exc)
                        self.storage.mark_audit_delivered([outbox_id], error=str(exc))
                        continue
                    self.storage.mark_audit_delivered([outbox_id])
                    delivered += 1
        return delivered


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared with other processes (the CLI) working on the same state directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ExportWorkflow:
    def __init__(
        self,
        storage: Storage,
        projects: ProjectDirectory,
        quarantine: Quarantine,
        releases: ReleaseStore,
        audit: AuditDelivery,
        provenance: ProvenanceSource | None = None,
        refusal_window: float = REFUSAL_WINDOW_SECONDS,
    ):
        self.storage = storage
        self.projects = projects
        self.quarantine = quarantine
        self.releases = releases
        self.audit = audit
        self.provenance = provenance
        # Refusals go straight to the audit log through the aggregator, not the outbox: a hostile
        # container can be refused hundreds of times a second, and each would be a database write and a
        # full record. The service flushes closed windows from a timer and everything at shutdown.
        self.refused = RefusalAggregator(audit.sink, window=refusal_window)

    @classmethod
    def at(
        cls,
        exports_dir: Path,
        storage: Storage,
        projects: ProjectDirectory,
        sink: AuditSink,
        provenance: ProvenanceSource | None = None,
        refusal_window: float = REFUSAL_WINDOW_SECONDS,
    ) -> ExportWorkflow:
        """The standard layout under ``<state>/exports``."""
        for sub in ("quarantine", "release", "locks"):
            (exports_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(
            storage,
            projects,
            Quarantine(exports_dir / "quarantine"),
            ReleaseStore(exports_dir / "release"),
            AuditDelivery(storage, sink, exports_dir / "locks" / "audit-outbox.lock"),
            provenance,
            refusal_window,
        )

    # ---------------------------------------------------------------------------------------------
    # plumbing

    def deliver_audit(self) -> None:
        """Deliver the outbox; a failing audit log is logged and retried later, never silently dropped."""
        try:
            self.audit.deliver()
        except Exception:
            log.exception("audit delivery failed; events stay in the outbox and are retried")

    @contextlib.contextmanager
    def refusals(
        self, identity: Identity, attempted: str, request_id: str | None = None, project: str | None = None
    ) -> Iterator[None]:
        """Audit any refusal of ``attempted`` as export.refused, then let it propagate.

        Repeats from one caller (a server, or a user) are aggregated: one full record, then a count per
        window. The message can carry text the requester chose (paths, comments), so it is clipped and
        escaped before it reaches the record."""
        try:
            yield
        except ExportError as exc:
            if not getattr(exc, "audited", False):  # nested operations audit a refusal once
                self.refuse(identity, attempted, exc, request_id, project)
                exc.audited = True  # type: ignore[attr-defined]
            raise
        finally:
            self.deliver_audit()

    def refuse(
        self,
        identity: Identity,
        attempted: str,
        exc: ExportError,
        request_id: str | None = None,
        project: str | None = None,
    ) -> None:
        """Put one refusal on the trail through the aggregator (see ``refusals``)."""
        source = f"{identity.name}/{identity.project}" if identity.in_container else identity.name
        try:
            self.refused.refuse(
                actor=identity.name,
                source=source,
                action="export.refused",
                reason=exc.reason,
                project=project or identity.project,
                target=request_id,
                details={
                    "attempted": clip(attempted, 64),
                    "message": clip(str(exc), 500),
                    "kind": exc.code,
                    "via": identity.via,
                },
            )
        except Exception:  # the refusal itself must still reach the caller
            log.exception("could not audit a refused %s by %s", attempted, identity.name)

    def flush_refusals(self, everything: bool = False) -> int:
        """Write the counts of closed refusal windows (from a timer), or of all of them (at shutdown)."""
        return self.refused.flush_all() if everything else self.refused.flush_due()

    def _project(self, project_id: str) -> ProjectInfo | None:
        return self.projects.get(project_id)

    def _event(
        self, identity: Identity | str, action: str, request: ExportRequest, **details: Any
    ) -> AuditEvent:
        actor = identity if isinstance(identity, str) else identity.name
        if not isinstance(identity, str):
            details.setdefault("via", identity.via)
        return AuditEvent(actor, action, request.project, request.id, "ok", details)

    # ---------------------------------------------------------------------------------------------
    # reading

    def get(self, identity: Identity, request_id: str) -> ExportRequest:
        with self.refusals(identity, "export.view", request_id):
            return self._visible(identity, request_id)

    def _visible(self, identity: Identity, request_id: str) -> ExportRequest:
        """The request, if this caller may see it. A request they may not see is answered exactly as one
        that does not exist (same status, same message, no author named); the audit keeps the reason."""
        request = self.storage.get(request_id)
        if request is None:
            raise NotFound(UNSEEN.format(request_id), "no_such_request")
        try:
            check_can_view(identity, request)
        except PermissionDenied:
            raise NotFound(UNSEEN.format(request_id), "not_allowed") from None
        return request

    def _get(self, request_id: str) -> ExportRequest:
        request = self.storage.get(request_id)
        if request is None:
            raise NotFound(f"no export request {request_id!r}")
        return request

    def list_requests(self, query: RequestQuery) -> Page:
        return self.storage.list(query)

    def view(self, identity: Identity, request_id: str) -> ExportRequest:
        """``get`` for a person opening the request page: the opening is audited (export.view)."""
        request = self.get(identity, request_id)
        self.storage.record(self._event(identity, "export.view", request))
        self.deliver_audit()
        return request

    def file_content(self, identity: Identity, request_id: str, file_id: int) -> tuple[RequestFile, bytes]:
        """The frozen bytes of one file version, for its author and checkers to look at (audited)."""
        request = self.get(identity, request_id)
        requested = request.file_by_id(file_id)
        if requested is None:
            raise NotFound(f"request {request_id} has no file {file_id}")
        data = self.quarantine.get(requested.sha256)
        self.storage.record(
            self._event(identity, "export.view", request, file=requested.path, sha256=requested.sha256)
        )
        self.deliver_audit()
        return requested, data

    # ---------------------------------------------------------------------------------------------
    # researcher

    def create(
        self,
        identity: Identity,
        project_id: str,
        groups: Sequence[GroupInput],
        claims: ProvenanceClaims | None = None,
        *,
        submit: bool = False,
    ) -> ExportRequest:
        with self.refusals(identity, "export.create", None, project_id):
            project = self._project(project_id)
            check_can_request(identity, project_id, project)
            assert project is not None
            if not any(g.files for g in groups):
                raise BadRequest("groups: name at least one file to export")
            frozen = self._freeze(identity, project, groups, claims)
            now = utcnow()
            request = ExportRequest(new_request_id(), project_id, identity.name, INITIAL_STATE, 0, now, now)
            audit = self._event(
                identity, STATUS_AUDIT_ACTIONS[INITIAL_STATE], request, groups=[g.name for g in groups]
            )
            with self.storage.create(request, audit=audit) as tx:
                self._apply_groups(identity, tx, groups, frozen)
                if submit:
                    self._submit(identity, tx)
                request = tx.request
        return request

    def add_files(
        self,
        identity: Identity,
        request_id: str,
        groups: Sequence[GroupInput],
        claims: ProvenanceClaims | None = None,
    ) -> ExportRequest:
        """Add files, or new versions of files already in the request (old versions are kept)."""
        with self.refusals(identity, "export.file_add", request_id):
            request = self._get(request_id)
            project = self._project(request.project)
            self._check_editable(identity, request, project, "add files to")
            assert project is not None
            frozen = self._freeze(identity, project, groups, claims)
            with self.storage.transaction(request_id) as tx:
                self._check_editable(identity, tx.request, project, "add files to")
                self._apply_groups(identity, tx, groups, frozen)
                return tx.request

    def remove_file(self, identity: Identity, request_id: str, path: str) -> ExportRequest:
        with (
            self.refusals(identity, "export.file_add", request_id),
            self.storage.transaction(request_id) as tx,
        ):
            project = self._project(tx.request.project)
            self._check_editable(identity, tx.request, project, "remove files from")
            if tx.request.current_file(path) is None:
                raise BadRequest(f"request {request_id}: has no current file {path!r}")
            tx.remove_file(
                path,
                audit=self._event(identity, "export.file_add", tx.request, path=path, change="removed"),
            )
            return tx.request

    def submit(self, identity: Identity, request_id: str) -> ExportRequest:
        """Submit a PENDING request, or resubmit a RETURNED one (a new review round starts)."""
        with self.refusals(identity, "export.submit", request_id), self.storage.transaction(request_id) as tx:
            check_is_author(identity, tx.request, self._project(tx.request.project), "submit")
            self._submit(identity, tx)
            return tx.request

    def withdraw(self, identity: Identity, request_id: str) -> ExportRequest:
        with (
            self.refusals(identity, "export.withdraw", request_id),
            self.storage.transaction(request_id) as tx,
        ):
            request = tx.request
            check_is_author(identity, request, self._project(request.project), "withdraw")
            check_transition(request, S.WITHDRAWN)
            tx.set_status(
                StatusChange(request.status, S.WITHDRAWN, identity.name, utcnow(), "withdrawn"),
                audit=self._event(
                    identity, STATUS_AUDIT_ACTIONS[S.WITHDRAWN], request, from_status=request.status.value
                ),
            )
            return tx.request

    def _check_editable(
        self, identity: Identity, request: ExportRequest, project: ProjectInfo | None, what: str
    ) -> None:
        check_is_author(identity, request, project, what)
        if request.status not in EDITABLE_STATES:
            editable = " or ".join(sorted(st.value for st in EDITABLE_STATES))
            raise InvalidTransition(
                f"request {request.id} is {request.status.value}: files can change only while {editable}"
            )

    def _freeze(
        self, identity: Identity, project: ProjectInfo, groups: Sequence[GroupInput], claims: ProvenanceClaims
    ) -> list[NewFile]:
        """Read and check every named file, and only then quarantine them all, before touching the
        database: any refusal stops the whole call with nothing written anywhere."""
        provenance = self._provenance(identity, claims)
        named: list[tuple[str, FileInput, str, str]] = []
        seen: dict[str, str] = {}
        for group in groups:  # every name is checked before any file is opened
            for f in group.files:
                path = workspace.normalize_relpath(f.path, f.label)
                canonical.check_name(path, f.label)
                filetype = workspace.file_type(path, f.label)
                if path in seen:
                    raise BadRequest(f"{f.label} {f.path!r}: names the same file as {seen[path]}")
                seen[path] = f.label
                named.append((group.name, f, path, filetype))
        checked: list[tuple[NewFile, bytes]] = []
        total = 0
        for group_name, f, path, filetype in named:
            new, data = self._read_and_check(identity, project, group_name, f, path, filetype, provenance)
            total += len(data)
            if total > MAX_BYTES_PER_CALL:
                raise BadRequest(
                    f"{f.label}: more than {MAX_BYTES_PER_CALL} bytes in one call; add files in parts"
                )
            checked.append((new, data))
        for new, data in checked:
            self.quarantine.put(data)
        return [new for new, _ in checked]

    def _read_and_check(
        self,
        identity: Identity,
        project: ProjectInfo,
        group: str,
        f: FileInput,
        path: str,
        filetype: str,
        provenance: Provenance,
    ) -> tuple[NewFile, bytes]:
        label = f"{f.label} {path!r}"
        original = workspace.read_workspace_file(project.workspace, path, project.max_file_bytes, f.label)
        # what is quarantined, checked, shown and released is the canonical form, never the original
        data = canonical.canonicalize(original, filetype, project.canonical, label)
        result = checks_mod.run_checks(
            data, filetype, project.thresholds, label=label, role=f.role, count_columns=f.count_columns
        )
        new = NewFile(
            path,
            group,
            f.role,
            sha256_hex(data),
            len(data),
            filetype,
            identity.name,
            provenance,
            result,
            f.count_columns,
            sha256_hex(original),
            len(original),
        )
        return new, data

    def _provenance(self, identity: Identity, claims: ProvenanceClaims | None) -> Provenance:
        claims = claims or ProvenanceClaims()
        if not identity.in_container:
            return Provenance(via="web", notebook=claims.notebook)
        digest, source = claims.image_digest, "container" if claims.image_digest else None
        if self.provenance is not None and identity.project:
            known = self.provenance.image_digest(identity.name, identity.project)
            if known:
                digest, source = known, "hub"
        return Provenance(
            via="server-token",
            server=f"{identity.name}/{identity.project}",
            image_digest=digest,
            image_digest_source=source,
            notebook=claims.notebook,
        )

    def _apply_groups(
        self,
        identity: Identity,
        tx: RequestTransaction,
        groups: Sequence[GroupInput],
        frozen: Sequence[NewFile],
    ) -> None:
        for group in groups:
            existing = tx.request.group(group.name)
            merged = FileGroup(
                group.name,
                group.context if group.context is not None else (existing.context if existing else ""),
                group.controls if group.controls is not None else (existing.controls if existing else ""),
            )
            if merged != existing:
                tx.put_group(
                    merged,
                    audit=self._event(
                        identity,
                        "export.file_add",
                        tx.request,
                        group=group.name,
                        change="group context and controls",
                    ),
                )
        for new in frozen:
            previous = tx.request.current_file(new.path)
            if (
                previous is not None
                and previous.sha256 == new.sha256
                and previous.role is new.role
                and previous.group == new.group
                and previous.count_columns == new.count_columns
            ):
                continue  # the same bytes again: nothing to version
            added = tx.add_file(
                new,
                audit=self._event(
                    identity,
                    "export.file_add",
                    tx.request,
                    path=new.path,
                    sha256=new.sha256,
                    size=new.size,
                    original_sha256=new.original_sha256,
                    original_size=new.original_size,
                    filetype=new.filetype,
                    role=new.role.value,
                    group=new.group,
                    version=(previous.version + 1) if previous else 1,
                    checks=new.checks.outcome.value,
                    provenance=new.provenance.to_json(),
                ),
            )
            log.info(
                "request %s: froze %s v%d (%s)", tx.request.id, added.path, added.version, added.sha256[:12]
            )

    def _submit(self, identity: Identity, tx: RequestTransaction) -> None:
        request = tx.request
        check_transition(request, S.SUBMITTED)
        if not request.output_files:
            raise BadRequest(f"request {request.id}: has no output file to submit")
        for name in sorted({f.group for f in request.output_files}):
            group = request.group(name)
            for field in ("context", "controls"):
                if group is None or not getattr(group, field).strip():
                    raise BadRequest(
                        f"request {request.id}: file group {name!r} needs a {field} before it can be submitted"
                    )
        tx.set_status(
            StatusChange(
                request.status,
                S.SUBMITTED,
                identity.name,
                utcnow(),
                "resubmitted" if request.status is S.RETURNED else "submitted",
            ),
            audit=self._event(
                identity,
                STATUS_AUDIT_ACTIONS[S.SUBMITTED],
                request,
                round=round_after(request, S.SUBMITTED),
                from_status=request.status.value,
                files={f.path: f.sha256 for f in request.output_files},
            ),
        )

    # ---------------------------------------------------------------------------------------------
    # checker

    def _check_reviewing(self, identity: Identity, request: ExportRequest, what: str) -> ProjectInfo | None:
        project = self._project(request.project)
        check_can_review(identity, request, project)
        if request.status not in UNDER_REVIEW_STATES:
            raise InvalidTransition(f"request {request.id} is {request.status.value}: {what} is closed")
        return project

    def vote(
        self,
        identity: Identity,
        request_id: str,
        file_id: int,
        decision: FileDecision,
        comment: str | None = None,
        visibility: Visibility = Visibility.CHECKERS,
    ) -> ExportRequest:
        """Record (or change) this checker's vote on one file. Votes count once the review is submitted."""
        with self.refusals(identity, "export.vote", request_id), self.storage.transaction(request_id) as tx:
            request = tx.request
            self._check_reviewing(identity, request, "voting")
            if request.has_reviewed(identity.name):
                raise InvalidTransition(
                    f"request {request_id}: {identity.name} already submitted a review for round "
                    f"{request.round}; votes can no longer change"
                )
            target = request.file_by_id(file_id)
            if target is None or not target.current or target.role is not FileRole.OUTPUT:
                raise BadRequest(f"request {request_id}: file {file_id} is not a current output file")
            tx.set_vote(
                Vote(file_id, identity.name, decision, request.round, utcnow()),
                audit=self._event(
                    identity,
                    "export.vote",
                    request,
                    file=target.path,
                    version=target.version,
                    sha256=target.sha256,
                    decision=decision.value,
                    round=request.round,
                ),
            )
            if comment:
                self._add_comment(identity, tx, comment, visibility, target.path, "checker")
            return tx.request

    def submit_review(
        self, identity: Identity, request_id: str, verdict: ReviewVerdict = ReviewVerdict.VOTES
    ) -> ExportRequest:
        """Submit this checker's review. With the last required review, the system decides at once."""
        with self.refusals(identity, "export.vote", request_id), self.storage.transaction(request_id) as tx:
            request = tx.request
            project = self._check_reviewing(identity, request, "reviewing")
            if request.has_reviewed(identity.name):
                raise InvalidTransition(
                    f"request {request_id}: {identity.name} already reviewed round {request.round}"
                )
            mine = request.votes_by(identity.name)
            unvoted = [f.path for f in request.output_files if f.id not in mine]
            if unvoted and verdict is ReviewVerdict.VOTES:
                raise BadRequest(
                    f"request {request_id}: vote on every output file first (missing: {', '.join(unvoted)})"
                )
            tx.add_review(
                Review(identity.name, request.round, verdict, utcnow()),
                audit=self._event(
                    identity,
                    "export.vote",
                    request,
                    review="submitted",
                    verdict=verdict.value,
                    round=request.round,
                    votes={
                        f.path: mine.get(f.id, FileDecision.CHANGES_REQUESTED).value
                        for f in request.output_files
                    },
                ),
            )
            self._advance(identity, tx, project.reviewers_required if project else 2)
            request = tx.request
        if request.status is S.APPROVED:
            self.release(request_id)
            request = self._get(request_id)
        return request

    def _advance(self, identity: Identity, tx: RequestTransaction, reviewers_required: int) -> None:
        """Move along the table after a review: SUBMITTED -> PARTIALLY_REVIEWED -> REVIEWED -> decision.
        The checker moves it through review; the decision is the system's, derived from the reviews."""
        if tx.request.status is S.SUBMITTED:
            self._move(tx, S.PARTIALLY_REVIEWED, identity.name, "first review submitted")
        if status_after_review(tx.request, reviewers_required) is S.REVIEWED:
            reviewers = sorted(r.reviewer for r in tx.request.reviews_in_round())
            self._move(tx, S.REVIEWED, identity.name, f"reviewed by {', '.join(reviewers)}")
            outcome, reason = decide(tx.request, reviewers_required)
            self._move(
                tx,
                outcome,
                SYSTEM,
                reason,
                decision=outcome.value.lower(),
                reviewers=reviewers,
            )

    def _move(
        self,
        tx: RequestTransaction,
        target: RequestStatus,
        actor: str,
        reason: str,
        **details: Any,
    ) -> None:
        """One move along the table, audited under the action the domain names for ``target``."""
        request = tx.request
        check_transition(request, target)
        tx.set_status(
            StatusChange(request.status, target, actor, utcnow(), reason),
            audit=self._event(
                actor,
                STATUS_AUDIT_ACTIONS[target],
                request,
                from_status=request.status.value,
                to_status=target.value,
                reason=reason,
                round=request.round,
                **details,
            ),
        )

    def return_request(self, identity: Identity, request_id: str, reason: str) -> ExportRequest:
        """Return a request under review to the researcher before every review is in (airlock's early
        return), with a reason the researcher will see."""
        with (
            self.refusals(identity, "export.decision", request_id),
            self.storage.transaction(request_id) as tx,
        ):
            self._check_reviewing(identity, tx.request, "returning")
            self._add_comment(identity, tx, reason, Visibility.RESEARCHER, None, "checker")
            self._move(
                tx,
                S.RETURNED,
                identity.name,
                reason,
                decision="returned",
                early=True,
                via=identity.via,
            )
            return tx.request

    def comment(
        self,
        identity: Identity,
        request_id: str,
        text: str,
        visibility: Visibility,
        file_path: str | None = None,
    ) -> ExportRequest:
        with (
            self.refusals(identity, "export.comment", request_id),
            self.storage.transaction(request_id) as tx,
        ):
            request = tx.request
            if file_path is not None and not any(f.path == file_path for f in request.files):
                raise BadRequest(f"request {request_id}: has no file {file_path!r}")
            if identity.name == request.author:
                check_is_author(identity, request, self._project(request.project), "comment on")
                self._add_comment(identity, tx, text, Visibility.RESEARCHER, file_path, "researcher")
            else:
                check_can_review(identity, request, self._project(request.project))
                self._add_comment(identity, tx, text, visibility, file_path, "checker")
            return tx.request

    def _add_comment(
        self,
        identity: Identity,
        tx: RequestTransaction,
        text: str,
        visibility: Visibility,
        file_path: str | None,
        role: str,
    ) -> None:
        request = tx.request
        tx.add_comment(
            Comment(0, identity.name, role, visibility, text, request.round, utcnow(), file_path),
            audit=self._event(
                identity,
                "export.comment",
                request,
                visibility=visibility.value,
                file=file_path,
                round=request.round,
                length=len(text),
            ),
        )

    def revoke(self, identity: Identity, request_id: str, reason: str) -> ExportRequest:
        with self.refusals(identity, "export.revoke", request_id), self.storage.transaction(request_id) as tx:
            check_can_revoke(identity, tx.request)
            self._move(tx, S.REVOKED, identity.name, reason, via=identity.via)
            return tx.request

    # ---------------------------------------------------------------------------------------------
    # release and download

    def release(self, request_id: str) -> bool:
        """Copy exactly the approved bytes to the release store, verify them, then mark RELEASED.

        Crash-safe by order: the files are placed (atomically, verified by hash) before the database
        moves to RELEASED, in one transaction with the list of released files. A crash before that
        commit leaves the request APPROVED, and ``release_pending`` at start-up does it again."""
        with _file_lock(self.releases.root / f".{request_id}.lock"):
            request = self._get(request_id)
            if request.status is not S.APPROVED:
                return False
            try:
                released = self._place(request)
            except Exception as exc:
                log.exception("release of %s failed; it stays APPROVED and is retried", request_id)
                self.storage.record(
                    AuditEvent(
                        SYSTEM,
                        "export.release",
                        request.project,
                        request.id,
                        "error",
                        {"reason": "release_failed", "message": str(exc)[:500]},
                    )
                )
                self.deliver_audit()
                return False
            with self.storage.transaction(request_id) as tx:
                if tx.request.status is not S.APPROVED:
                    return False
                check_transition(tx.request, S.RELEASED)
                change = StatusChange(
                    S.APPROVED, S.RELEASED, SYSTEM, utcnow(), "approved bytes copied and verified"
                )
                tx.record_release(
                    released,
                    change,
                    audit=self._event(
                        SYSTEM,
                        STATUS_AUDIT_ACTIONS[S.RELEASED],
                        tx.request,
                        files={f.path: f.sha256 for f in released},
                        to=tx.request.author,
                    ),
                )
        self.deliver_audit()
        return True

    def _place(self, request: ExportRequest) -> list[ReleasedFile]:
        self.releases.clean_partial(request.id)
        released = []
        for f in request.output_files:
            data = self.quarantine.get(f.sha256)
            self.releases.place(request.id, f.sha256, data)
            released.append(ReleasedFile(f.id, f.path, f.sha256, f.size))
        return released

    def release_pending(self) -> list[str]:
        """Release every APPROVED request (after a crash or a failed attempt). Returns those released."""
        return [rid for rid in self.storage.ids_with_status(S.APPROVED) if self.release(rid)]

    def download(self, identity: Identity, request_id: str, file_id: int) -> tuple[ReleasedFile, bytes]:
        with self.refusals(identity, "export.download", request_id):
            request = self._visible(identity, request_id)
            check_can_download(identity, request, self._project(request.project))
            released = next((f for f in request.released if f.file_id == file_id), None)
            if released is None:
                raise NotFound(f"request {request_id}: file {file_id} was not released")
            data = self.releases.get(request_id, released.sha256)
            self.storage.record(
                self._event(
                    identity,
                    "export.download",
                    request,
                    file=released.path,
                    sha256=released.sha256,
                    size=released.size,
                )
            )
            return released, data

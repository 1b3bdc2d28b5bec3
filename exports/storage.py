"""Where export requests are kept: a Protocol, and its SQLAlchemy implementation (SQLite or PostgreSQL).

Every mutation takes an ``AuditEvent`` as a required keyword argument and writes it to an outbox table
in the same database transaction as the change itself. The workflow then delivers the outbox to the
hash-chained audit log (see ``workflow.AuditDelivery``): a change that committed is never missing from
the audit trail, even if the process dies right after the commit. (Delivery is at-least-once; each
record carries its outbox id so a duplicate after a crash can be recognised.)

A change to a request happens inside ``transaction(request_id)``: the request row is locked (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``), the domain object is loaded, the caller
checks rules against it, and the mutations either all commit or none do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from exports.domain import (
    AuditEvent,
    Comment,
    ExportRequest,
    FileChecks,
    FileDecision,
    FileGroup,
    FileRole,
    NotFound,
    Provenance,
    ReleasedFile,
    RequestFile,
    RequestStatus,
    RequestSummary,
    Review,
    ReviewVerdict,
    StatusChange,
    Visibility,
    Vote,
    apply_transition,
    round_of_new_file,
    utcnow,
)

# --------------------------------------------------------------------------------------------------
# The Protocol


@dataclass(frozen=True)
class NewFile:
    """A file version about to be added; storage assigns its id and version number."""

    path: str
    group: str
    role: FileRole
    sha256: str
    size: int
    filetype: str
    added_by: str
    provenance: Provenance
    checks: FileChecks
    count_columns: tuple[str, ...] = ()
    original_sha256: str | None = None
    """What the researcher named; ``sha256`` and ``size`` are of the canonical bytes (exports.canonical)."""
    original_size: int | None = None


@dataclass(frozen=True)
class RequestQuery:
    statuses: tuple[RequestStatus, ...] = ()
    project: str | None = None
    author: str | None = None
    oldest_first: bool = True
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class Page:
    items: tuple[RequestSummary, ...]
    total: int
    offset: int
    limit: int


class RequestTransaction(Protocol):
    @property
    def request(self) -> ExportRequest:
        """The request as it stands inside this transaction, including changes made so far."""
        ...

    def put_group(self, group: FileGroup, *, audit: AuditEvent) -> None: ...
    def add_file(self, new: NewFile, *, audit: AuditEvent) -> RequestFile: ...
    def remove_file(self, path: str, *, audit: AuditEvent) -> None: ...
    def set_vote(self, vote: Vote, *, audit: AuditEvent) -> None: ...
    def add_review(self, review: Review, *, audit: AuditEvent) -> None: ...
    def add_comment(self, comment: Comment, *, audit: AuditEvent) -> None: ...
    def set_status(self, change: StatusChange, *, audit: AuditEvent) -> None: ...
    def record_release(
        self, files: Sequence[ReleasedFile], change: StatusChange, *, audit: AuditEvent
    ) -> None:
        """Record the released files and the move to RELEASED together: one is never without the other."""
        ...


class Storage(Protocol):
    def create(
        self, request: ExportRequest, *, audit: AuditEvent
    ) -> contextlib.AbstractContextManager[RequestTransaction]:
        """Insert a new request and continue in the same transaction (to add its groups and files)."""
        ...

    def transaction(self, request_id: str) -> contextlib.AbstractContextManager[RequestTransaction]: ...
    def get(self, request_id: str) -> ExportRequest | None: ...
    def list(self, query: RequestQuery) -> Page: ...
    def ids_with_status(self, status: RequestStatus) -> list[str]: ...
    def record(self, audit: AuditEvent) -> None:
        """An audit event with no other change (a refusal, a download)."""
        ...

    def undelivered_audit(self, limit: int = 500) -> list[tuple[int, AuditEvent]]: ...
    def mark_audit_delivered(self, ids: Sequence[int], error: str | None = None) -> None: ...


# --------------------------------------------------------------------------------------------------
# Schema

metadata = sa.MetaData()
T = sa.Text
S = sa.String

requests_t = sa.Table(
    "export_requests",
    metadata,
    sa.Column("id", S(40), primary_key=True),
    sa.Column("project", S(128), nullable=False),
    sa.Column("author", S(255), nullable=False),
    sa.Column("status", S(32), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("created_at", S(32), nullable=False),
    sa.Column("updated_at", S(32), nullable=False),
    sa.Column("submitted_at", S(32)),
    sa.Column("file_count", sa.Integer, nullable=False),
    sa.Column("checks_summary", sa.JSON, nullable=False),
    sa.Column("reviewers", sa.JSON, nullable=False),
    sa.Index("ix_export_requests_status_submitted", "status", "submitted_at", "id"),
    sa.Index("ix_export_requests_project", "project", "status"),
    sa.Index("ix_export_requests_author", "author", "created_at"),
)
groups_t = sa.Table(
    "export_groups",
    metadata,
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), primary_key=True),
    sa.Column("name", S(128), primary_key=True),
    sa.Column("context", T, nullable=False),
    sa.Column("controls", T, nullable=False),
)
files_t = sa.Table(
    "export_files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), nullable=False, index=True),
    sa.Column("path", S(1024), nullable=False),
    sa.Column("group_name", S(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("role", S(16), nullable=False),
    sa.Column("sha256", S(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("filetype", S(16), nullable=False),
    sa.Column("added_by", S(255), nullable=False),
    sa.Column("added_at", S(32), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("current", sa.Boolean, nullable=False),
    sa.Column("provenance", sa.JSON, nullable=False),
    sa.Column("checks", sa.JSON, nullable=False),
    sa.Column("count_columns", sa.JSON, nullable=False),
    sa.Column("original_sha256", S(64)),
    sa.Column("original_size", sa.BigInteger),
    sa.UniqueConstraint("request_id", "path", "version"),
)
ADDED_COLUMNS = {"export_files": ("original_sha256", "original_size")}
"""Columns added after the first release of the schema: ``migrate`` adds them to an existing database."""
votes_t = sa.Table(
    "export_votes",
    metadata,
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("reviewer", S(255), primary_key=True),
    sa.Column("file_id", sa.Integer, sa.ForeignKey("export_files.id"), primary_key=True),
    sa.Column("decision", S(32), nullable=False),
    sa.Column("at", S(32), nullable=False),
)
reviews_t = sa.Table(
    "export_reviews",
    metadata,
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("reviewer", S(255), primary_key=True),
    sa.Column("verdict", S(16), nullable=False),
    sa.Column("at", S(32), nullable=False),
)
comments_t = sa.Table(
    "export_comments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), nullable=False, index=True),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("author", S(255), nullable=False),
    sa.Column("author_role", S(16), nullable=False),
    sa.Column("visibility", S(16), nullable=False),
    sa.Column("text", T, nullable=False),
    sa.Column("file_path", S(1024)),
    sa.Column("at", S(32), nullable=False),
)
history_t = sa.Table(
    "export_status_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), nullable=False, index=True),
    sa.Column("from_status", S(32)),
    sa.Column("to_status", S(32), nullable=False),
    sa.Column("actor", S(255), nullable=False),
    sa.Column("reason", T, nullable=False),
    sa.Column("at", S(32), nullable=False),
)
released_t = sa.Table(
    "export_released_files",
    metadata,
    sa.Column("request_id", S(40), sa.ForeignKey("export_requests.id"), primary_key=True),
    sa.Column("file_id", sa.Integer, sa.ForeignKey("export_files.id"), primary_key=True),
    sa.Column("path", S(1024), nullable=False),
    sa.Column("sha256", S(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)
outbox_t = sa.Table(
    "export_audit_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", S(32), nullable=False),
    sa.Column("actor", S(255), nullable=False),
    sa.Column("action", S(64), nullable=False),
    sa.Column("project", S(128)),
    sa.Column("target", S(255)),
    sa.Column("outcome", S(16), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("delivered_at", S(32)),
    sa.Column("error", T),
    sa.Index("ix_export_audit_outbox_undelivered", "delivered_at", "id"),
)


# --------------------------------------------------------------------------------------------------
# Engine


def default_db_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'exports' / 'exports.sqlite'}"


def make_engine(url: str) -> Engine:
    """An engine with durable, serializable writes. For SQLite: WAL (readers never wait for the writer),
    synchronous=FULL (a committed transition survives power loss) and BEGIN IMMEDIATE for writes."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    return engine


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# --------------------------------------------------------------------------------------------------
# Implementation


class SQLStorage:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    @classmethod
    def open(cls, url: str) -> SQLStorage:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        storage = cls(make_engine(url))
        metadata.create_all(storage.engine)
        migrate(storage.engine)
        return storage

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def create(self, request: ExportRequest, *, audit: AuditEvent) -> Iterator[RequestTransaction]:
        with self._write() as conn:
            conn.execute(
                requests_t.insert().values(
                    id=request.id,
                    project=request.project,
                    author=request.author,
                    status=request.status.value,
                    round=request.round,
                    created_at=request.created_at,
                    updated_at=request.updated_at,
                    submitted_at=None,
                    file_count=0,
                    checks_summary={},
                    reviewers=[],
                )
            )
            conn.execute(
                history_t.insert().values(
                    request_id=request.id,
                    from_status=None,
                    to_status=request.status.value,
                    actor=request.author,
                    reason="created",
                    at=request.created_at,
                )
            )
            _insert_audit(conn, audit)
            yield _SQLRequestTransaction(conn, request.id)

    @contextlib.contextmanager
    def transaction(self, request_id: str) -> Iterator[RequestTransaction]:
        with self._write() as conn:
            locked = sa.select(requests_t.c.id).where(requests_t.c.id == request_id)
            if not self._sqlite:
                locked = locked.with_for_update()
            if conn.execute(locked).first() is None:
                raise NotFound(f"no export request {request_id!r}")
            yield _SQLRequestTransaction(conn, request_id)

    def get(self, request_id: str) -> ExportRequest | None:
        with self._read() as conn:
            return _load(conn, request_id)

    def list(self, query: RequestQuery) -> Page:
        where = []
        if query.statuses:
            where.append(requests_t.c.status.in_([s.value for s in query.statuses]))
        if query.project:
            where.append(requests_t.c.project == query.project)
        if query.author:
            where.append(requests_t.c.author == query.author)
        when = sa.func.coalesce(requests_t.c.submitted_at, requests_t.c.created_at)
        order = (
            (when.asc(), requests_t.c.id.asc())
            if query.oldest_first
            else (when.desc(), requests_t.c.id.desc())
        )
        with self._read() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(requests_t).where(*where)
            ).scalar_one()
            rows = (
                conn.execute(
                    sa.select(requests_t)
                    .where(*where)
                    .order_by(*order)
                    .offset(query.offset)
                    .limit(query.limit)
                )
                .mappings()
                .all()
            )
        return Page(tuple(_summary(r) for r in rows), total, query.offset, query.limit)

    def ids_with_status(self, status: RequestStatus) -> list[str]:
        with self._read() as conn:
            return list(
                conn.execute(
                    sa.select(requests_t.c.id)
                    .where(requests_t.c.status == status.value)
                    .order_by(requests_t.c.id)
                ).scalars()
            )

    def record(self, audit: AuditEvent) -> None:
        with self._write() as conn:
            _insert_audit(conn, audit)

    def undelivered_audit(self, limit: int = 500) -> list[tuple[int, AuditEvent]]:
        with self._read() as conn:
            rows = (
                conn.execute(
                    sa.select(outbox_t)
                    .where(outbox_t.c.delivered_at.is_(None))
                    .order_by(outbox_t.c.id)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [
            (
                r["id"],
                AuditEvent(
                    r["actor"], r["action"], r["project"], r["target"], r["outcome"], dict(r["details"])
                ),
            )
            for r in rows
        ]

    def mark_audit_delivered(self, ids: Sequence[int], error: str | None = None) -> None:
        """Delivered, or (with ``error``) refused by the audit log and set aside for an operator."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                outbox_t.update()
                .where(outbox_t.c.id.in_(list(ids)))
                .values(delivered_at=utcnow(), error=error)
            )


def migrate(engine: Engine) -> None:
    """Add the columns of ADDED_COLUMNS that an older database lacks (nullable, so old rows stay valid)."""
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            for table_name, names in ADDED_COLUMNS.items():
                present = {c["name"] for c in sa.inspect(conn).get_columns(table_name)}
                table = metadata.tables[table_name]
                for name in names:
                    if name not in present:
                        column = table.c[name]
                        kind = column.type.compile(dialect=engine.dialect)
                        conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {name} {kind}")


def _insert_audit(conn: Connection, audit: AuditEvent) -> None:
    if not isinstance(audit, AuditEvent):
        raise TypeError("every storage mutation needs an AuditEvent")
    conn.execute(
        outbox_t.insert().values(
            at=utcnow(),
            actor=audit.actor,
            action=audit.action,
            project=audit.project,
            target=audit.target,
            outcome=audit.outcome,
            details=dict(audit.details),
        )
    )


class _SQLRequestTransaction:
    def __init__(self, conn: Connection, request_id: str):
        self._conn = conn
        self._id = request_id
        self._cached: ExportRequest | None = None

    @property
    def request(self) -> ExportRequest:
        if self._cached is None:
            loaded = _load(self._conn, self._id)
            assert loaded is not None  # the row is locked by this transaction
            self._cached = loaded
        return self._cached

    def _changed(self, audit: AuditEvent, *, summary: bool = False) -> None:
        _insert_audit(self._conn, audit)
        self._cached = None
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now}
        if summary:
            values.update(_derived(self.request))
        self._conn.execute(requests_t.update().where(requests_t.c.id == self._id).values(**values))
        self._cached = None

    def put_group(self, group: FileGroup, *, audit: AuditEvent) -> None:
        key = (groups_t.c.request_id == self._id) & (groups_t.c.name == group.name)
        if self._conn.execute(sa.select(groups_t.c.name).where(key)).first():
            self._conn.execute(
                groups_t.update().where(key).values(context=group.context, controls=group.controls)
            )
        else:
            self._conn.execute(
                groups_t.insert().values(
                    request_id=self._id, name=group.name, context=group.context, controls=group.controls
                )
            )
        self._changed(audit)

    def add_file(self, new: NewFile, *, audit: AuditEvent) -> RequestFile:
        previous = self._conn.execute(
            sa.select(sa.func.max(files_t.c.version)).where(
                (files_t.c.request_id == self._id) & (files_t.c.path == new.path)
            )
        ).scalar()
        self._conn.execute(
            files_t.update()
            .where((files_t.c.request_id == self._id) & (files_t.c.path == new.path))
            .values(current=False)
        )
        round_ = round_of_new_file(self.request)
        file_id = self._conn.execute(
            files_t.insert().values(
                request_id=self._id,
                path=new.path,
                group_name=new.group,
                version=(previous or 0) + 1,
                role=new.role.value,
                sha256=new.sha256,
                size=new.size,
                filetype=new.filetype,
                added_by=new.added_by,
                added_at=utcnow(),
                round=round_,
                current=True,
                provenance=new.provenance.to_json(),
                checks=new.checks.to_json(),
                count_columns=list(new.count_columns),
                original_sha256=new.original_sha256,
                original_size=new.original_size,
            )
        ).inserted_primary_key[0]
        self._changed(audit, summary=True)
        added = self.request.file_by_id(file_id)
        assert added is not None
        return added

    def remove_file(self, path: str, *, audit: AuditEvent) -> None:
        self._conn.execute(
            files_t.update()
            .where((files_t.c.request_id == self._id) & (files_t.c.path == path))
            .values(current=False)
        )
        self._changed(audit, summary=True)

    def set_vote(self, vote: Vote, *, audit: AuditEvent) -> None:
        key = (
            (votes_t.c.request_id == self._id)
            & (votes_t.c.round == vote.round)
            & (votes_t.c.reviewer == vote.reviewer)
            & (votes_t.c.file_id == vote.file_id)
        )
        self._conn.execute(votes_t.delete().where(key))
        self._conn.execute(
            votes_t.insert().values(
                request_id=self._id,
                round=vote.round,
                reviewer=vote.reviewer,
                file_id=vote.file_id,
                decision=vote.decision.value,
                at=vote.at,
            )
        )
        self._changed(audit)

    def add_review(self, review: Review, *, audit: AuditEvent) -> None:
        self._conn.execute(
            reviews_t.insert().values(
                request_id=self._id,
                round=review.round,
                reviewer=review.reviewer,
                verdict=review.verdict.value,
                at=review.at,
            )
        )
        self._changed(audit, summary=True)

    def add_comment(self, comment: Comment, *, audit: AuditEvent) -> None:
        self._conn.execute(
            comments_t.insert().values(
                request_id=self._id,
                round=comment.round,
                author=comment.author,
                author_role=comment.author_role,
                visibility=comment.visibility.value,
                text=comment.text,
                file_path=comment.file_path,
                at=comment.at,
            )
        )
        self._changed(audit)

    def set_status(self, change: StatusChange, *, audit: AuditEvent) -> None:
        self._status(change)
        self._changed(audit, summary=True)

    def _status(self, change: StatusChange) -> None:
        # The domain checks the move against its table and bumps the round; storage only writes it.
        after = apply_transition(
            self.request, change.to_status, actor=change.actor, at=change.at, reason=change.reason
        )
        values: dict[str, Any] = {"status": after.status.value, "round": after.round}
        if change.to_status is RequestStatus.SUBMITTED:
            values.update(submitted_at=change.at)
        self._conn.execute(requests_t.update().where(requests_t.c.id == self._id).values(**values))
        self._conn.execute(
            history_t.insert().values(
                request_id=self._id,
                from_status=change.from_status.value if change.from_status else None,
                to_status=change.to_status.value,
                actor=change.actor,
                reason=change.reason,
                at=change.at,
            )
        )

    def record_release(
        self, files: Sequence[ReleasedFile], change: StatusChange, *, audit: AuditEvent
    ) -> None:
        for f in files:
            self._conn.execute(
                released_t.insert().values(
                    request_id=self._id, file_id=f.file_id, path=f.path, sha256=f.sha256, size=f.size
                )
            )
        self._status(change)
        self._changed(audit, summary=True)


def _derived(request: ExportRequest) -> dict[str, Any]:
    """Columns the queue shows without loading files: counts of worst check outcomes, reviewers."""
    outcomes = {"pass": 0, "review": 0, "fail": 0}
    for f in request.output_files:
        outcomes[f.checks.outcome.value] += 1
    return {
        "file_count": len(request.output_files),
        "checks_summary": outcomes,
        "reviewers": sorted(r.reviewer for r in request.reviews_in_round()),
    }


def _summary(row: Any) -> RequestSummary:
    return RequestSummary(
        id=row["id"],
        project=row["project"],
        author=row["author"],
        status=RequestStatus(row["status"]),
        round=row["round"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        submitted_at=row["submitted_at"],
        file_count=row["file_count"],
        checks=dict(row["checks_summary"]),
        reviewers=tuple(row["reviewers"] or ()),
    )


def _load(conn: Connection, request_id: str) -> ExportRequest | None:
    row = conn.execute(sa.select(requests_t).where(requests_t.c.id == request_id)).mappings().first()
    if row is None:
        return None

    def rows(table: sa.Table, order: Any) -> Sequence[Any]:
        return (
            conn.execute(sa.select(table).where(table.c.request_id == request_id).order_by(order))
            .mappings()
            .all()
        )

    return ExportRequest(
        id=row["id"],
        project=row["project"],
        author=row["author"],
        status=RequestStatus(row["status"]),
        round=row["round"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        groups=tuple(
            FileGroup(g["name"], g["context"], g["controls"]) for g in rows(groups_t, groups_t.c.name)
        ),
        files=tuple(_file(f) for f in rows(files_t, files_t.c.id)),
        votes=tuple(
            Vote(v["file_id"], v["reviewer"], FileDecision(v["decision"]), v["round"], v["at"])
            for v in rows(votes_t, votes_t.c.at)
        ),
        reviews=tuple(
            Review(r["reviewer"], r["round"], ReviewVerdict(r["verdict"]), r["at"])
            for r in rows(reviews_t, reviews_t.c.at)
        ),
        comments=tuple(
            Comment(
                c["id"],
                c["author"],
                c["author_role"],
                Visibility(c["visibility"]),
                c["text"],
                c["round"],
                c["at"],
                c["file_path"],
            )
            for c in rows(comments_t, comments_t.c.id)
        ),
        history=tuple(
            StatusChange(
                RequestStatus(h["from_status"]) if h["from_status"] else None,
                RequestStatus(h["to_status"]),
                h["actor"],
                h["at"],
                h["reason"],
            )
            for h in rows(history_t, history_t.c.id)
        ),
        released=tuple(
            ReleasedFile(r["file_id"], r["path"], r["sha256"], r["size"])
            for r in rows(released_t, released_t.c.file_id)
        ),
    )


def _file(f: Any) -> RequestFile:
    return RequestFile(
        id=f["id"],
        path=f["path"],
        group=f["group_name"],
        version=f["version"],
        role=FileRole(f["role"]),
        sha256=f["sha256"],
        size=f["size"],
        filetype=f["filetype"],
        added_by=f["added_by"],
        added_at=f["added_at"],
        round=f["round"],
        current=bool(f["current"]),
        provenance=Provenance.from_json(f["provenance"]),
        checks=FileChecks.from_json(f["checks"]),
        count_columns=tuple(f["count_columns"] or ()),
        original_sha256=f["original_sha256"],
        original_size=f["original_size"],
    )

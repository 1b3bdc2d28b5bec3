"""AuditLog: the append-only, MAC-chained, checkpointed log that every part of the enclave writes to.

Several processes append at once (hub, export service, CLI). Each append, in order:

1. validates the entry against the vocabulary (nothing is locked or written for a bad entry);
2. takes an exclusive ``flock`` on ``<audit>/audit.lock``;
3. checks with two ``stat`` calls whether another process has written since this process last did, and
   only then re-reads the tail (cutting off an incomplete last line left by a crash);
4. rotates to a new segment if the current one is too big or from another UTC day;
5. seals the record (seq = last + 1, prev = last MAC), writes it with one ``write`` and ``fdatasync``s;
6. writes a signed checkpoint if N records or T seconds have passed since the last one;
7. releases the lock and returns the record. Returning is the acknowledgement: the record is on disk.

A failed write or fsync (full disk, I/O error) cuts the file back to where it was and raises
AuditWriteError, so no half record is ever acknowledged and the chain stays valid. ``append_or_spool`` is
for actions that take access away: when the trail cannot be written, their entry goes to the preallocated
spool (audit/spool.py), and the next append that can write drains it into the trail first, in order.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import keys
from audit.chain import (
    CHECKPOINTS_FILE,
    FORMAT_VERSION,
    LOCK_FILE,
    seal,
    segment_index,
    segment_name,
    segment_paths,
    unseal,
    utc_timestamp,
)
from audit.checkpoint import make_checkpoint
from audit.errors import AuditError, AuditRecordError, AuditWriteError
from audit.query import RecordFilter, read_records
from audit.spool import DEFAULT_SPOOL_BYTES, SPOOL_FILE, Spool, Spooled, rejected_summary
from audit.verify import VerifyReport, verify_log
from audit.vocabulary import VOCABULARY_VERSION, check_entry

logger = logging.getLogger("audit")

WITNESS_ENV = "ENCLAVE_AUDIT_WITNESS"
MIRROR_ENV = "ENCLAVE_AUDIT_CHECKPOINT_MIRROR"
"""The older name of ``ENCLAVE_AUDIT_WITNESS``; still read when the new one is not set."""
SYSLOG_ENV = "ENCLAVE_AUDIT_SYSLOG"
SYSLOG_SOCKET = "/dev/log"
SERVICE_ACTOR = "service:audit"
TAKES_ACCESS_AWAY = frozenset({"stop", "cull", "revoke", "logout", "enforce"})
"""Last parts of the action names that ``append_or_spool`` accepts (server.stop, server.cull, export.revoke,
auth.logout, policy.enforce, ...): the spool is reserved for actions that must happen even on a full disk."""
_CHUNK = 64 * 1024


def _fdatasync(fd: int) -> None:
    """Data and the size that finds it; cheaper than fsync, which also flushes mtime."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


@dataclass
class _Tail:
    """This process's view of the end of the log. Only read or changed under the lock."""

    index: int
    path: str
    next_path: str  # its existence means another writer has rotated
    ino: int  # 0 while the segment file does not exist yet
    size: int
    seq: int
    mac: str | None
    day: str | None  # UTC date of the segment's first record
    fd: int | None


@dataclass
class _Batch:
    """Sealed lines not yet written, for group commit."""

    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    flushed: int = 0  # records of this batch already durable

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)


@dataclass
class _CheckpointState:
    ino: int = 0
    size: int = -1
    seq: int = 0
    time: float = 0.0


class AuditLog:
    """The audit trail of one enclave. Safe to share between threads, and across ``fork``."""

    def __init__(
        self,
        audit_dir: str | os.PathLike[str],
        key_dir: str | os.PathLike[str],
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 300.0,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_daily: bool = True,
        checkpoint_mirror: str | os.PathLike[str] | None = None,
        syslog: bool | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
    ) -> None:
        """Open (creating on first use) the log in ``audit_dir`` with keys in ``key_dir``.

        ``checkpoint_mirror`` is the witness file: a second copy of every checkpoint, outside the state
        directory and ideally on other storage, that makes a rollback or rewrite of the whole audit directory
        detectable; None means ``$ENCLAVE_AUDIT_WITNESS`` (or ``$ENCLAVE_AUDIT_CHECKPOINT_MIRROR``) if set.
        ``syslog`` also sends each checkpoint to syslog (facility auth, ident enclave-audit), which reaches
        the journal where there is one; None means ``$ENCLAVE_AUDIT_SYSLOG``: 1/true/yes on, 0/false/no
        off, unset or ``auto`` on exactly when ``/dev/log`` is a socket.
        ``spool_bytes`` is the size of the reserved spool for ``append_or_spool``.
        """
        if checkpoint_every < 1 or checkpoint_interval <= 0 or rotate_bytes < 1:
            raise ValueError("checkpoint_every, checkpoint_interval and rotate_bytes must be positive")
        self.audit_dir = Path(audit_dir)
        self._checkpoints_path = self.audit_dir / CHECKPOINTS_FILE
        self.key_dir = Path(key_dir)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.rotate_bytes = rotate_bytes
        self.rotate_daily = rotate_daily
        mirror = witness_from_env() if checkpoint_mirror is None else os.fspath(checkpoint_mirror)
        self.checkpoint_mirror = Path(mirror) if mirror else None
        self.syslog = syslog_from_env() if syslog is None else syslog

        self.audit_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        keys.ensure_private_dir(self.key_dir)
        fresh = not _has_records(self.audit_dir)
        self._mac_key = keys.load_mac_key(self.key_dir, create=fresh)
        self._signing_key: Ed25519PrivateKey = keys.load_signing_key(self.key_dir, create=fresh)
        keys.publish_public_key(self.audit_dir, self._signing_key.public_key())
        self.key_id = keys.key_id(self._signing_key.public_key())

        self._tail: _Tail | None = None
        self._cp = _CheckpointState()
        self._cp_fd: int | None = None
        self._lock_fd: int | None = None
        self._skipped: dict[str, Any] | None = None  # a damaged tail the chain now continues past
        self._spool = Spool(self.audit_dir / SPOOL_FILE, self._mac_key, spool_bytes)
        self._open_process_state()
        try:
            with self._locked():  # opening repairs a torn tail left by a crash, and reserves the spool
                self._current_tail()
                self._reserve_spool()
                self._drain_best_effort()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], **options: Any) -> AuditLog:
        """The enclave's log: records in ``<state_dir>/audit``, keys in ``<state_dir>/secrets``."""
        state = Path(state_dir)
        return cls(state / "audit", state / "secrets", **options)

    # -- writing -------------------------------------------------------------------------------------------

    def append(
        self,
        *,
        actor: str,
        action: str,
        project: str | None = None,
        target: str | None = None,
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record one action. Returns the record as stored; on return it is on disk (fsynced).

        Raises AuditRecordError (UnknownActionError) for an entry the vocabulary refuses, before anything is
        written, and AuditWriteError if the disk refused it, in which case nothing was acknowledged.
        """
        entry = {
            "actor": actor,
            "action": action,
            "project": project,
            "target": target,
            "outcome": outcome,
            "details": details,
        }
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Record several actions with one lock and as few fsyncs as checkpoints allow (group commit).

        Each entry takes the keyword arguments of ``append()``. All entries are validated first; if any is
        refused, nothing is written. If the disk fails midway, AuditWriteError says how many records made it;
        those form a prefix of ``entries``.
        """
        prepared = [_prepare(**entry) for entry in entries]
        with self._locked():
            try:
                return self._append_locked(prepared)
            except BaseException:
                self._forget_tail()  # our view of the tail may be ahead of the disk; re-read next time
                raise

    def append_or_spool(
        self,
        *,
        actor: str,
        action: str,
        project: str | None = None,
        target: str | None = None,
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | Spooled:
        """Record an action that takes access away (stop, cull, revoke, logout, enforce), even when the
        trail cannot be written: then the entry goes, MACed and fsynced, to the reserved spool, and is
        appended to the trail in order (followed by an ``audit.spooled`` record) once space returns.

        Returns the stored record, or a ``Spooled`` marker (``.spooled`` is True). Raises AuditRecordError
        for an entry the vocabulary refuses or an action that does not take access away (use ``append()``),
        and AuditWriteError only if the spool is full or unusable too.
        """
        if action.rsplit(".", 1)[-1] not in TAKES_ACCESS_AWAY:
            raise AuditRecordError(
                f"audit record {action}: append_or_spool is reserved for actions that take access away "
                f"(*.{', *.'.join(sorted(TAKES_ACCESS_AWAY))}); use append()"
            )
        fields = _prepare(
            actor=actor, action=action, project=project, target=target, outcome=outcome, details=details
        )
        with self._locked():
            try:
                return self._append_locked([dict(fields)])[0]
            except AuditWriteError as exc:
                self._forget_tail()
                return self._spool_locked(fields, exc)
            except BaseException:
                self._forget_tail()
                raise

    def checkpoint(self) -> dict[str, Any] | None:
        """Write a signed checkpoint now (``enclave audit checkpoint``, e.g. from cron, so that a quiet log
        is still covered). Spooled records are appended first, if the trail can take them. Returns the
        checkpoint, or None if the log is empty."""
        with self._locked():
            self._drain_best_effort()
            tail = self._current_tail()
            line = self._write_checkpoint(tail, "manual", raise_errors=True)
        return None if line is None else dict(json.loads(line))

    # -- reading -------------------------------------------------------------------------------------------

    def verify(self, extra_checkpoints: Iterable[str | os.PathLike[str]] = ()) -> VerifyReport:
        """Check every MAC, chain link, sequence number and checkpoint (including the mirror's)."""
        copies = [Path(p) for p in extra_checkpoints]
        if self.checkpoint_mirror is not None:
            copies.insert(0, self.checkpoint_mirror)
        return verify_log(
            self.audit_dir,
            mac_key=self._mac_key,
            public_key=self._signing_key.public_key(),
            checkpoint_copies=copies,
        )

    def records(
        self,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        actor: str | None = None,
        project: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records in log order that match every given filter. ``action`` may be a glob (``export.*``).
        ``since``/``until`` take datetimes or the strings of ``enclave audit show --since``. Not verified:
        run ``verify()`` for that."""
        return read_records(self.audit_dir, RecordFilter.build(since, until, actor, project, action, outcome))

    def health(self) -> AuditHealth:
        """Free space under the audit directory and spool usage, for ``enclave doctor``."""
        return AuditHealth.of(self.audit_dir)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        for fd in (self._tail.fd if self._tail else None, self._cp_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._tail, self._cp_fd, self._lock_fd = None, None, None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals: locking --------------------------------------------------------------------------------

    def _open_process_state(self) -> None:
        """File descriptors and locks that must not be shared with a forked child: an flock belongs to the
        open file, so a child using its parent's descriptor would hold the parent's lock."""
        self._pid = os.getpid()
        self._thread_lock = threading.Lock()
        self._lock_fd = os.open(self.audit_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._tail = None
        self._cp_fd = None
        self._cp = _CheckpointState()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if os.getpid() != self._pid:
            self._open_process_state()  # forked: the inherited descriptors stay with the parent
        if self._lock_fd is None:
            raise AuditError(f"{self.audit_dir}: this AuditLog was closed")
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- internals: the tail -------------------------------------------------------------------------------

    def _new_tail(
        self, index: int, seq: int, mac: str | None, ino: int = 0, size: int = 0, fd: int | None = None
    ) -> _Tail:
        path, next_path = (os.fspath(self._segment_path(i)) for i in (index, index + 1))
        return _Tail(index, path, next_path, ino=ino, size=size, seq=seq, mac=mac, day=None, fd=fd)

    def _segment_path(self, index: int) -> Path:
        return self.audit_dir / segment_name(index)

    def _current_tail(self) -> _Tail:
        """The end of the log, re-read only if another process (or a crash) changed it. With several
        writers the usual change is that another one appended to the same segment: then only the new last
        line is read, through the descriptor already open."""
        tail = self._tail
        if tail is not None:
            change = self._change_since(tail)
            if change == "none":
                return tail
            if change == "grew" and tail.fd is not None:
                path = Path(tail.path)
                tail.size = _cut_torn_tail(tail.fd, path)
                found = self._last_link(tail.fd, tail.size, path) if tail.size else None
                if found is not None:
                    tail.seq, tail.mac = found
                    return tail
        self._forget_tail()
        tail = self._tail = self._read_tail()
        return tail

    def _change_since(self, tail: _Tail) -> str:
        """ "none", "grew" (same segment file, other size) or "other" (rotated, replaced, created)."""
        if os.path.exists(tail.next_path):
            return "other"
        try:
            st = os.stat(tail.path)
        except FileNotFoundError:
            return "none" if tail.ino == 0 else "other"
        if st.st_ino != tail.ino:
            return "other"
        return "none" if st.st_size == tail.size else "grew"

    def _forget_tail(self) -> None:
        if self._tail is not None and self._tail.fd is not None:
            os.close(self._tail.fd)
        self._tail = None

    def _read_tail(self) -> _Tail:
        indexes = [segment_index(p) for p in segment_paths(self.audit_dir)]
        if not indexes:
            return self._new_tail(1, seq=0, mac=None)
        path = self._segment_path(indexes[-1])
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = _cut_torn_tail(fd, path)
            tail = self._new_tail(indexes[-1], seq=0, mac=None, ino=os.fstat(fd).st_ino, size=size, fd=fd)
            tail.day = _first_record_day(fd, path) if size else None
            tail.seq, tail.mac = self._chain_end(indexes)
            return tail
        except BaseException:
            os.close(fd)
            raise

    def _last_link(self, fd: int, size: int, path: Path) -> tuple[int, str] | None:
        """seq and MAC of the last line ending before ``size``, or None if it is not a well-formed record."""
        start = _last_newline_before(fd, size - 1) + 1
        link = unseal(self._mac_key, os.pread(fd, size - start, start).rstrip(b"\n"))
        if link is None:
            return None
        if not link.mac_ok:  # keep going: the bad record stays as evidence, verify() will name it
            logger.warning("%s: last record seq %d fails its MAC; run 'enclave audit verify'", path, link.seq)
        return link.seq, link.mac

    def _chain_end(self, indexes: list[int]) -> tuple[int, str | None]:
        """Where the chain continues: the last well-formed record, searching back across segments.

        A damaged last line must not stop logging (every later append would fail while the records it
        should hold are lost). The chain continues from the last readable record instead; the damaged bytes
        stay where they are as evidence, ``verify()`` fails at them, and the next append first writes an
        ``audit.tail_skipped`` record saying what was skipped."""
        skipped: tuple[Path, int, int] | None = None
        for index in reversed(indexes):
            path = self._segment_path(index)
            with open(path, "rb") as f:
                end = os.fstat(f.fileno()).st_size
                while end > 0:
                    found = self._last_link(f.fileno(), end, path)
                    if found is not None:
                        self._note_skipped(skipped, found[0])
                        return found
                    start = _last_newline_before(f.fileno(), end - 1) + 1
                    skipped = (path, start, (skipped[2] if skipped else 0) + end - start)
                    end = start
        self._note_skipped(skipped, 0)
        return 0, None

    def _note_skipped(self, skipped: tuple[Path, int, int] | None, seq: int) -> None:
        if skipped is None:
            return
        path, offset, size = skipped
        logger.error("%s: %d byte(s) from offset %d are not a well-formed record; the chain continues from seq "
                     "%d and 'enclave audit verify' will fail there", path, size, offset, seq)  # fmt: skip
        self._skipped = {"reason": "tail_damaged", "segment": path.name, "offset": offset, "bytes": size,
                         "continued_from": seq}  # fmt: skip

    # -- internals: appending ------------------------------------------------------------------------------

    def _append_locked(self, prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Spooled records first (they happened before), then a note of a skipped damaged tail, then the
        caller's entries. Reading the tail first is what finds a damaged one."""
        self._current_tail()
        if self._skipped is not None:
            note = _prepare(actor=SERVICE_ACTOR, action="audit.tail_skipped", outcome="error",
                            details=self._skipped)  # fmt: skip
            self._write_locked([note])
            self._skipped = None
        if self._spool.has_entries():
            self._drain_spool()
        return self._write_locked(prepared)

    def _write_locked(self, prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tail = self._current_tail()
        self._refresh_checkpoint_state()
        batch = _Batch()
        records: list[dict[str, Any]] = []
        for fields in prepared:
            ts = utc_timestamp()
            fields.update(seq=tail.seq + 1, prev=tail.mac, ts=ts)
            line, mac = seal(self._mac_key, fields)
            if self._must_rotate(tail, batch, len(line) + 1, ts):
                self._flush(tail, batch)
                self._write_checkpoint(tail, "rotation")
                tail = self._next_segment(tail)
            if tail.size + batch.size == 0:
                tail.day = ts[:10]
            batch.add(line + b"\n")
            tail.seq, tail.mac = fields["seq"], mac
            records.append(dict(fields, mac=mac))
            if tail.seq - self._cp.seq >= self.checkpoint_every:
                self._flush(tail, batch)
                self._write_checkpoint(tail, "count")
        self._flush(tail, batch)
        if self._cp.seq < tail.seq and _now() - self._cp.time >= self.checkpoint_interval:
            self._write_checkpoint(tail, "interval")
        return records

    def _must_rotate(self, tail: _Tail, batch: _Batch, length: int, ts: str) -> bool:
        used = tail.size + batch.size
        if used == 0:
            return False
        if used + length > self.rotate_bytes:
            return True
        return self.rotate_daily and tail.day is not None and tail.day != ts[:10]

    def _next_segment(self, tail: _Tail) -> _Tail:
        if tail.fd is not None:
            os.close(tail.fd)
        self._tail = self._new_tail(tail.index + 1, seq=tail.seq, mac=tail.mac)
        return self._tail

    def _flush(self, tail: _Tail, batch: _Batch) -> None:
        """Write and fsync the batch's lines: after this they are acknowledged."""
        if not batch.lines:
            return
        data = b"".join(batch.lines)
        path = tail.path
        try:
            if tail.fd is None:
                tail.fd = _create_segment(path)
                tail.ino = os.fstat(tail.fd).st_ino
            _write_all(tail.fd, data)
            _fdatasync(tail.fd)
        except OSError as exc:
            if tail.fd is not None:
                _try_truncate(tail.fd, tail.size)
            raise _write_error(path, exc, batch.flushed) from exc
        tail.size += len(data)
        batch.flushed += len(batch.lines)
        batch.lines.clear()
        batch.size = 0

    # -- internals: the spool ------------------------------------------------------------------------------

    def _reserve_spool(self) -> None:
        """Preallocate the spool now, while there is space. Without it, a full disk loses records of stops:
        that is logged and reported by ``health()``, but does not stop the log from opening."""
        try:
            self._spool.ensure()
        except OSError as exc:
            logger.error("%s: cannot reserve the audit spool: %s", self._spool.path, exc.strerror or exc)

    def _drain_best_effort(self) -> None:
        if not self._spool.has_entries():
            return
        try:
            self._drain_spool()
        except AuditWriteError as exc:
            self._forget_tail()
            logger.warning("%s: spooled records wait for space: %s", self._spool.path, exc)

    def _drain_spool(self) -> None:
        """Append the spooled entries, in order, then an ``audit.spooled`` record naming them; then zero the
        spool. Entries already in the trail (a drain cut short by a crash or a full disk after some were
        written) are recognised by ``details.spool_id`` on the trail's last record and not written twice."""
        contents = self._spool.read()
        entries = contents.entries
        done = self._last_spool_id_written()
        ids = [e.mac for e in entries]
        if done in ids:
            entries = entries[ids.index(done) + 1 :]
        tail = self._current_tail()
        prepared = [
            dict(e.fields, details=dict(e.fields.get("details") or {}, spooled_at=e.ts, spool_id=e.mac))
            for e in entries
        ]
        if prepared or contents.rejected.strip(b"\n"):
            prepared.append(self._spooled_note(contents, entries, tail.seq))
        if prepared:
            self._write_locked(prepared)
        if contents.rejected.strip(b"\n"):
            logger.error("%s: %d byte(s) after the last valid spooled record were not appended "
                         "(torn or forged); see the audit.spooled record", self._spool.path,
                         len(contents.rejected))  # fmt: skip
        self._spool.clear(contents.used + len(contents.rejected))

    def _spooled_note(self, contents: Any, entries: list[Any], seq: int) -> dict[str, Any]:
        details: dict[str, Any] = {"count": len(entries)}
        if entries:
            details.update(first_seq=seq + 1, last_seq=seq + len(entries), since=entries[0].ts,
                           last_spool_id=entries[-1].mac)  # fmt: skip
        if contents.rejected.strip(b"\n"):
            details.update(rejected_summary(contents.rejected))
            return _prepare(actor=SERVICE_ACTOR, action="audit.spooled", outcome="error",
                            details=dict(details, reason="spool_damaged"))  # fmt: skip
        return _prepare(actor=SERVICE_ACTOR, action="audit.spooled", details=details)

    def _last_spool_id_written(self) -> str | None:
        """``details.spool_id`` (or ``last_spool_id``) of the trail's last record, if it has one."""
        line = self._last_line()
        if line is None:
            return None
        try:
            details = json.loads(line).get("details") or {}
            return details.get("spool_id") or details.get("last_spool_id")
        except (ValueError, AttributeError):
            return None

    def _last_line(self) -> bytes | None:
        for path in reversed(segment_paths(self.audit_dir)):
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    start = _last_newline_before(f.fileno(), size - 1) + 1
                    return os.pread(f.fileno(), size - start, start)
        return None

    def _spool_locked(self, fields: dict[str, Any], cause: AuditWriteError) -> Spooled:
        try:
            spooled = self._spool.add(fields)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise AuditWriteError(
                cause.errno or errno.EIO,
                f"{cause}; and the record could not be spooled either ({self._spool.path}: {why})",
            ) from exc
        logger.error("%s: the trail cannot be written (%s); %s %s spooled as entry %d", self.audit_dir,
                     cause, fields["action"], fields.get("target") or "", spooled.n)  # fmt: skip
        return spooled

    # -- internals: checkpoints ----------------------------------------------------------------------------

    def _checkpoint_fd(self) -> int:
        if self._cp_fd is None:
            path = self._checkpoints_path
            created = not path.exists()
            self._cp_fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            if created:
                keys.fsync_dir(self.audit_dir)
        return self._cp_fd

    def _refresh_checkpoint_state(self) -> None:
        """When and where the last checkpoint was, re-read only if another process wrote one since."""
        path = self._checkpoints_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cp = _CheckpointState()
            return
        if (st.st_ino, st.st_size) == (self._cp.ino, self._cp.size):
            return
        if self._cp_fd is not None and os.fstat(self._cp_fd).st_ino != st.st_ino:
            os.close(self._cp_fd)  # the file was replaced; follow the name
            self._cp_fd = None
        fd = self._checkpoint_fd()
        size = _cut_torn_tail(fd, path)
        state = _CheckpointState(ino=st.st_ino, size=size)
        if size:
            start = _last_newline_before(fd, size - 1) + 1
            try:
                last = json.loads(os.pread(fd, size - start, start))
                state.seq = int(last["seq"])
                state.time = datetime.fromisoformat(last["ts"]).timestamp()
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: last checkpoint is unreadable; writing a new one", path)
        self._cp = state

    def _write_checkpoint(self, tail: _Tail, reason: str, raise_errors: bool = False) -> bytes | None:
        """Sign and store a checkpoint of the (durable) tail. Failure does not fail the append that
        triggered it: the record is already safe, and the next append tries again."""
        if tail.seq == 0 or tail.mac is None:
            return None
        line = make_checkpoint(
            self._signing_key,
            seq=tail.seq,
            mac=tail.mac,
            segment=segment_name(tail.index),
            segment_bytes=tail.size,
            reason=reason,
        )
        path = self._checkpoints_path
        try:
            self._refresh_checkpoint_state()
            fd = self._checkpoint_fd()
            try:
                _write_all(fd, line + b"\n")
                _fdatasync(fd)
            except OSError:
                _try_truncate(fd, self._cp.size)
                raise
        except OSError as exc:
            self._cp = _CheckpointState()
            if raise_errors:
                raise _write_error(path, exc, 0) from exc
            logger.warning("%s: could not write checkpoint at seq %d: %s", path, tail.seq, exc.strerror)
            return None
        st = os.fstat(fd)
        self._cp = _CheckpointState(ino=st.st_ino, size=st.st_size, seq=tail.seq, time=_now())
        self._copy_checkpoint(line)
        return line

    def _copy_checkpoint(self, line: bytes) -> None:
        """The copies that survive a rollback of the audit directory. Best effort: a dead mirror must not
        stop the enclave from recording, but it is logged, because it silently widens what is undetectable."""
        if self.checkpoint_mirror is not None:
            try:
                _append_to_mirror(self.checkpoint_mirror, line)
            except OSError as exc:
                logger.warning("%s: could not mirror checkpoint: %s", self.checkpoint_mirror, exc)
        if self.syslog:
            if not _is_socket(SYSLOG_SOCKET):  # libc's syslog() drops messages silently without it
                logger.warning("%s: no syslog socket; checkpoint not sent to syslog", SYSLOG_SOCKET)
                return
            import syslog

            syslog.openlog("enclave-audit", syslog.LOG_PID, syslog.LOG_AUTH)
            syslog.syslog(syslog.LOG_NOTICE, "checkpoint " + line.decode("ascii"))


# -- module helpers ----------------------------------------------------------------------------------------


def witness_from_env() -> str | None:
    """The witness file named by the environment, if any."""
    return os.environ.get(WITNESS_ENV) or os.environ.get(MIRROR_ENV) or None


def syslog_from_env() -> bool:
    value = os.environ.get(SYSLOG_ENV, "auto").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return _is_socket(SYSLOG_SOCKET)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class AuditHealth:
    """What ``enclave doctor`` needs to warn before a full disk costs records: free space under the audit
    directory, and how much of the reserved spool is used (anything in it waits for space)."""

    audit_dir: str
    free_bytes: int
    total_bytes: int
    spool_present: bool
    spool_capacity: int
    spool_used: int
    spool_pending: int

    @classmethod
    def of(cls, audit_dir: str | os.PathLike[str]) -> AuditHealth:
        from audit.spool import spool_usage

        path = Path(audit_dir)
        st = os.statvfs(path if path.exists() else path.parent)
        present, capacity, used, pending = spool_usage(path)
        return cls(os.fspath(path), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize,
                   present, capacity, used, pending)  # fmt: skip

    def problems(self, min_free_bytes: int) -> list[str]:
        """Sentences for the doctor; empty when all is well."""
        out = []
        if self.free_bytes < min_free_bytes:
            out.append(f"{self.audit_dir}: only {self.free_bytes // 1024 // 1024} MiB free (the site minimum is "
                       f"{min_free_bytes // 1024 // 1024} MiB); audit records will be refused or spooled")  # fmt: skip
        if not self.spool_present:
            out.append(f"{self.audit_dir}/{SPOOL_FILE}: missing; a full disk would lose records of stops")
        elif self.spool_pending:
            out.append(f"{self.audit_dir}/{SPOOL_FILE}: {self.spool_pending} record(s) spooled "
                       f"({self.spool_used} of {self.spool_capacity} bytes) wait for space in the trail")  # fmt: skip
        return out


def health(state_dir: str | os.PathLike[str]) -> AuditHealth:
    """``AuditHealth`` of the enclave in ``state_dir`` (its ``audit`` directory); needs no key."""
    return AuditHealth.of(Path(state_dir) / "audit")


def _prepare(
    *,
    actor: str,
    action: str,
    project: str | None = None,
    target: str | None = None,
    outcome: str = "ok",
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate an entry and return its fields (without seq, prev, ts). Raises AuditRecordError."""
    if details is None:
        details = {}
    if not isinstance(details, Mapping):
        raise AuditRecordError(
            f"audit record {action}: details: must be a mapping, not {type(details).__name__}"
        )
    _check_name("actor", actor, action, required=True)
    _check_name("project", project, action)
    _check_name("target", target, action)
    check_entry(action, outcome, project, target, details)
    return {
        "v": FORMAT_VERSION,
        "vocab": VOCABULARY_VERSION,
        "actor": actor,
        "action": action,
        "project": project,
        "target": target,
        "outcome": outcome,
        "details": dict(details),
    }


def _check_name(name: str, value: object, action: str, required: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value or len(value) > 512 or not value.isprintable():
        raise AuditRecordError(f"audit record {action}: {name}: must be a non-empty printable string")


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _has_records(audit_dir: Path) -> bool:
    return any(path.stat().st_size for path in segment_paths(audit_dir))


def _create_segment(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        keys.fsync_dir(
            Path(path).parent
        )  # the new name must be durable before a record in it is acknowledged
    except BaseException:
        os.close(fd)  # the empty file stays; the next writer continues in it
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _try_truncate(fd: int, size: int) -> None:
    """Cut off a failed write. If even this fails, the next open or append cuts the torn tail."""
    try:
        os.ftruncate(fd, size)
        _fdatasync(fd)
    except OSError:
        pass


def _write_error(path: str | Path, exc: OSError, written: int) -> AuditWriteError:
    what = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    done = f"; {written} earlier record(s) of this batch were written" if written else ""
    return AuditWriteError(
        exc.errno or errno.EIO, f"{path}: cannot write audit record: {what}; the record was not written{done}"
    )


def _last_newline_before(fd: int, end: int) -> int:
    """Offset of the last ``\\n`` before ``end`` in the file, or -1."""
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        pos = start
    return -1


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Cut off an incomplete last line (an append or checkpoint interrupted by a crash: never
    acknowledged, because acknowledgement comes after the fsync of a complete line). Returns the size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep = _last_newline_before(fd, size) + 1
    os.ftruncate(fd, keep)
    _fdatasync(fd)
    logger.warning(
        "%s: cut off an incomplete last line (%d bytes) left by an interrupted write", path, size - keep
    )
    return keep


def _first_record_day(fd: int, path: Path) -> str | None:
    end = _first_newline(fd)
    try:
        return str(json.loads(os.pread(fd, end, 0))["ts"])[:10]
    except (ValueError, KeyError, TypeError):
        logger.warning("%s: first record is unreadable; rotating by day is off for this segment", path)
        return None


def _first_newline(fd: int) -> int:
    pos = 0
    while True:
        chunk = os.pread(fd, _CHUNK, pos)
        found = chunk.find(b"\n")
        if found >= 0 or not chunk:
            return pos + max(found, 0)
        pos += len(chunk)


def _append_to_mirror(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        size = os.fstat(fd).st_size
        # A mirror on flaky storage may hold a torn line: start on a fresh line rather than join it.
        sep = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        _write_all(fd, sep + line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)

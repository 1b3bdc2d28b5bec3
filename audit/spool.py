"""The reserved spool: where a record that takes access away goes when the trail cannot be written.

A stop, a cull, a revocation, a logout or an enforcement must happen even on a full disk, and its record must
not be lost. ``spool.bin`` is preallocated (written with zeros and fsynced) when the log is opened, so
writing into it later needs no new disk blocks. A spooled entry is one line, written in place over the zeros
with one ``pwrite`` and ``fdatasync``; the end of the used part is the first NUL byte. The next append that
can write the trail first appends the spooled entries, in order, then an ``audit.spooled`` record, and then
zeroes the spool.

A spool line is the canonical JSON (audit/chain.py) of ``{"entry", "mac", "n", "prev", "ts"}``: ``entry``
holds the record's fields as ``append()`` would have written them (``v``, ``vocab``, ``actor``, ``action``,
``project``, ``target``, ``outcome``, ``details``), ``n`` counts from 1, ``prev`` is the ``mac`` of the line
before (null for n 1), ``ts`` is when it was spooled, and ``mac`` is the HMAC-SHA256, under the audit MAC key,
of the canonical JSON of the other four fields. Reading stops at the first line that is not the next link
of that chain: a line forged without the key, or the remains of an older, half-zeroed generation.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.chain import canonical, mac_of, utc_timestamp

SPOOL_FILE = "spool.bin"
DEFAULT_SPOOL_BYTES = 1024 * 1024
"""About 2,000 stop records: hours of culls and logouts on a full disk."""
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SpoolEntry:
    n: int
    mac: str
    ts: str
    fields: dict[str, Any]
    """The record fields (without seq, prev, ts, mac), as append() would have written them."""


@dataclass(frozen=True)
class Spooled:
    """What ``AuditLog.append_or_spool`` returns when the trail could not be written: the record is
    durable in the spool and will be appended to the trail, in order, when space returns."""

    spool_id: str
    n: int
    ts: str
    action: str
    spooled: bool = True


@dataclass(frozen=True)
class SpoolContents:
    entries: list[SpoolEntry]
    used: int
    """Bytes up to the end of the last valid line."""
    rejected: bytes
    """Non-zero bytes after the valid lines: a torn line from a crash, or a line that is not the next link
    (forged, edited, or left over from an older generation)."""


class Spool:
    """The spool file of one audit directory. Callers hold the writers' lock."""

    def __init__(self, path: Path, mac_key: bytes, capacity: int = DEFAULT_SPOOL_BYTES) -> None:
        self.path = path
        self._key = mac_key
        self.capacity = capacity

    def ensure(self) -> None:
        """Create and preallocate the spool if it is missing or short. Raises OSError (e.g. ENOSPC)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = -1
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a preallocation cut short by a crash (we hold the writers' lock)
        if size >= self.capacity:
            return
        if size > 0 and self.read().entries:
            return  # a short spool that holds records: drain it first, never overwrite it
        _preallocate(self.path, self.capacity)

    def read(self) -> SpoolContents:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return SpoolContents([], 0, b"")
        end = data.find(b"\0")
        data = data if end < 0 else data[:end]
        entries: list[SpoolEntry] = []
        used = 0
        prev: str | None = None
        for line in data.split(b"\n")[:-1]:
            entry = self._check(line, len(entries) + 1, prev)
            if entry is None:
                break
            entries.append(entry)
            used += len(line) + 1
            prev = entry.mac
        return SpoolContents(entries, used, data[used:])

    def has_entries(self) -> bool:
        """Cheap check, once per append: is the first byte a record?"""
        try:
            with open(self.path, "rb") as f:
                return f.read(1) not in (b"", b"\0")
        except FileNotFoundError:
            return False

    def add(self, fields: Mapping[str, Any]) -> Spooled:
        """Write one entry durably. Raises OSError if the spool is missing or full."""
        contents = self.read()
        n = len(contents.entries) + 1
        ts = utc_timestamp()
        body: dict[str, Any] = {
            "entry": dict(fields),
            "n": n,
            "prev": contents.entries[-1].mac if contents.entries else None,
            "ts": ts,
        }
        mac = mac_of(self._key, canonical(body))
        line = canonical(dict(body, mac=mac)) + b"\n"
        if contents.used + len(line) >= self.capacity:  # keep one NUL after the last line
            raise OSError(errno.ENOSPC, f"the spool is full ({contents.used} of {self.capacity} bytes used)")
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)  # no O_CREAT: a missing spool is no spool
        try:
            _pwrite_all(fd, line, contents.used)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return Spooled(spool_id=mac, n=n, ts=ts, action=str(fields["action"]))

    def clear(self, used: int) -> None:
        """Zero the used part in place (no new blocks needed). A crash midway leaves either zeros first,
        which read as empty, or lines whose chain the next reader refuses past the first zeroed one."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for start in range(0, used, _CHUNK):
                _pwrite_all(fd, bytes(min(_CHUNK, used - start)), start)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _check(self, line: bytes, n: int, prev: str | None) -> SpoolEntry | None:
        try:
            obj = json.loads(line)
            mac = obj.pop("mac")
            ok = (
                set(obj) == {"entry", "n", "prev", "ts"}
                and obj["n"] == n
                and obj["prev"] == prev
                and isinstance(obj["entry"], dict)
                and hmac.compare_digest(mac_of(self._key, canonical(obj)), str(mac))
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return SpoolEntry(n=n, mac=mac, ts=obj["ts"], fields=obj["entry"]) if ok else None


def rejected_summary(rejected: bytes) -> dict[str, Any]:
    """How a spool's unusable bytes are described in the ``audit.spooled`` record: size and digest only,
    because they may be an attacker's text."""
    return {"rejected_bytes": len(rejected), "rejected_sha256": hashlib.sha256(rejected).hexdigest()}


def spool_usage(audit_dir: Path) -> tuple[bool, int, int, int]:
    """(present, capacity, used bytes, pending entries), without the key: counts lines, checks nothing."""
    path = audit_dir / SPOOL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False, 0, 0, 0
    end = data.find(b"\0")
    used = data if end < 0 else data[:end]
    return True, len(data), len(used), used.count(b"\n")


def _preallocate(path: Path, capacity: int) -> None:
    """Write real zeros (not fallocate, whose unwritten extents may need metadata blocks when first
    written), fsync, then rename into place, so a crash never leaves a short spool under the name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        for start in range(0, capacity, _CHUNK):
            _pwrite_all(fd, bytes(min(_CHUNK, capacity - start)), start)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written

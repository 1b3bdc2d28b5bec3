"""Repeated refusals from one source become one record per window, with a count.

A hostile container can be refused hundreds of times a second. Writing each refusal in full would let it
flood the trail (and the disk) with text it chose; dropping the repeats would hide the attack. So the first
refusal of a kind from a source in a window is recorded at once, in full; the rest of that window are only
counted, and when the window closes one summary record carries the count (``details.repeated``) and the
window's bounds. Text that an attacker chose is clipped and escaped (``clip``) before it reaches a record.

    refusals = RefusalAggregator(log, window=60)
    refusals.refuse(actor="alice", source="alice/demo-cardio", action="sidedoor.refused",
                    reason="files-download", project="demo-cardio", details={"route": clip(path)})
    ...
    refusals.flush_due()     # from a timer: writes the summaries of windows that have closed
    refusals.flush_all()     # at shutdown

A record that cannot be written (full disk) is kept and counted, not lost: the next flush tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("enclave.audit.aggregate")

CLIP_LIMIT = 200
OVERFLOW_SOURCE = "*many-sources*"


class _Appender(Protocol):
    def append(self, **entry: Any) -> Any: ...


def clip(value: object, limit: int = CLIP_LIMIT) -> str:
    """Attacker-chosen text made safe for a record: every non-printable character written as an escape
    (``\\u200b``, ``\\n``), at most ``limit`` characters, with ``…[+N]`` saying how many were cut."""
    text = value if isinstance(value, str) else repr(value)
    escaped = "".join(ch if ch.isprintable() and ch != "\\" else _escape(ch) for ch in text[: limit * 2])
    cut = len(text) - len(text[: limit * 2]) + max(0, len(escaped) - limit)
    return escaped[:limit] + (f"…[+{cut}]" if cut > 0 else "")


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@dataclass
class _Window:
    opened: float
    opened_wall: float
    entry: dict[str, Any]
    repeated: int = 0
    unwritten: list[dict[str, Any]] = field(default_factory=list)


class RefusalAggregator:
    """One full record for the first refusal of (action, source, reason, project) in a window, then a count.

    ``source`` is who the repeats come from (a user's server, a user, an address); it defaults to the
    actor. Thread-safe. Holds at most ``max_keys`` open windows: past that, new sources share one overflow
    window per action, so a spray of fake sources still cannot grow memory or the trail without bound.
    """

    def __init__(
        self,
        log: _Appender,
        *,
        window: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError("window and max_keys must be positive")
        self.log, self.window, self.max_keys = log, window, max_keys
        self._clock, self._wall = clock, wallclock
        self._windows: dict[tuple[str, ...], _Window] = {}
        self._lock = threading.Lock()

    def refuse(
        self,
        *,
        actor: str,
        action: str,
        reason: str,
        source: str | None = None,
        project: str | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Count one refusal. Returns True if it was written in full now, False if only counted."""
        entry = {
            "actor": clip(actor, 128),
            "action": action,
            "project": project,
            "target": target,
            "outcome": "denied",
            "details": {**(details or {}), "reason": reason},
        }
        with self._lock:
            now = self._clock()
            key = self._key(action, clip(source or actor, 128), reason, project, now)
            current = self._windows.get(key)
            if current is not None and now - current.opened < self.window:
                current.repeated += 1
                return False
            if current is not None:
                self._close(key, current)
            held = self._windows.pop(key, None)  # still there only if a full disk held records back
            fresh = _Window(now, self._wall(), entry, unwritten=held.unwritten if held else [])
            self._windows[key] = fresh
            if fresh.unwritten:  # keep the trail in order: this one waits behind the held-back ones
                fresh.unwritten.append(entry)
                return False
            return self._write(fresh, entry)

    def flush_due(self) -> int:
        """Write the summary of every window that has closed. Returns how many records were written."""
        with self._lock:
            now = self._clock()
            due = [k for k, w in self._windows.items() if now - w.opened >= self.window]
            return sum(self._close(key, self._windows[key]) for key in due)

    def flush_all(self) -> int:
        """Write every open window's summary now (at shutdown)."""
        with self._lock:
            return sum(self._close(key, w) for key, w in list(self._windows.items()))

    def pending(self) -> int:
        """Refusals counted but not yet on the trail (for tests and the doctor)."""
        with self._lock:
            return sum(w.repeated + len(w.unwritten) for w in self._windows.values())

    # -- internals -------------------------------------------------------------------------------------

    def _key(self, action: str, source: str, reason: str, project: str | None, now: float) -> tuple[str, ...]:
        key = (action, source, reason, project or "")
        if key in self._windows or len(self._windows) < self.max_keys:
            return key
        for old in [k for k, w in self._windows.items() if now - w.opened >= self.window]:
            self._close(old, self._windows[old])
        if len(self._windows) < self.max_keys:
            return key
        return (action, OVERFLOW_SOURCE, "many", "")

    def _close(self, key: tuple[str, ...], window: _Window) -> int:
        """Write the window's summary (and anything a full disk held back); drop it if all was written."""
        written = 0
        if window.repeated:
            summary = dict(window.entry)
            summary["details"] = {
                **window.entry["details"],
                "repeated": window.repeated,
                "window_start": _iso(window.opened_wall),
                "window_end": _iso(window.opened_wall + self.window),
                "aggregated": True,
            }
            if key[1] == OVERFLOW_SOURCE:
                summary["details"]["reason"] = "many"
            window.unwritten.append(summary)
            window.repeated = 0
        while window.unwritten:
            if not self._append(window.unwritten[0]):
                return written  # keep the window: its records are retried on the next flush
            window.unwritten.pop(0)
            written += 1
        self._windows.pop(key, None)
        return written

    def _write(self, window: _Window, entry: dict[str, Any]) -> bool:
        if self._append(entry):
            return True
        window.unwritten.append(entry)
        return False

    def _append(self, entry: dict[str, Any]) -> bool:
        try:
            self.log.append(**entry)
        except OSError as exc:  # full disk or I/O error: keep it for the next flush, do not lose it
            log.warning("audit: could not record %s yet (%s); kept for the next flush", entry["action"], exc)
            return False
        return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

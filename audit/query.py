"""Reading the log back: ``AuditLog.records()`` and ``enclave audit show``. Reading needs no key and
checks nothing; ``enclave audit verify`` is what says whether the records can be trusted."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit.chain import segment_paths, utc_timestamp
from audit.errors import AuditIntegrityError, AuditQueryError

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class RecordFilter:
    """Which records to show. ``since`` is inclusive and ``until`` exclusive, both as UTC timestamps in the
    log's fixed-width format, so that they compare as strings."""

    since: str | None = None
    until: str | None = None
    actor: str | None = None
    project: str | None = None
    action: str | None = None
    outcome: str | None = None

    @classmethod
    def build(
        cls,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        actor: str | None = None,
        project: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> RecordFilter:
        return cls(
            since=parse_when(since, "since") if since is not None else None,
            until=parse_when(until, "until", end_of_day=True) if until is not None else None,
            actor=actor,
            project=project,
            action=action,
            outcome=outcome,
        )

    def matches(self, record: dict[str, Any]) -> bool:
        ts = record.get("ts", "")
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts >= self.until:
            return False
        for name in ("actor", "project", "outcome"):
            wanted = getattr(self, name)
            if wanted is not None and record.get(name) != wanted:
                return False
        return self.action is None or fnmatch.fnmatchcase(str(record.get("action")), self.action)


def parse_when(
    value: datetime | str, name: str, end_of_day: bool = False, now: datetime | None = None
) -> str:
    """A time for a filter: a datetime; ``30m``/``24h``/``7d`` ago; a date (the whole day: midnight UTC for
    ``since``, the next midnight for ``until``); or an ISO 8601 time, UTC if it has no offset."""
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        return utc_timestamp(when)
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return utc_timestamp((now or datetime.now(UTC)) - delta)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise AuditQueryError(
            f"--{name}: {value!r} is not a time; use e.g. 2025-11-24, 2025-11-24T09:00, 2025-11-24T09:00+09:00 "
            "or 30m / 24h / 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if end_of_day and len(text) == 10:  # a date alone means the whole of that day
        when += timedelta(days=1)
    return utc_timestamp(when)


def read_records(audit_dir: Path, flt: RecordFilter) -> Iterator[dict[str, Any]]:
    """Records in log order that match ``flt``. An incomplete last line (an interrupted append, never
    acknowledged) is skipped; any other unreadable line raises, naming the segment and line."""
    for path in segment_paths(audit_dir):
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    raise AuditIntegrityError(
                        f"{path}:{number}: not an audit record; run 'enclave audit verify'"
                    ) from None
                if flt.matches(record):
                    yield record

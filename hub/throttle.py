"""Login throttling: a growing delay after failed logins, and a temporary lockout, per user and per source.

Counted separately for the username tried and for the address it came from, so that guessing one account
from many addresses, and many accounts from one address, both slow down and stop. Pure bookkeeping with an
injectable clock: the authenticator (hub/auth.py) sleeps asynchronously and writes the audit records.

Memory is bounded: at most ``max_tracked`` users and as many sources are remembered, oldest first out, so a
spray of invented names or addresses cannot grow the hub without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThrottleSettings:
    window: float = 900.0
    """Failures older than this are forgotten."""
    free_failures: int = 3
    """Failures in the window before any delay."""
    base_delay: float = 1.0
    max_delay: float = 8.0
    user_lockout_after: int = 10
    source_lockout_after: int = 50
    lockout_seconds: float = 900.0
    max_tracked: int = 10_000


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class _Table:
    """Failures of one kind of key (users, or sources), least recently touched first."""

    def __init__(self, settings: ThrottleSettings, lockout_after: int):
        self.settings, self.lockout_after = settings, lockout_after
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def get(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            return None
        if record.locked_until and record.locked_until <= now:  # a lockout ended: the count starts again
            record.failures.clear()
            record.locked_until = 0.0
        while record.failures and now - record.failures[0] > self.settings.window:
            record.failures.popleft()
        if not record.failures and record.locked_until <= now:
            del self._records[key]
            return None
        return record

    def fail(self, key: str, now: float) -> bool:
        """Count one failure; True if it starts a lockout."""
        record = self.get(key, now) or _Record()
        self._records[key] = record
        self._records.move_to_end(key)
        record.failures.append(now)
        while len(record.failures) > self.lockout_after:  # the count past the lockout is not needed
            record.failures.popleft()
        while len(self._records) > self.settings.max_tracked:
            self._records.popitem(last=False)
        if len(record.failures) >= self.lockout_after and record.locked_until <= now:
            record.locked_until = now + self.settings.lockout_seconds
            return True
        return False

    def locked_for(self, key: str, now: float) -> float:
        record = self.get(key, now)
        return max(0.0, record.locked_until - now) if record else 0.0

    def failures(self, key: str, now: float) -> int:
        record = self.get(key, now)
        return len(record.failures) if record else 0

    def clear(self, key: str) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)


class LoginThrottle:
    def __init__(self, settings: ThrottleSettings, clock: Callable[[], float] = time.monotonic):
        self.settings, self._clock = settings, clock
        self.users = _Table(settings, settings.user_lockout_after)
        self.sources = _Table(settings, settings.source_lockout_after)

    def locked(self, user: str, source: str) -> tuple[str, float] | None:
        """("user" or "source", seconds left) while either is locked out, else None."""
        now = self._clock()
        for kind, table, key in (("user", self.users, user), ("source", self.sources, source)):
            left = table.locked_for(key, now)
            if left > 0:
                return kind, left
        return None

    def delay(self, user: str, source: str) -> float:
        """How long to hold the answer to a failed attempt: doubling past the free failures, capped."""
        now = self._clock()
        failures = max(self.users.failures(user, now), self.sources.failures(source, now))
        over = failures - self.settings.free_failures
        if over <= 0:
            return 0.0
        return min(self.settings.max_delay, self.settings.base_delay * 2 ** min(over - 1, 16))

    def failed(self, user: str, source: str) -> list[str]:
        """Count a failed attempt; returns which lockouts ("user", "source") it started."""
        now = self._clock()
        started = []
        if self.users.fail(user, now):
            started.append("user")
        if self.sources.fail(source, now):
            started.append("source")
        return started

    def succeeded(self, user: str) -> None:
        """A correct password outside any lockout: the user's count starts again (the source's does not)."""
        self.users.clear(user)

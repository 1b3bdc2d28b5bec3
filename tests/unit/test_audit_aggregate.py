"""Refusal aggregation: a flood of refusals becomes a bounded number of records that still carry counts."""

from __future__ import annotations

import pytest

from audit import AuditLog
from audit.aggregate import OVERFLOW_SOURCE, RefusalAggregator, clip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FailingLog:
    """An audit log on a full disk, until ``room`` is set."""

    def __init__(self) -> None:
        self.room = False
        self.records: list[dict] = []

    def append(self, **entry):
        if not self.room:
            raise OSError(28, "No space left on device")
        self.records.append(entry)
        return entry


@pytest.fixture
def trail(tmp_path):
    with AuditLog.open(tmp_path) as log:
        yield log


def refuse(agg: RefusalAggregator, n: int, source: str = "alice/demo-cardio", reason: str = "route") -> None:
    for i in range(n):
        agg.refuse(
            actor="alice",
            source=source,
            action="sidedoor.refused",
            reason=reason,
            project="demo-cardio",
            details={"route": clip(f"/files/x{i}")},
        )


def test_a_flood_is_one_full_record_then_one_summary_with_the_count(trail):
    clock = Clock()
    agg = RefusalAggregator(trail, window=60, clock=clock)
    refuse(agg, 500)
    assert len(list(trail.records())) == 1
    assert agg.pending() == 499
    clock.now += 61
    assert agg.flush_due() == 1
    first, summary = list(trail.records())
    assert first["details"]["route"] == "/files/x0" and "repeated" not in first["details"]
    assert summary["details"]["repeated"] == 499 and summary["details"]["aggregated"] is True
    assert summary["outcome"] == "denied" and summary["actor"] == "alice"
    assert trail.verify().ok


def test_windows_are_per_source_and_reason(trail):
    clock = Clock()
    agg = RefusalAggregator(trail, window=60, clock=clock)
    refuse(agg, 3, source="alice/demo-cardio")
    refuse(agg, 3, source="bob/demo-oncology")
    refuse(agg, 3, source="alice/demo-cardio", reason="other")
    assert len(list(trail.records())) == 3
    assert agg.flush_all() == 3
    assert sorted(r["details"].get("repeated", 0) for r in trail.records()) == [0, 0, 0, 2, 2, 2]


def test_a_new_window_opens_after_the_old_one_closes(trail):
    clock = Clock()
    agg = RefusalAggregator(trail, window=10, clock=clock)
    refuse(agg, 5)
    clock.now += 11
    refuse(agg, 1)  # closes the old window (summary) and writes a fresh full record
    records = list(trail.records())
    assert [r["details"].get("repeated") for r in records] == [None, 4, None]


def test_a_spray_of_sources_stays_bounded(trail):
    clock = Clock()
    agg = RefusalAggregator(trail, window=60, max_keys=10, clock=clock)
    for i in range(1000):
        refuse(agg, 1, source=f"fake-{i}")
    assert len(list(trail.records())) <= 11
    agg.flush_all()
    records = list(trail.records())
    overflow = [r for r in records if r["details"].get("reason") == "many"]
    assert overflow and overflow[-1]["details"]["repeated"] == 1000 - 11
    assert OVERFLOW_SOURCE not in {r["actor"] for r in records}


def test_a_full_disk_loses_no_refusal_and_keeps_order():
    clock = Clock()
    log = FailingLog()
    agg = RefusalAggregator(log, window=5, clock=clock)
    refuse(agg, 4, source="alice")  # the first full record is held back, three are counted
    clock.now += 6
    refuse(agg, 1, source="alice")  # window closed while the disk is still full
    assert agg.flush_due() == 0 and log.records == []
    log.room = True
    clock.now += 6
    agg.flush_all()
    assert [r["details"].get("repeated") for r in log.records] == [None, 3, None]
    assert agg.pending() == 0


def test_clip_escapes_invisible_and_control_characters_and_bounds_length():
    assert clip("alice\u200b") == "alice\\u200b"
    assert clip("a\nb\\c") == "a\\x0ab\\\\c"
    long = clip("x" * 5000)
    assert long.startswith("x" * 200) and long.endswith("…[+4800]") and long.isprintable()
    assert clip("\U000e0041tag").startswith("\\U000e0041")


def test_clipped_actor_is_accepted_by_the_trail(trail):
    agg = RefusalAggregator(trail, window=60)
    agg.refuse(actor="alice\u200b\u202e", action="auth.login", reason="bad_username")
    (record,) = trail.records()
    assert record["actor"] == "alice\\u200b\\u202e"

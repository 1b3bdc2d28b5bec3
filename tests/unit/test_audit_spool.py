"""The reserved spool (issue 19): a record that takes access away survives a full disk, lands in the trail in
order once space returns, and cannot be forged into the trail. Full disk simulated here; the real one, on a
loop-mounted filesystem, is tests/integration/test_audit_full_disk.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import audit
from audit import AuditLog, AuditRecordError, AuditWriteError, Spooled

IMAGE = "sha256:" + "ab" * 32


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def stop(log: AuditLog, user: str = "alice"):
    return log.append_or_spool(
        actor=user,
        action="server.stop",
        project="demo-cardio",
        target="demo-cardio",
        details={"image_digest": IMAGE},
    )


def records(state: Path) -> list[dict]:
    return [
        json.loads(line) for p in sorted((state / "audit").glob("audit-*.jsonl")) for line in p.open("rb")
    ]


class FullDisk:
    """os.write on the trail fails with ENOSPC; the spool (os.pwrite into preallocated blocks) still works,
    as on a real full filesystem."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(os, "write", self._full)

    @staticmethod
    def _full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def end(self) -> None:
        self.monkeypatch.undo()


def test_the_spool_is_preallocated_when_the_trail_is_created_and_when_an_old_one_is_opened(
    state: Path,
) -> None:
    with AuditLog.open(state, spool_bytes=64 * 1024) as log:
        log.append(actor="alice", action="auth.login")
    spool = state / "audit" / "spool.bin"
    assert spool.stat().st_size == 64 * 1024 and spool.read_bytes() == bytes(64 * 1024)
    assert spool.stat().st_blocks * 512 >= 64 * 1024, "blocks must be allocated, not a sparse file"
    spool.unlink()  # a trail from before the spool existed
    with AuditLog.open(state, spool_bytes=64 * 1024):
        assert spool.stat().st_size == 64 * 1024


def test_a_stop_on_a_full_disk_is_spooled_and_lands_in_order_when_space_returns(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditLog.open(state) as log:
        log.append(actor="alice", action="auth.login")
        disk = FullDisk(monkeypatch)
        with pytest.raises(AuditWriteError, match="no space left on device"):
            log.append(actor="bob", action="auth.login")  # granting access is refused, not spooled
        first = stop(log, "alice")
        second = log.append_or_spool(
            actor="service:culler",
            action="server.cull",
            project="demo-cardio",
            target="demo-cardio",
            details={"image_digest": IMAGE},
        )
        assert isinstance(first, Spooled) and first.spooled and (first.n, second.n) == (1, 2)
        assert audit.health(state).spool_pending == 2
        assert "2 record(s) spooled on a full disk wait" in log.verify().warnings[-1]
        disk.end()
        after = log.append(actor="carol", action="auth.login")
    trail = records(state)
    assert [(r["seq"], r["actor"], r["action"]) for r in trail] == [
        (1, "alice", "auth.login"),
        (2, "alice", "server.stop"),
        (3, "service:culler", "server.cull"),
        (4, "service:audit", "audit.spooled"),
        (5, "carol", "auth.login"),
    ]
    assert after["seq"] == 5
    assert trail[1]["details"]["spooled_at"] == first.ts and trail[1]["details"]["spool_id"] == first.spool_id
    assert trail[3]["details"] | {"since": None} == {
        "count": 2,
        "first_seq": 2,
        "last_seq": 3,
        "since": None,
        "last_spool_id": second.spool_id,
    }
    assert audit.health(state).spool_pending == 0
    with AuditLog.open(state) as log:
        assert log.verify().ok


def test_spooled_records_survive_a_crash_and_are_drained_by_the_next_process(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog.open(state)
    log.append(actor="alice", action="auth.login")
    FullDisk(monkeypatch)
    stop(log)
    monkeypatch.undo()
    del log  # no close, no drain: as if the process died
    with AuditLog.open(state) as reopened:  # opening drains
        assert [r["action"] for r in records(state)] == ["auth.login", "server.stop", "audit.spooled"]
        assert reopened.verify().ok


def test_the_periodic_checkpoint_drains_the_spool_of_a_quiet_log(state: Path, monkeypatch) -> None:
    with AuditLog.open(state) as log:
        log.append(actor="alice", action="auth.login")
        disk = FullDisk(monkeypatch)
        stop(log)
        disk.end()
        assert log.checkpoint()["seq"] == 3
    assert [r["action"] for r in records(state)][-1] == "audit.spooled"


def test_a_drain_cut_short_does_not_write_a_record_twice(state: Path, monkeypatch) -> None:
    with AuditLog.open(state) as log:
        log.append(actor="alice", action="auth.login")
        disk = FullDisk(monkeypatch)
        stop(log, "alice")
        stop(log, "bob")
        disk.end()
    # A drain that wrote the first spooled record and then died before the rest and before zeroing.
    spool = state / "audit" / "spool.bin"
    saved = spool.read_bytes()
    with AuditLog.open(state):
        pass
    trail = (state / "audit" / "audit-00000001.jsonl").read_bytes().splitlines(keepends=True)
    (state / "audit" / "audit-00000001.jsonl").write_bytes(b"".join(trail[:2]))
    (state / "audit" / "checkpoints.jsonl").write_bytes(
        b"".join(
            l
            for l in (state / "audit" / "checkpoints.jsonl").read_bytes().splitlines(keepends=True)
            if json.loads(l)["seq"] <= 2
        )
    )
    spool.write_bytes(saved)
    with AuditLog.open(state) as log:
        assert [(r["actor"], r["action"]) for r in records(state)] == [
            ("alice", "auth.login"),
            ("alice", "server.stop"),
            ("bob", "server.stop"),
            ("service:audit", "audit.spooled"),
        ]
        assert log.verify().ok


def test_a_line_forged_into_the_spool_never_reaches_the_trail(state: Path, monkeypatch) -> None:
    with AuditLog.open(state) as log:
        log.append(actor="alice", action="auth.login")
        disk = FullDisk(monkeypatch)
        stop(log)
        disk.end()
        spool = state / "audit" / "spool.bin"
        data = spool.read_bytes()
        used = data.index(b"\0")
        line = data[:used]
        forged = line.replace(b'"actor":"alice"', b'"actor":"adam_"').replace(b'"n":1', b'"n":2')
        spool.write_bytes(line + forged + data[used + len(forged) :])
        log.append(actor="carol", action="auth.login")
    trail = records(state)
    assert [r["actor"] for r in trail] == ["alice", "alice", "service:audit", "carol"]
    note = trail[2]
    assert (note["outcome"], note["details"]["reason"], note["details"]["count"]) == (
        "error",
        "spool_damaged",
        1,
    )
    assert note["details"]["rejected_bytes"] == len(forged)


def test_when_the_spool_is_full_too_the_caller_is_told(state: Path, monkeypatch) -> None:
    with AuditLog.open(state, spool_bytes=1024) as log:
        log.append(actor="alice", action="auth.login")
        FullDisk(monkeypatch)
        while True:
            try:
                stop(log)
            except AuditWriteError as exc:
                assert "could not be spooled either" in str(exc) and "the spool is full" in str(exc)
                assert exc.errno == errno.ENOSPC
                break


def test_only_actions_that_take_access_away_may_use_the_spool(state: Path) -> None:
    with AuditLog.open(state) as log:
        with pytest.raises(AuditRecordError, match="reserved for actions that take access away"):
            log.append_or_spool(actor="alice", action="auth.login")
        with pytest.raises(AuditRecordError, match="details.image_digest: required"):
            log.append_or_spool(actor="alice", action="server.stop", project="p", target="p")
        record = log.append_or_spool(actor="alice", action="auth.logout")
        assert isinstance(record, dict) and record["seq"] == 1


def test_health_reports_free_space_and_spool_use(state: Path, monkeypatch) -> None:
    with AuditLog.open(state) as log:
        log.append(actor="alice", action="auth.login")
        health = log.health()
        st = os.statvfs(state / "audit")
        assert abs(health.free_bytes - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
        assert (health.spool_present, health.spool_pending) == (True, 0)
        assert health.problems(min_free_bytes=0) == []
        assert "MiB free" in health.problems(min_free_bytes=health.free_bytes + 1)[0]
        disk = FullDisk(monkeypatch)
        stop(log)
        disk.end()
        problems = audit.health(state).problems(min_free_bytes=0)
        assert problems and "1 record(s) spooled" in problems[0]
    (state / "audit" / "spool.bin").unlink()
    assert "missing; a full disk would lose records" in audit.health(state).problems(0)[0]


def test_syslog_is_a_witness_only_where_a_syslog_socket_exists(tmp_path: Path, monkeypatch) -> None:
    import socket

    import audit.log

    monkeypatch.delenv("ENCLAVE_AUDIT_SYSLOG", raising=False)
    monkeypatch.setattr(audit.log, "SYSLOG_SOCKET", str(tmp_path / "log"))
    assert audit.log.syslog_from_env() is False  # no /dev/log, as on these machines and in CI
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "log"))
        assert audit.log.syslog_from_env() is True
        monkeypatch.setenv("ENCLAVE_AUDIT_SYSLOG", "0")
        assert audit.log.syslog_from_env() is False
    monkeypatch.setenv("ENCLAVE_AUDIT_SYSLOG", "1")
    assert audit.log.syslog_from_env() is True


def test_deleting_the_spool_while_records_wait_is_not_detectable(state: Path, monkeypatch) -> None:
    """A limit the README states: spooled records are not checkpointed, so their deletion goes unnoticed."""
    with AuditLog.open(state) as log:
        log.append(actor="alice", action="auth.login")
        disk = FullDisk(monkeypatch)
        stop(log)
        disk.end()
    (state / "audit" / "spool.bin").unlink()
    with AuditLog.open(state) as log:
        assert log.verify().ok and [r["action"] for r in records(state)] == ["auth.login"]

"""AuditLog on real files: appending, the vocabulary, keys, rotation, checkpoints, reading back, full disk."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from audit import (
    AuditKeyError,
    AuditLog,
    AuditQueryError,
    AuditRecordError,
    AuditWriteError,
    UnknownActionError,
)
from audit.chain import canonical
from audit.vocabulary import ACTIONS

IMAGE = "sha256:" + "ab" * 32


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def log(state: Path):
    with AuditLog.open(state, checkpoint_every=5) as opened:
        yield opened


def login(log: AuditLog, n: int, actor: str = "alice") -> list[dict]:
    return [log.append(actor=actor, action="auth.login", details={"i": i}) for i in range(n)]


def segment_lines(state: Path, index: int = 1) -> list[bytes]:
    return (state / "audit" / f"audit-{index:08d}.jsonl").read_bytes().splitlines()


# -- appending -------------------------------------------------------------------------------------------


def test_append_returns_the_stored_record_chained_to_the_previous_one(log: AuditLog, state: Path) -> None:
    first = log.append(actor="alice", action="auth.login")
    second = log.append(
        actor="alice",
        action="server.spawn",
        project="demo-cardio",
        target="demo-cardio",
        details={"image_digest": IMAGE},
    )
    assert (first["seq"], first["prev"]) == (1, None)
    assert (second["seq"], second["prev"]) == (2, first["mac"])
    stored = [json.loads(line) for line in segment_lines(state)]
    assert stored == [first, second]
    assert second["ts"].endswith("Z") and second["outcome"] == "ok" and second["vocab"] >= 1


def test_stored_lines_are_canonical_json_and_pure_ascii(log: AuditLog, state: Path) -> None:
    log.append(actor="alice", action="auth.login", details={"note": '환자 ünïcode \n "quoted"', "x": 1.5})
    line = segment_lines(state)[0]
    assert line == canonical(json.loads(line))
    assert line.isascii()


def test_appended_record_is_durable_on_return(log: AuditLog, state: Path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    log.append(actor="alice", action="auth.logout")
    assert synced, "append returned without syncing the segment"


def test_two_handles_in_one_process_keep_one_chain(state: Path) -> None:
    with AuditLog.open(state) as a, AuditLog.open(state) as b:
        for i in range(10):
            (a if i % 2 else b).append(actor="alice", action="auth.login", details={"i": i})
        assert a.verify().ok and a.verify().records == 10


def test_threads_sharing_one_log_keep_one_chain(log: AuditLog) -> None:
    threads = [threading.Thread(target=login, args=(log, 100, f"t{k}")) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = log.verify()
    assert report.ok, report.summary()
    assert report.records == 400


def test_append_many_writes_a_batch_as_one_chain(log: AuditLog) -> None:
    records = log.append_many(
        [{"actor": "svc", "action": "auth.login", "details": {"i": i}} for i in range(12)]
    )
    assert [r["seq"] for r in records] == list(range(1, 13))
    assert log.verify().ok


# -- the vocabulary ---------------------------------------------------------------------------------------


def size_of(state: Path) -> int:
    return sum(p.stat().st_size for p in (state / "audit").glob("audit-*.jsonl"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"action": "auth.lgoin"},
            "'auth.lgoin' is not in audit vocabulary v2 (audit/vocabulary.py); did you mean auth.login",
        ),
        ({"action": "auth.login", "outcome": "denied"}, "auth.login (denied): details.reason: required"),
        ({"action": "auth.login", "outcome": "maybe"}, "outcome: 'maybe' is not one of denied, error, ok"),
        (
            {"action": "server.spawn", "project": "p", "target": "p"},
            "server.spawn (ok): details.image_digest: required",
        ),
        (
            {"action": "server.spawn", "target": "p", "details": {"image_digest": IMAGE}},
            "server.spawn: project: required",
        ),
        ({"action": "sidedoor.refused", "details": {"route": "files"}}, "outcome: 'ok' is not one of denied"),
        ({"action": "auth.login", "actor": ""}, "actor: must be a non-empty printable string"),
        ({"action": "auth.login", "details": {"when": object()}}, "details: not plain JSON"),
        ({"action": "auth.login", "details": ["x"]}, "details: must be a mapping"),
        ({"action": "auth.login", "details": {"x": float("nan")}}, "details: not plain JSON"),
        ({"action": "auth.login", "details": {"blob": "x" * 70_000}}, "the limit is 65536"),
    ],
)
def test_refused_entries_raise_a_clear_error_and_write_nothing(log, state, entry, message) -> None:
    login(log, 1)
    before = size_of(state)
    with pytest.raises(AuditRecordError) as raised:
        log.append(**{"actor": "alice", **entry})
    assert message in str(raised.value)
    assert size_of(state) == before


def test_unknown_action_is_its_own_error(log: AuditLog) -> None:
    with pytest.raises(UnknownActionError):
        log.append(actor="alice", action="export.smuggle")


def test_a_refused_spawn_needs_a_reason_but_no_image(log: AuditLog) -> None:
    record = log.append(
        actor="mallory",
        action="server.spawn",
        project="demo-cardio",
        target="demo-cardio",
        outcome="denied",
        details={"reason": "not_accredited"},
    )
    assert record["details"] == {"reason": "not_accredited"}


def test_batch_with_one_bad_entry_writes_nothing(log: AuditLog, state: Path) -> None:
    with pytest.raises(UnknownActionError):
        log.append_many([{"actor": "a", "action": "auth.login"}, {"actor": "a", "action": "nope"}])
    assert size_of(state) == 0


def test_readme_documents_every_action() -> None:
    readme = (Path(__file__).resolve().parents[2] / "audit" / "README.md").read_text()
    missing = [name for name in ACTIONS if f"`{name}`" not in readme]
    assert not missing, f"audit/README.md does not document {missing}"


# -- keys -------------------------------------------------------------------------------------------------


def test_keys_are_created_private_and_the_public_key_beside_the_checkpoints(
    log: AuditLog, state: Path
) -> None:
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    for name in ("audit-mac.key", "audit-checkpoint.ed25519"):
        assert stat.S_IMODE((state / "secrets" / name).stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (state / "audit" / "checkpoint-key.pub").read_bytes()
    assert not list((state / "secrets").glob(".*.tmp"))


def test_reopening_keeps_the_keys_and_continues_the_chain(state: Path) -> None:
    with AuditLog.open(state) as first:
        login(first, 3)
    key = (state / "secrets" / "audit-mac.key").read_bytes()
    with AuditLog.open(state) as second:
        assert login(second, 1)[0]["seq"] == 4
        assert second.verify().ok
    assert (state / "secrets" / "audit-mac.key").read_bytes() == key


def test_a_key_readable_by_others_is_refused(log: AuditLog, state: Path) -> None:
    login(log, 1)
    key = state / "secrets" / "audit-mac.key"
    key.chmod(0o644)
    with pytest.raises(AuditKeyError, match=rf"{key}: mode 0644 lets others read it; it must be 0600"):
        AuditLog.open(state)


def test_an_open_secrets_directory_is_refused(log: AuditLog, state: Path) -> None:
    (state / "secrets").chmod(0o755)
    with pytest.raises(AuditKeyError, match="mode 0755 lets others in; it must be 0700"):
        AuditLog.open(state)


def test_a_missing_key_is_not_silently_replaced_once_there_are_records(log: AuditLog, state: Path) -> None:
    login(log, 1)
    (state / "secrets" / "audit-mac.key").unlink()
    with pytest.raises(AuditKeyError, match="audit-mac.key: missing"):
        AuditLog.open(state)


def test_a_malformed_key_is_reported(log: AuditLog, state: Path) -> None:
    login(log, 1)
    (state / "secrets" / "audit-mac.key").write_text("not hex\n")
    with pytest.raises(AuditKeyError, match="audit-mac.key: malformed: expected 64 hex digits"):
        AuditLog.open(state)


def test_a_replaced_public_key_stops_writers(log: AuditLog, state: Path, tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "other"):
        other_pub = (tmp_path / "other" / "audit" / "checkpoint-key.pub").read_bytes()
    (state / "audit" / "checkpoint-key.pub").write_bytes(other_pub)
    with pytest.raises(AuditKeyError, match="does not match the signing key"):
        AuditLog.open(state)


# -- rotation and checkpoints ------------------------------------------------------------------------------


def checkpoints(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "audit" / "checkpoints.jsonl").read_bytes().splitlines()]


def test_checkpoints_every_n_records(log: AuditLog, state: Path) -> None:
    login(log, 16)
    # The first record is checkpointed at once (none was ever written), then every 5.
    assert [(c["seq"], c["reason"]) for c in checkpoints(state)] == [
        (1, "interval"),
        (6, "count"),
        (11, "count"),
        (16, "count"),
    ]


def test_checkpoints_after_t_seconds(state: Path, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("audit.log._now", lambda: clock[0])
    with AuditLog.open(state, checkpoint_every=1000, checkpoint_interval=60) as log:
        login(log, 3)
        clock[0] += 61
        login(log, 1)
    assert [(c["seq"], c["reason"]) for c in checkpoints(state)] == [(1, "interval"), (4, "interval")]


def test_rotation_by_size_chains_across_segments_and_checkpoints(state: Path) -> None:
    with AuditLog.open(state, rotate_bytes=2000) as log:
        records = login(log, 30)
        report = log.verify()
    assert report.ok and report.segments > 2
    first_of_second = json.loads(segment_lines(state, 2)[0])
    last_of_first = json.loads(segment_lines(state, 1)[-1])
    assert first_of_second["prev"] == last_of_first["mac"]
    assert all((state / "audit" / f"audit-{i:08d}.jsonl").stat().st_size <= 2000 for i in (1, 2))
    rotations = [c for c in checkpoints(state) if c["reason"] == "rotation"]
    assert rotations[0] == {**rotations[0], "seq": last_of_first["seq"], "segment": "audit-00000001.jsonl"}
    assert records[-1]["seq"] == 30


def test_rotation_by_utc_day(state: Path, monkeypatch) -> None:
    days = iter(["2025-11-24T23:59:59.000000Z"] * 2 + ["2025-11-25T00:00:01.000000Z"] * 2)
    monkeypatch.setattr("audit.log.utc_timestamp", lambda: next(days))
    with AuditLog.open(state) as log:
        login(log, 4)
        assert log.verify().ok
    assert [json.loads(x)["seq"] for x in segment_lines(state, 1)] == [1, 2]
    assert [json.loads(x)["seq"] for x in segment_lines(state, 2)] == [3, 4]


def test_checkpoints_are_mirrored_to_a_second_path(state: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "elsewhere" / "checkpoints.jsonl"
    mirror.parent.mkdir()
    mirror.write_bytes(b'{"torn')  # a crash on the mirror's storage must not join the next line to it
    with AuditLog.open(state, checkpoint_every=5, checkpoint_mirror=mirror) as log:
        login(log, 11)
        assert log.verify().ok
    lines = mirror.read_bytes().splitlines()
    assert lines[0] == b'{"torn'
    assert [json.loads(x) for x in lines[1:]] == checkpoints(state)


def test_manual_checkpoint(log: AuditLog, state: Path) -> None:
    assert log.checkpoint() is None  # empty log: nothing to sign
    login(log, 2)
    written = log.checkpoint()
    assert written is not None and written["seq"] == 2 and written["reason"] == "manual"
    assert checkpoints(state)[-1] == written


# -- crash repair and full disk ------------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_off_on_open(log: AuditLog, state: Path) -> None:
    login(log, 3)
    segment = state / "audit" / "audit-00000001.jsonl"
    good = segment.read_bytes()
    with open(segment, "ab") as f:
        f.write(b'{"action":"auth.login","actor":"al')
    torn = log.verify()
    assert torn.ok and torn.torn_tail == str(segment) and torn.records == 3
    with AuditLog.open(state) as reopened:
        assert segment.read_bytes() == good
        assert login(reopened, 1)[0]["seq"] == 4
        assert reopened.verify().ok


def test_a_torn_line_left_by_another_process_is_cut_before_appending(log: AuditLog, state: Path) -> None:
    login(log, 2)
    with open(state / "audit" / "audit-00000001.jsonl", "ab") as f:
        f.write(b'{"half a rec')
    assert login(log, 1)[0]["seq"] == 3  # the same handle notices the size changed under the lock
    report = log.verify()
    assert report.ok and report.torn_tail is None


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_on_fsync_raises_and_leaves_the_log_valid(log: AuditLog, state: Path, monkeypatch) -> None:
    login(log, 3)
    before = size_of(state)
    monkeypatch.setattr(os, "fdatasync", enospc)
    with pytest.raises(AuditWriteError) as raised:
        log.append(actor="alice", action="auth.logout")
    message = str(raised.value)
    assert "audit-00000001.jsonl: cannot write audit record: no space left on device" in message
    assert "the record was not written" in message
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert size_of(state) == before
    assert log.verify().ok
    assert log.append(actor="alice", action="auth.logout")["seq"] == 4


def test_full_disk_midway_through_a_write_cuts_the_half_record(
    log: AuditLog, state: Path, monkeypatch
) -> None:
    login(log, 3)
    before = size_of(state)
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        return enospc()

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(AuditWriteError, match="no space left on device"):
        log.append(actor="alice", action="auth.logout")
    monkeypatch.undo()
    assert size_of(state) == before
    assert log.verify().ok


def test_when_even_the_cleanup_fails_the_next_open_repairs(log: AuditLog, state: Path, monkeypatch) -> None:
    login(log, 3)
    real_write = os.write
    monkeypatch.setattr(
        os, "write", lambda fd, data: real_write(fd, bytes(data[:40])) if len(data) > 40 else enospc()
    )
    monkeypatch.setattr(os, "ftruncate", enospc)
    with pytest.raises(AuditWriteError):
        log.append(actor="alice", action="auth.logout")
    monkeypatch.undo()
    report = log.verify()
    assert report.ok and report.torn_tail, "the half record must show as an unacknowledged torn tail"
    with AuditLog.open(state) as reopened:
        assert reopened.verify().torn_tail is None
        assert reopened.append(actor="alice", action="auth.logout")["seq"] == 4
        assert reopened.verify().ok


def test_a_failed_checkpoint_does_not_fail_the_append(state: Path, monkeypatch, caplog) -> None:
    with AuditLog.open(state, checkpoint_every=2) as log:
        login(log, 1)
        real_write = os.write
        monkeypatch.setattr(
            os, "write", lambda fd, data: enospc() if b'"sig":' in bytes(data) else real_write(fd, data)
        )
        record = login(log, 2)[-1]
        assert "could not write checkpoint at seq 3" in caplog.text
        monkeypatch.undo()
        assert record["seq"] == 3
        login(log, 1)  # the next append retries the checkpoint
        assert checkpoints(state)[-1]["seq"] == 4
        assert log.verify().ok


# -- reading back --------------------------------------------------------------------------------------------


def test_records_filters(state: Path, monkeypatch) -> None:
    stamps = iter(f"2025-11-{day:02d}T10:00:00.000000Z" for day in range(20, 26))
    monkeypatch.setattr("audit.log.utc_timestamp", lambda: next(stamps))
    with AuditLog.open(state, rotate_daily=False) as log:
        log.append(actor="alice", action="auth.login")  # 20th
        log.append(actor="alice", action="export.create", project="demo-cardio", target="r1")  # 21st
        log.append(actor="bob", action="export.create", project="demo-oncology", target="r2")  # 22nd
        log.append(
            actor="carol",
            action="export.vote",
            project="demo-cardio",
            target="r1",
            details={"vote": "approve"},
        )
        log.append(
            actor="mallory", action="auth.login", outcome="denied", details={"reason": "not_accredited"}
        )
        log.append(actor="alice", action="auth.logout")  # 25th

        def seqs(**filters) -> list[int]:
            return [r["seq"] for r in log.records(**filters)]

        assert seqs() == [1, 2, 3, 4, 5, 6]
        assert seqs(actor="alice") == [1, 2, 6]
        assert seqs(project="demo-cardio") == [2, 4]
        assert seqs(action="export.*") == [2, 3, 4]
        assert seqs(outcome="denied") == [5]
        assert seqs(since="2025-11-22", until="2025-11-23") == [3, 4]  # a date alone: the whole day
        assert seqs(since="2025-11-22T10:00:00Z", until="2025-11-24T10:00:00+00:00") == [3, 4]
        assert seqs(since="2025-11-22T19:00:01+09:00") == [4, 5, 6]
        with pytest.raises(AuditQueryError, match="--since: 'yesterday' is not a time"):
            list(log.records(since="yesterday"))

"""Attacks on the audit log, each of which verify() must catch and name: where, and what happened.

The log under attack has 20 records, checkpointed after records 1, 6, 11 and 16.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import AuditLog, Reason, VerifyReport
from audit.chain import canonical, seal
from audit.checkpoint import make_checkpoint
from audit.keys import load_signing_key

N = 20


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    with AuditLog.open(state, checkpoint_every=5) as log:
        for i in range(N):
            log.append(actor=f"user{i}", action="auth.login", details={"i": i})
    return state


def segment(state: Path, index: int = 1) -> Path:
    return state / "audit" / f"audit-{index:08d}.jsonl"


def read_lines(state: Path) -> list[bytes]:
    return segment(state).read_bytes().splitlines()


def write_lines(state: Path, lines: list[bytes]) -> None:
    segment(state).write_bytes(b"".join(line + b"\n" for line in lines))


def verify(state: Path, **options) -> VerifyReport:
    with AuditLog.open(state, **options) as log:
        return log.verify()


def assert_caught(report: VerifyReport, reason: Reason, seq: int, at: tuple[Path, int] | None = None) -> None:
    """The report names the reason, the first bad seq and, for a bad line, its segment file and line."""
    assert not report.ok
    assert (report.reason, report.first_bad_seq) == (reason, seq), report.summary()
    if at is not None:
        assert (report.first_bad_segment, report.first_bad_line) == (str(at[0]), at[1]), report.summary()


def mac_key(state: Path) -> bytes:
    return bytes.fromhex((state / "secrets" / "audit-mac.key").read_text().strip())


def test_the_untouched_log_verifies(state: Path) -> None:
    report = verify(state)
    assert report.ok, report.summary()
    assert (report.records, report.checkpoints, report.last_checkpoint_seq, report.uncovered) == (
        20,
        4,
        16,
        4,
    )


def test_an_edited_field_of_a_middle_record(state: Path) -> None:
    lines = read_lines(state)
    lines[9] = lines[9].replace(b'"actor":"user9"', b'"actor":"userX"')
    write_lines(state, lines)
    report = verify(state)
    assert_caught(report, Reason.MODIFIED, 10, at=(segment(state), 10))
    assert report.summary().startswith(f"{segment(state)}: line 10: record seq 10: modified:")


def test_a_deleted_record(state: Path) -> None:
    lines = read_lines(state)
    del lines[9]
    write_lines(state, lines)
    report = verify(state)
    assert_caught(report, Reason.DELETED, 10, at=(segment(state), 10))
    assert "records 10..10 are missing: found seq 11" in report.detail


def test_an_inserted_forged_record(state: Path) -> None:
    lines = read_lines(state)
    real_10 = json.loads(lines[9])
    forged = {**real_10, "actor": "nobody", "mac": "0" * 64}  # claims seq 10, chains to seq 9, wrong key
    lines.insert(9, canonical(forged))
    write_lines(state, lines)
    report = verify(state)
    assert_caught(report, Reason.INSERTED, 10, at=(segment(state), 10))


def test_a_replayed_copy_of_an_earlier_record(state: Path) -> None:
    lines = read_lines(state)
    lines.insert(12, lines[4])
    write_lines(state, lines)
    assert_caught(verify(state), Reason.INSERTED, 13, at=(segment(state), 13))


def test_two_swapped_records(state: Path) -> None:
    lines = read_lines(state)
    lines[9], lines[10] = lines[10], lines[9]
    write_lines(state, lines)
    report = verify(state)
    assert_caught(report, Reason.REORDERED, 10, at=(segment(state), 10))
    assert "seq 10 appears later, at audit-00000001.jsonl line 11" in report.detail


def test_a_truncated_tail_behind_a_checkpoint(state: Path) -> None:
    write_lines(state, read_lines(state)[:14])
    report = verify(state)
    assert_caught(report, Reason.TRUNCATED, 15)
    assert "the log ends at seq 14" in report.detail and "held 16 records" in report.detail
    assert report.bad_checkpoint == f"{state / 'audit' / 'checkpoints.jsonl'}:4"


def test_truncating_records_after_the_last_checkpoint_is_not_detectable_and_is_reported_as_uncovered(
    state: Path,
) -> None:
    """The honest limit: records 17-20 are not under any checkpoint yet. verify says how many are exposed."""
    write_lines(state, read_lines(state)[:17])
    report = verify(state)
    assert report.ok
    assert report.uncovered == 1  # 17 is left, and only 16 is checkpointed


def test_the_whole_log_replaced_by_a_consistent_chain_under_another_key(state: Path) -> None:
    other_key = os.urandom(32)
    lines, prev = [], None
    for i in range(N):
        fields = json.loads(read_lines(state)[i])
        fields.pop("mac")
        line, prev = seal(other_key, {**fields, "prev": prev})
        lines.append(line)
    write_lines(state, lines)
    assert_caught(verify(state), Reason.MODIFIED, 1, at=(segment(state), 1))


def rewrite_with_stolen_mac_key(state: Path) -> None:
    """An attacker with the MAC key rewrites history from record 1: every MAC and link is valid."""
    key, lines, prev = mac_key(state), [], None
    for line in read_lines(state):
        fields = json.loads(line)
        fields.pop("mac")
        new_line, prev = seal(key, {**fields, "actor": "innocent", "prev": prev})
        lines.append(new_line)
    write_lines(state, lines)


def test_a_rewrite_with_the_stolen_mac_key_is_caught_by_the_signed_checkpoints(state: Path) -> None:
    rewrite_with_stolen_mac_key(state)
    report = verify(state)
    assert_caught(report, Reason.MODIFIED, 1)
    assert "record seq 1 (line 1) has another MAC than the signed checkpoint" in report.detail
    assert report.first_bad_segment == str(segment(state))


def test_a_flipped_checkpoint_signature(state: Path) -> None:
    path = state / "audit" / "checkpoints.jsonl"
    lines = path.read_bytes().splitlines()
    cp = json.loads(lines[1])
    cp["sig"] = ("1" if cp["sig"][0] != "1" else "2") + cp["sig"][1:]
    lines[1] = canonical(cp)
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    report = verify(state)
    assert (report.ok, report.reason) == (False, Reason.BAD_CHECKPOINT)
    assert report.summary() == f"{path}:2: bad checkpoint: signature does not verify"


def test_a_checkpoint_forged_with_another_signing_key(state: Path) -> None:
    path = state / "audit" / "checkpoints.jsonl"
    forged = make_checkpoint(
        Ed25519PrivateKey.generate(),
        seq=30,
        mac="0" * 64,
        segment="audit-00000001.jsonl",
        segment_bytes=1,
        reason="count",
    )
    with open(path, "ab") as f:
        f.write(forged + b"\n")
    report = verify(state)
    assert report.reason == Reason.BAD_CHECKPOINT and "signed by key" in report.detail


def test_a_deleted_checkpoints_file(state: Path) -> None:
    (state / "audit" / "checkpoints.jsonl").unlink()
    report = verify(state)
    assert report.reason == Reason.BAD_CHECKPOINT and "checkpoints file is missing" in report.detail


def test_a_deleted_segment_file(tmp_path: Path) -> None:
    state = tmp_path / "rotated"
    with AuditLog.open(state, rotate_bytes=1500) as log:
        for i in range(30):
            log.append(actor="alice", action="auth.login", details={"i": i})
    first_of_third = json.loads(segment(state, 3).read_bytes().splitlines()[0])["seq"]
    first_of_second = json.loads(segment(state, 2).read_bytes().splitlines()[0])["seq"]
    segment(state, 2).unlink()
    report = verify(state)
    assert (report.reason, report.first_bad_seq) == (Reason.DELETED, first_of_second)
    assert report.first_bad_segment == str(segment(state, 3)) and report.first_bad_line == 1
    assert f"records {first_of_second}..{first_of_third - 1} are missing" in report.detail
    assert (
        "segment file(s) between audit-00000001.jsonl and audit-00000003.jsonl are missing" in report.detail
    )


def test_a_damaged_line(state: Path) -> None:
    lines = read_lines(state)
    lines[4] = lines[4][:50]
    write_lines(state, lines)
    report = verify(state)
    assert_caught(report, Reason.MODIFIED, 5, at=(segment(state), 5))
    assert "not a well-formed record" in report.detail


# -- rollback: the audit directory restored from an older copy -----------------------------------------------


def test_rollback_is_invisible_from_the_audit_directory_alone_but_caught_by_the_mirror(
    state: Path, tmp_path: Path
) -> None:
    """Log and checkpoints rolled back together agree with each other: nothing in the directory can tell.
    A mirror of the checkpoints on storage the attacker could not roll back catches it."""
    mirror = tmp_path / "offsite" / "checkpoints.jsonl"
    mirror.parent.mkdir()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(state / "audit", snapshot)
    with AuditLog.open(state, checkpoint_every=5, checkpoint_mirror=mirror) as log:
        for i in range(10):
            log.append(actor="alice", action="export.download", project="p", target="r1", details={"i": i})
    shutil.rmtree(state / "audit")
    shutil.copytree(snapshot, state / "audit")

    alone = verify(state, checkpoint_mirror="")
    assert alone.ok, "documented limit: a consistent rollback cannot be seen from inside the directory"
    with_mirror = verify(state, checkpoint_mirror=mirror)
    assert (with_mirror.reason, with_mirror.first_bad_seq) == (Reason.TRUNCATED, N + 1)
    assert with_mirror.bad_checkpoint is not None and with_mirror.bad_checkpoint.startswith(str(mirror))


def test_rollback_then_new_records_is_caught_by_the_mirror(state: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "offsite.jsonl"
    snapshot = tmp_path / "snapshot"
    shutil.copytree(state / "audit", snapshot)
    with AuditLog.open(state, checkpoint_every=5, checkpoint_mirror=mirror) as log:
        for _ in range(10):
            log.append(actor="alice", action="auth.logout")
    shutil.rmtree(state / "audit")
    shutil.copytree(snapshot, state / "audit")
    with AuditLog.open(
        state, checkpoint_every=5, checkpoint_mirror=""
    ) as log:  # history continues, differently
        for _ in range(10):
            log.append(actor="mallory", action="auth.logout")
    report = verify(state, checkpoint_mirror=mirror)
    # The mirror's first checkpoint past the fork is at 21; the last one the log still agrees with is at 16,
    # so 17 is the earliest record that may have been changed.
    assert report.reason == Reason.MODIFIED and report.first_bad_seq == 17, report.summary()
    assert "rolled back and continued" in report.detail


def test_with_both_keys_stolen_only_the_mirror_catches_a_rewrite(state: Path, tmp_path: Path) -> None:
    """An attacker with the whole secrets directory re-signs the checkpoints too. The copy kept elsewhere
    still holds the true MACs."""
    mirror = tmp_path / "offsite.jsonl"
    shutil.copy(state / "audit" / "checkpoints.jsonl", mirror)
    rewrite_with_stolen_mac_key(state)
    signing = load_signing_key(state / "secrets", create=False)
    size = segment(state).stat().st_size
    last_mac = json.loads(read_lines(state)[-1])["mac"]
    (state / "audit" / "checkpoints.jsonl").write_bytes(
        make_checkpoint(
            signing, seq=N, mac=last_mac, segment="audit-00000001.jsonl", segment_bytes=size, reason="count"
        )
        + b"\n"
    )
    assert verify(state, checkpoint_mirror="").ok, (
        "documented limit: with both keys, the directory is forgeable"
    )
    report = verify(state, checkpoint_mirror=mirror)
    assert (report.reason, report.first_bad_seq) == (Reason.MODIFIED, 1)

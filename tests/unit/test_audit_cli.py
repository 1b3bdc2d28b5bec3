"""``enclave audit verify | show | checkpoint`` through hub.cli.main, as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit import AuditLog
from hub.cli import main


@pytest.fixture
def state(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.delenv("ENCLAVE_AUDIT_CHECKPOINT_MIRROR", raising=False)
    state = tmp_path / "state"
    with AuditLog.open(state, checkpoint_every=4) as log:
        log.append(actor="alice", action="auth.login")
        log.append(
            actor="alice",
            action="server.spawn",
            project="demo-cardio",
            target="demo-cardio",
            details={"image_digest": "sha256:" + "ab" * 32},
        )
        log.append(
            actor="mallory",
            action="server.spawn",
            project="demo-cardio",
            target="demo-cardio",
            outcome="denied",
            details={"reason": "not_accredited"},
        )
        log.append(actor="bob", action="export.create", project="demo-oncology", target="req-1")
        log.append(actor="alice", action="auth.logout")
    return state


def enclave(state: Path, *args: str) -> int:
    return main(["--state-dir", str(state), "audit", *args])


def segment(state: Path) -> Path:
    return state / "audit" / "audit-00000001.jsonl"


def test_verify_ok(state: Path, capsys) -> None:
    assert enclave(state, "verify") == 0
    out = capsys.readouterr().out
    assert (
        "audit log verified: 5 record(s) in 1 segment(s), 2 signed checkpoint(s), last checkpoint at seq 5"
        in out
    )
    assert "checkpoint key sha256 " in out


def test_verify_names_the_segment_and_seq_of_a_tampered_record(state: Path, capsys) -> None:
    lines = segment(state).read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"not_accredited", b"member_ok_____")
    segment(state).write_bytes(b"".join(lines))
    assert enclave(state, "verify") == 3
    err = capsys.readouterr().err
    assert err.startswith(
        f"enclave: audit log FAILED verification: {segment(state)}: line 3: record seq 3: modified:"
    )


def test_verify_json_report(state: Path, capsys) -> None:
    lines = segment(state).read_bytes().splitlines(keepends=True)
    del lines[1]
    segment(state).write_bytes(b"".join(lines))
    assert enclave(state, "verify", "--json") == 3
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["reason"], report["first_bad_seq"]) == (False, "deleted", 2)


def test_verify_without_the_mac_key_still_checks_links_and_checkpoints(state: Path, capsys) -> None:
    (state / "secrets" / "audit-mac.key").unlink()
    assert enclave(state, "verify", "--no-mac-key") == 0
    assert "(MACs NOT checked: no MAC key)" in capsys.readouterr().out
    segment(state).write_bytes(b"".join(segment(state).read_bytes().splitlines(keepends=True)[:2]))
    assert enclave(state, "verify", "--no-mac-key") == 3
    assert ": truncated: the log ends at seq 2" in capsys.readouterr().err


def test_verify_reports_a_missing_key_as_an_operator_error(state: Path, capsys) -> None:
    key = state / "secrets" / "audit-mac.key"
    key.unlink()
    assert enclave(state, "verify") == 1
    assert capsys.readouterr().err == f"enclave: {key}: missing\n"


def test_verify_reports_a_key_with_a_wrong_mode(state: Path, capsys) -> None:
    key = state / "secrets" / "audit-mac.key"
    key.chmod(0o640)
    assert enclave(state, "verify") == 1
    assert f"{key}: mode 0640 lets others read it; it must be 0600" in capsys.readouterr().err


def test_verify_without_a_log(tmp_path: Path, capsys) -> None:
    assert enclave(tmp_path / "empty", "verify") == 1
    assert "no audit log here" in capsys.readouterr().err


def test_verify_catches_a_replaced_public_key(state: Path, tmp_path: Path, capsys) -> None:
    with AuditLog.open(tmp_path / "other"):
        pass
    (state / "audit" / "checkpoint-key.pub").write_bytes(
        (tmp_path / "other" / "audit" / "checkpoint-key.pub").read_bytes()
    )
    assert enclave(state, "verify") == 3
    assert (
        "bad checkpoint: the checkpoint public key beside the log does not match" in capsys.readouterr().err
    )


def test_verify_with_a_checkpoint_copy_from_syslog(state: Path, tmp_path: Path, capsys) -> None:
    syslog = tmp_path / "syslog"
    cps = (state / "audit" / "checkpoints.jsonl").read_text().splitlines()
    syslog.write_text(
        "Nov 24 10:00:00 host sshd[1]: unrelated\n"
        + "".join(f"Nov 24 10:00:01 host enclave-audit[42]: checkpoint {cp}\n" for cp in cps)
    )
    segment(state).write_bytes(b"".join(segment(state).read_bytes().splitlines(keepends=True)[:3]))
    (state / "audit" / "checkpoints.jsonl").write_text(cps[0] + "\n")  # the attacker also cut the checkpoints
    assert enclave(state, "verify") == 0  # the directory alone is consistent again
    capsys.readouterr()
    assert enclave(state, "verify", "--checkpoints", str(syslog)) == 3
    assert ": truncated: the log ends at seq 3" in capsys.readouterr().err
    assert enclave(state, "verify", "--checkpoints", str(tmp_path / "nope")) == 1


def test_show_filters_and_prints_text(state: Path, capsys) -> None:
    assert enclave(state, "show", "--project", "demo-cardio") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "#3  denied  mallory  server.spawn  project=demo-cardio  target=demo-cardio" in out[1]
    assert out[1].endswith('{"reason": "not_accredited"}')


def test_show_json_prints_the_stored_lines(state: Path, capsys) -> None:
    assert enclave(state, "show", "--json", "--action", "auth.*", "--actor", "alice") == 0
    out = capsys.readouterr().out.encode().splitlines()
    stored = segment(state).read_bytes().splitlines()
    assert out == [stored[0], stored[4]]


def test_show_by_time_and_outcome(state: Path, capsys) -> None:
    assert (
        enclave(state, "show", "--since", "1h", "--until", "2999-01-01", "--outcome", "denied", "--json") == 0
    )
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [3]
    assert enclave(state, "show", "--since", "2999-01-01") == 0
    assert capsys.readouterr().out == ""


def test_show_rejects_a_bad_time(state: Path, capsys) -> None:
    assert enclave(state, "show", "--until", "tomorrow") == 1
    assert "--until: 'tomorrow' is not a time" in capsys.readouterr().err


def test_checkpoint_command(state: Path, capsys) -> None:
    assert enclave(state, "checkpoint") == 0
    assert "checkpoint written: seq 5" in capsys.readouterr().out
    last = json.loads((state / "audit" / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert (last["seq"], last["reason"]) == (5, "manual")


def test_verify_with_a_witness_names_the_rollback(state: Path, tmp_path: Path, capsys) -> None:
    witness = tmp_path / "witness.jsonl"
    witness.write_bytes((state / "audit" / "checkpoints.jsonl").read_bytes())
    segment(state).write_bytes(b"".join(segment(state).read_bytes().splitlines(keepends=True)[:1]))
    cps = (state / "audit" / "checkpoints.jsonl").read_bytes().splitlines(keepends=True)
    (state / "audit" / "checkpoints.jsonl").write_bytes(cps[0])
    assert enclave(state, "verify") == 0
    assert "note: no witness checked" in capsys.readouterr().out
    assert enclave(state, "verify", "--witness", str(witness)) == 3
    err = capsys.readouterr().err
    assert ": truncated: the log ends at seq 1" in err and str(witness) in err


def test_verify_refuses_an_emptied_checkpoints_file(state: Path, capsys) -> None:
    (state / "audit" / "checkpoints.jsonl").write_bytes(b"")
    assert enclave(state, "verify") == 3
    assert "bad checkpoint: the log has 5 records but its checkpoints file holds no checkpoint" in (
        capsys.readouterr().err
    )


def test_checkpoint_every_keeps_checkpointing_like_the_timer(state: Path) -> None:
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    cps = state / "audit" / "checkpoints.jsonl"
    before = len(cps.read_bytes().splitlines())
    loop = subprocess.Popen(
        [sys.executable, "-m", "audit", "--state-dir", str(state), "checkpoint", "--every", "0.2"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(cps.read_bytes().splitlines()) < before + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        loop.terminate()
        loop.wait(timeout=10)
    manual = [json.loads(x) for x in cps.read_bytes().splitlines()[before:]]
    assert len(manual) >= 3 and {cp["reason"] for cp in manual} == {"manual"}
    assert enclave(state, "verify") == 0

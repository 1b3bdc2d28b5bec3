"""An outside auditor's verifier, written from audit/README.md alone (json, hmac, hashlib, cryptography; nothing
from audit.verify or audit.chain), run side by side with ``python -m audit verify`` (the same code as
``enclave audit verify``) against every kind of tampering the README names. Both must agree, and both must
catch exactly what the README says is caught, and miss exactly what it says cannot be caught."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit import AuditLog
from audit.cli import main as audit_main

# -- the outside verifier (README only) --------------------------------------------------------------------

SEGMENT = re.compile(r"^audit-(\d{8})\.jsonl$")
CP_FIELDS = {
    "key_id": str,
    "mac": str,
    "reason": str,
    "segment": str,
    "segment_bytes": int,
    "seq": int,
    "sig": str,
    "ts": str,
    "v": int,
}
HEX64 = re.compile(rb"[0-9a-f]{64}")


class Caught(Exception):
    pass


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def trusted_key(state: Path) -> Ed25519PublicKey:
    """README: with the secrets, derive the key from the signing key and check checkpoint-key.pub matches."""
    signing = serialization.load_pem_private_key(
        (state / "secrets" / "audit-checkpoint.ed25519").read_bytes(), password=None
    )
    public = signing.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if (state / "audit" / "checkpoint-key.pub").read_bytes() != pem:
        raise Caught("checkpoint-key.pub does not match the signing key")
    return public


def read_records(state: Path, key: bytes | None) -> dict[int, tuple[str, str, int]]:
    """seq -> (mac, segment name, end offset including the newline). Raises Caught."""
    segments = sorted(
        (int(m.group(1)), p) for p in (state / "audit").iterdir() if (m := SEGMENT.match(p.name))
    )
    ends: dict[int, tuple[str, str, int]] = {}
    prev: str | None = None
    for k, (_, path) in enumerate(segments):
        data = path.read_bytes()
        body, _, rest = data.rpartition(b"\n")
        if rest and k != len(segments) - 1:
            raise Caught(f"{path.name}: incomplete line not at the end of the log")
        offset = 0
        for line in body.split(b"\n") if body else []:
            offset += len(line) + 1
            try:
                cut = line.rindex(b'"mac":"')
            except ValueError:
                raise Caught(f"{path.name}: not a record") from None
            mac = line[cut + 7 : cut + 71]
            if line[cut + 71 : cut + 73] != b'",' or not HEX64.fullmatch(mac):
                raise Caught(f"{path.name}: bytes around the MAC")
            if key is not None:
                want = hmac.new(key, line[:cut] + line[cut + 73 :], "sha256").hexdigest().encode()
                if not hmac.compare_digest(want, mac):
                    raise Caught(f"{path.name}: MAC")
            try:
                record = json.loads(line)
            except ValueError:
                raise Caught(f"{path.name}: not JSON") from None
            if record.get("seq") != len(ends) + 1 or record.get("prev") != prev:
                raise Caught(f"{path.name}: chain at seq {len(ends) + 1}")
            prev = mac.decode()
            ends[record["seq"]] = (prev, path.name, offset)
    return ends


def check_checkpoint(line: bytes, public: Ed25519PublicKey) -> tuple[int, str, str, int, str]:
    obj = json.loads(line)
    if (
        set(obj) != set(CP_FIELDS)
        or any(type(obj[k]) is not t for k, t in CP_FIELDS.items())
        or obj["v"] != 1
    ):
        raise Caught("checkpoint fields")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if obj["key_id"] != hashlib.sha256(raw).hexdigest():
        raise Caught("checkpoint from another key")
    sig = obj.pop("sig")
    try:
        public.verify(bytes.fromhex(sig), canonical(obj))
    except (ValueError, InvalidSignature):
        raise Caught("checkpoint signature") from None
    return obj["seq"], obj["mac"], obj["segment"], obj["segment_bytes"], obj["ts"]


def outside_verify(
    state: Path,
    witnesses: list[Path] = (),
    use_mac_key: bool = True,
    public_key: Ed25519PublicKey | None = None,
) -> None:
    """Raises Caught at the first problem, as the README defines them."""
    key = bytes.fromhex((state / "secrets" / "audit-mac.key").read_text().strip()) if use_mac_key else None
    public = public_key or trusted_key(state)
    ends = read_records(state, key)
    primary_file = state / "audit" / "checkpoints.jsonl"
    primary: set[tuple] = set()
    if primary_file.exists():
        for line in primary_file.read_bytes().split(b"\n")[:-1]:  # bytes after the last \n: ignored
            try:
                primary.add(check_checkpoint(line, public))
            except ValueError:
                raise Caught("checkpoints.jsonl: a line that is not JSON") from None
    if ends and not primary:
        raise Caught("records but no checkpoint")
    witnessed: set[tuple] = set()
    for path in witnesses:
        for line in path.read_bytes().split(b"\n")[:-1]:  # bytes after the last \n: ignored
            if b"{" not in line or b'"sig":' not in line:
                continue
            try:
                json.loads(line[line.index(b"{") :])
            except ValueError:
                continue  # torn: skipped with a warning
            witnessed.add(check_checkpoint(line[line.index(b"{") :], public))
    for seq, mac, segment, size, _ in primary | witnessed:
        if seq not in ends:
            raise Caught(f"truncated before {seq}")
        if ends[seq] != (mac, segment, size):
            raise Caught(f"record {seq} disagrees with a checkpoint")
    if witnessed - primary:
        raise Caught("the witness holds checkpoints that checkpoints.jsonl lacks")


def outside_ok(state: Path, **options) -> bool:
    try:
        outside_verify(state, **options)
    except Caught:
        return False
    return True


# -- the trail under attack --------------------------------------------------------------------------------


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Trail:
    monkeypatch.delenv("ENCLAVE_AUDIT_WITNESS", raising=False)
    monkeypatch.delenv("ENCLAVE_AUDIT_CHECKPOINT_MIRROR", raising=False)
    state = tmp_path / "state"
    witness = tmp_path / "witness" / "checkpoints.jsonl"
    witness.parent.mkdir()  # the writer never creates it: an unmounted witness must not fill the host disk
    older = tmp_path / "older"
    with AuditLog.open(state, checkpoint_every=5, rotate_bytes=4000, checkpoint_mirror=witness) as log:
        for i in range(30):
            log.append(actor=f"user{i:02d}", action="auth.login", details={"i": i, "ratio": i / 7})
            if i == 14:
                shutil.copytree(state, older)  # an older copy of the whole state directory
        log.append(actor="user30", action="auth.logout")  # after the last checkpoint (seq 30): uncovered
    return Trail(state, witness, older, tmp_path)


@dataclass
class Trail:
    state: Path
    witness: Path
    older: Path
    tmp: Path

    @property
    def audit(self) -> Path:
        return self.state / "audit"

    def segments(self) -> list[Path]:
        return sorted(self.audit.glob("audit-*.jsonl"))

    def lines(self, k: int = 0) -> list[bytes]:
        return self.segments()[k].read_bytes().splitlines(keepends=True)

    def write(self, k: int, lines: list[bytes]) -> None:
        self.segments()[k].write_bytes(b"".join(lines))

    def edit(self, k: int, n: int, change: Callable[[bytes], bytes]) -> None:
        lines = self.lines(k)
        lines[n] = change(lines[n])
        self.write(k, lines)

    def checkpoint_lines(self) -> list[bytes]:
        return (self.audit / "checkpoints.jsonl").read_bytes().splitlines(keepends=True)


def ours(trail: Trail, *args: str) -> bool:
    code = audit_main(["--state-dir", str(trail.state), "verify", *args])
    assert code in (0, 3), f"could not verify at all (exit {code})"
    return code == 0


def mac_key(trail: Trail) -> bytes:
    return bytes.fromhex((trail.state / "secrets" / "audit-mac.key").read_text().strip())


def reseal(key: bytes, record: dict) -> bytes:
    record = {k: v for k, v in record.items() if k != "mac"}
    body = canonical(record)
    mac = hmac.new(key, body, "sha256").hexdigest()
    return canonical(dict(record, mac=mac)) + b"\n"


# -- tamperings: each returns the witnesses to check with --------------------------------------------------


def edit_same_length(t: Trail) -> None:
    t.edit(0, 3, lambda line: line.replace(b'"user03"', b'"userXX"'))


def edit_other_length(t: Trail) -> None:
    t.edit(0, 3, lambda line: line.replace(b'"user03"', b'"admin"'))


def delete_record(t: Trail) -> None:
    lines = t.lines(0)
    del lines[2]
    t.write(0, lines)


def insert_forged(t: Trail) -> None:
    lines = t.lines(0)
    lines.insert(2, lines[1].replace(b'"user01"', b'"mallory"'))
    t.write(0, lines)


def replay(t: Trail) -> None:
    lines = t.lines(0)
    lines.insert(4, lines[1])
    t.write(0, lines)


def reorder(t: Trail) -> None:
    lines = t.lines(0)
    lines[2], lines[3] = lines[3], lines[2]
    t.write(0, lines)


def truncate_covered(t: Trail) -> None:
    last = t.segments()[-1]
    t.write(len(t.segments()) - 1, t.lines(len(t.segments()) - 1)[:2])
    assert last.exists()


def delete_middle_segment(t: Trail) -> None:
    assert len(t.segments()) >= 3
    t.segments()[1].unlink()


def flip_mac_digit(t: Trail) -> None:
    def flip(line: bytes) -> bytes:
        at = line.rindex(b'"mac":"') + 7
        return line[:at] + (b"0" if line[at : at + 1] != b"0" else b"1") + line[at + 1 :]

    t.edit(0, 4, flip)


def separator_of_last_record(t: Trail) -> None:
    k = len(t.segments()) - 1
    t.edit(k, len(t.lines(k)) - 1, lambda line: line.replace(b'",' + b'"outcome"', b'\',"outcome"', 1))


def separator_of_middle_record(t: Trail) -> None:
    t.edit(0, 2, lambda line: line.replace(b'",' + b'"outcome"', b'" "outcome"', 1))


def uppercase_mac(t: Trail) -> None:
    def upper(line: bytes) -> bytes:
        at = line.rindex(b'"mac":"') + 7
        return line[:at] + line[at : at + 64].upper() + line[at + 64 :]

    t.edit(0, 2, upper)


def crlf(t: Trail) -> None:
    t.edit(0, 2, lambda line: line[:-1] + b"\r\n")


def empty_checkpoints(t: Trail) -> None:
    (t.audit / "checkpoints.jsonl").write_bytes(b"")


def empty_checkpoints_and_cut_covered(t: Trail) -> None:
    empty_checkpoints(t)
    truncate_covered(t)


def delete_checkpoints(t: Trail) -> None:
    (t.audit / "checkpoints.jsonl").unlink()


def torn_checkpoint_line_inside(t: Trail) -> None:
    lines = t.checkpoint_lines()
    lines[1] = lines[1][:40] + b"\n"
    (t.audit / "checkpoints.jsonl").write_bytes(b"".join(lines))


def flip_checkpoint_signature(t: Trail) -> None:
    lines = t.checkpoint_lines()
    obj = json.loads(lines[1])
    obj["sig"] = ("0" if obj["sig"][0] != "0" else "1") + obj["sig"][1:]
    lines[1] = canonical(obj) + b"\n"
    (t.audit / "checkpoints.jsonl").write_bytes(b"".join(lines))


def checkpoint_under_another_key(t: Trail) -> None:
    lines = t.checkpoint_lines()
    obj = json.loads(lines[-1])
    del obj["sig"]
    obj["sig"] = Ed25519PrivateKey.generate().sign(canonical(obj)).hex()
    (t.audit / "checkpoints.jsonl").write_bytes(b"".join(lines) + canonical(obj) + b"\n")


def rewrite_with_stolen_mac_key(t: Trail) -> None:
    """Change record 3 and re-chain everything after it with the MAC key: every MAC and link is valid."""
    key = mac_key(t)
    prev = None
    for k, path in enumerate(t.segments()):
        out = []
        for line in t.lines(k):
            record = json.loads(line)
            if record["seq"] == 3:
                record["actor"] = "someone_else"
            record["prev"] = prev
            sealed = reseal(key, record)
            prev = json.loads(sealed)["mac"]
            out.append(sealed)
        path.write_bytes(b"".join(out))


def replace_public_key(t: Trail) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    (t.audit / "checkpoint-key.pub").write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def rewrite_everything_without_keys(t: Trail) -> None:
    """Someone without the keys throws the trail and the keys away and writes a consistent new history."""
    shutil.rmtree(t.audit)
    shutil.rmtree(t.state / "secrets")
    with AuditLog.open(t.state, checkpoint_mirror=t.tmp / "attackers-own-witness") as log:
        for i in range(5):
            log.append(actor="nobody", action="auth.login", details={"i": i})


def rollback(t: Trail) -> None:
    shutil.rmtree(t.audit)
    shutil.copytree(t.older / "audit", t.audit)


def cut_records_and_checkpoints_consistently(t: Trail) -> None:
    lines = t.checkpoint_lines()
    keep = lines[:2]
    seq = json.loads(keep[-1])["seq"]
    (t.audit / "checkpoints.jsonl").write_bytes(b"".join(keep))
    for path in t.segments():
        kept = [
            line for line in path.read_bytes().splitlines(keepends=True) if json.loads(line)["seq"] <= seq
        ]
        if kept:
            path.write_bytes(b"".join(kept))
        else:
            path.unlink()


def remove_checkpoint_lines_the_witness_holds(t: Trail) -> None:
    lines = t.checkpoint_lines()
    (t.audit / "checkpoints.jsonl").write_bytes(b"".join(lines[:2] + lines[4:]))


def witness_line_under_another_key(t: Trail) -> None:
    obj = json.loads(t.checkpoint_lines()[-1])
    del obj["sig"]
    obj["sig"] = Ed25519PrivateKey.generate().sign(canonical(obj)).hex()
    with t.witness.open("ab") as f:
        f.write(b"Dec  1 10:00:00 host enclave-audit[7]: checkpoint " + canonical(obj) + b"\n")


# Benign or undetectable changes: the README says these verify.


def duplicate_checkpoint_line(t: Trail) -> None:
    lines = t.checkpoint_lines()
    (t.audit / "checkpoints.jsonl").write_bytes(b"".join(lines + lines[2:3]))


def torn_last_checkpoint_line(t: Trail) -> None:
    with (t.audit / "checkpoints.jsonl").open("ab") as f:
        f.write(t.checkpoint_lines()[-1][:50])


def torn_last_record(t: Trail) -> None:
    with t.segments()[-1].open("ab") as f:
        f.write(b'{"action":"auth.login","actor":"half')


def truncate_uncovered(t: Trail) -> None:
    k = len(t.segments()) - 1
    t.write(k, t.lines(k)[:-1])  # seq 31, after the last checkpoint


def remove_lines_from_the_witness(t: Trail) -> None:
    lines = t.witness.read_bytes().splitlines(keepends=True)
    t.witness.write_bytes(b"".join(lines[:2] + lines[3:]))


# (tampering, caught without a witness, caught with the witness)
CASES: list[tuple[Callable[[Trail], None], bool, bool]] = [
    (edit_same_length, True, True),
    (edit_other_length, True, True),
    (delete_record, True, True),
    (insert_forged, True, True),
    (replay, True, True),
    (reorder, True, True),
    (truncate_covered, True, True),
    (delete_middle_segment, True, True),
    (flip_mac_digit, True, True),
    (separator_of_last_record, True, True),
    (separator_of_middle_record, True, True),
    (uppercase_mac, True, True),
    (crlf, True, True),
    (empty_checkpoints, True, True),
    (empty_checkpoints_and_cut_covered, True, True),
    (delete_checkpoints, True, True),
    (torn_checkpoint_line_inside, True, True),
    (flip_checkpoint_signature, True, True),
    (checkpoint_under_another_key, True, True),
    (rewrite_with_stolen_mac_key, True, True),
    (replace_public_key, True, True),
    (rewrite_everything_without_keys, False, True),
    (rollback, False, True),
    (cut_records_and_checkpoints_consistently, False, True),
    (remove_checkpoint_lines_the_witness_holds, False, True),
    (witness_line_under_another_key, False, True),
    (duplicate_checkpoint_line, False, False),
    (torn_last_checkpoint_line, False, False),
    (torn_last_record, False, False),
    (truncate_uncovered, False, False),
    (remove_lines_from_the_witness, False, False),
]


def test_the_untouched_trail_verifies_in_both(trail: Trail) -> None:
    outside_verify(trail.state)
    outside_verify(trail.state, witnesses=[trail.witness])
    assert ours(trail) and ours(trail, "--witness", str(trail.witness))
    assert len(trail.segments()) >= 3


@pytest.mark.parametrize(
    ("tamper", "caught", "caught_with_witness"), CASES, ids=[c[0].__name__ for c in CASES]
)
def test_both_verifiers_agree_on_every_tampering(
    trail: Trail, tamper, caught, caught_with_witness, capsys
) -> None:
    tamper(trail)
    assert outside_ok(trail.state) == ours(trail) == (not caught)
    witness = [str(trail.witness)]
    assert (
        outside_ok(trail.state, witnesses=[trail.witness])
        == ours(trail, "--witness", *witness)
        == (not caught_with_witness)
    )
    if caught_with_witness:
        assert "FAILED verification" in capsys.readouterr().err


def test_at_least_twenty_kinds_of_tampering_are_caught() -> None:
    assert sum(1 for _, caught, with_witness in CASES if caught or with_witness) >= 20


def test_a_pinned_key_catches_a_rewrite_without_the_old_keys_even_without_a_witness(trail: Trail) -> None:
    pinned = trail.tmp / "pinned.pub"
    shutil.copy(trail.audit / "checkpoint-key.pub", pinned)
    public = serialization.load_pem_public_key(pinned.read_bytes())
    rewrite_everything_without_keys(trail)
    assert not outside_ok(trail.state, public_key=public)
    assert not ours(trail, "--public-key", str(pinned))


def test_the_witness_names_what_differs(trail: Trail, capsys) -> None:
    remove_checkpoint_lines_the_witness_holds(trail)
    assert not ours(trail, "--witness", str(trail.witness))
    err = capsys.readouterr().err
    assert f"{trail.witness}:3" in err and "checkpoints.jsonl lacks" in err
    rollback(trail)
    assert not ours(trail, "--witness", str(trail.witness), "--json")
    report = json.loads(capsys.readouterr().out)
    assert (report["reason"], report["first_bad_seq"]) == ("truncated", 16)
    assert report["bad_checkpoint"].startswith(str(trail.witness))


def test_without_the_mac_key_edits_pass_but_structure_does_not(trail: Trail) -> None:
    edit_same_length(trail)
    assert outside_ok(trail.state, use_mac_key=False) and ours(trail, "--no-mac-key")
    assert not outside_ok(trail.state) and not ours(trail)
    delete_record(trail)
    assert not outside_ok(trail.state, use_mac_key=False) and not ours(trail, "--no-mac-key")


def test_a_damaged_last_record_fails_verification_and_logging_goes_on(trail: Trail, capsys) -> None:
    separator_of_last_record(trail)
    assert not outside_ok(trail.state) and not ours(trail)
    with AuditLog.open(trail.state) as log:
        record = log.append(actor="alice", action="auth.login")
    # The damaged line was seq 31: the chain continues from seq 30, with a note first.
    assert record["seq"] == 32
    last = [json.loads(line) for line in trail.lines(len(trail.segments()) - 1)[-2:]]
    assert [r["action"] for r in last] == ["audit.tail_skipped", "auth.login"]
    assert last[0]["details"]["continued_from"] == 30 and last[0]["outcome"] == "error"
    assert not outside_ok(trail.state) and not ours(trail, "--json")
    report = json.loads(capsys.readouterr().out)
    assert (report["reason"], report["first_bad_seq"]) == ("inserted", 31)


def test_a_last_record_damaged_while_a_writer_runs_is_noted_before_its_next_record(trail: Trail) -> None:
    with AuditLog.open(trail.state) as log:
        log.append(actor="alice", action="auth.login")  # seq 32
        k = len(trail.segments()) - 1
        trail.edit(k, len(trail.lines(k)) - 1, lambda line: line[:60] + b"\n")  # cut short, not torn
        record = log.append(actor="bob", action="auth.login")
    last = [json.loads(line) for line in trail.lines(len(trail.segments()) - 1)[-2:]]
    assert [(r["action"], r["seq"]) for r in last] == [("audit.tail_skipped", 32), ("auth.login", 33)]
    assert record["seq"] == 33 and last[0]["details"]["continued_from"] == 31
    assert not outside_ok(trail.state) and not ours(trail)


def test_a_same_length_edit_of_the_last_record_does_not_stop_a_running_writer(trail: Trail, capsys) -> None:
    with AuditLog.open(trail.state) as log:
        log.append(actor="alice", action="auth.login")  # seq 32
        k = len(trail.segments()) - 1
        trail.edit(k, len(trail.lines(k)) - 1, lambda line: line.replace(b'","outcome"', b'"!"outcome"', 1))
        assert log.append(actor="bob", action="auth.login")["seq"] == 33  # chained to the real seq 32
    assert not outside_ok(trail.state) and not ours(trail, "--json")
    report = json.loads(capsys.readouterr().out)
    assert (report["reason"], report["first_bad_seq"]) == ("modified", 32)

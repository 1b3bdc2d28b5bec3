"""audit/README.md is enough to write a verifier: this one uses only the README, json, hmac and cryptography,
none of the audit package's code, and it must agree with what the package writes."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from audit import AuditLog


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def auditors_verifier(state: Path) -> int:
    """Returns the number of records; raises AssertionError at the first problem."""
    key = bytes.fromhex((state / "secrets" / "audit-mac.key").read_text().strip())
    segments = sorted((state / "audit").glob("audit-*.jsonl"))
    assert [p.name for p in segments] == [f"audit-{i:08d}.jsonl" for i in range(1, len(segments) + 1)]
    prev, seq, ends = None, 0, {}
    for path in segments:
        offset = 0
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n")
            offset += len(line)
            record = json.loads(line)
            mac = record.pop("mac")
            assert hmac.compare_digest(hmac.new(key, canonical(record), "sha256").hexdigest(), mac), record[
                "seq"
            ]
            assert record["seq"] == seq + 1 and record["prev"] == prev, record["seq"]
            # The README's shortcut: the MAC input is the line with its last mac member cut out.
            cut = line.rindex(b'"mac":"')
            assert line[:cut] + line[cut + 73 :].rstrip(b"\n") == canonical(record)
            prev, seq = mac, record["seq"]
            ends[seq] = (mac, path.name, offset)
    public_key = serialization.load_pem_public_key((state / "audit" / "checkpoint-key.pub").read_bytes())
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for line in (state / "audit" / "checkpoints.jsonl").read_bytes().splitlines():
        checkpoint = json.loads(line)
        assert line == canonical(checkpoint)
        sig = bytes.fromhex(checkpoint.pop("sig"))
        public_key.verify(sig, canonical(checkpoint))  # raises InvalidSignature
        assert checkpoint["key_id"] == hashlib.sha256(raw).hexdigest()
        assert ends[checkpoint["seq"]] == (
            checkpoint["mac"],
            checkpoint["segment"],
            checkpoint["segment_bytes"],
        )
    return seq


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    with AuditLog.open(state, checkpoint_every=7, rotate_bytes=3000) as log:
        for i in range(40):
            log.append(
                actor="service:exports",
                action="export.vote",
                project="demo-cardio",
                target=f"req-{i}",
                details={
                    "vote": "approve",
                    "ratio": i / 7,
                    "note": "검토 완료 ✓",
                    "nested": {"mac": "x", "k": [1, 2.5]},
                },
            )
    return state


def test_an_auditor_can_verify_from_the_readme_alone(state: Path) -> None:
    assert auditors_verifier(state) == 40
    assert len(list((state / "audit").glob("audit-*.jsonl"))) > 2


def test_the_auditors_verifier_fails_where_ours_does(state: Path) -> None:
    segment = state / "audit" / "audit-00000002.jsonl"
    segment.write_bytes(segment.read_bytes().replace(b'"approve"', b'"changes"', 1))
    with pytest.raises(AssertionError):
        auditors_verifier(state)
    with AuditLog.open(state) as log:
        assert not log.verify().ok

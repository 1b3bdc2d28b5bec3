"""Signed checkpoints: "at time ts, the log held seq records, the last one with MAC mac, ending at byte
segment_bytes of segment". Signed with Ed25519 so they cannot be forged with the MAC key alone.

A checkpoint line is the canonical JSON (audit/chain.py) of::

    {"key_id", "mac", "reason", "segment", "segment_bytes", "seq", "sig", "ts", "v"}

and ``sig`` is the hex Ed25519 signature of the canonical JSON of all the other fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.chain import canonical, utc_timestamp
from audit.keys import key_id

CHECKPOINT_VERSION = 1
NOT_JSON = "not valid JSON"
_FIELDS = {"key_id": str, "mac": str, "reason": str, "segment": str, "segment_bytes": int, "seq": int,
           "sig": str, "ts": str, "v": int}  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    mac: str
    segment: str
    segment_bytes: int
    ts: str
    reason: str
    key_id: str
    source: str
    """Where this copy was read from, as ``file:line``, for error messages."""


@dataclass(frozen=True)
class BadCheckpoint:
    source: str
    why: str


def make_checkpoint(
    signing_key: Ed25519PrivateKey, *, seq: int, mac: str, segment: str, segment_bytes: int, reason: str
) -> bytes:
    """One signed checkpoint line, without the newline."""
    fields: dict[str, Any] = {
        "v": CHECKPOINT_VERSION,
        "seq": seq,
        "mac": mac,
        "segment": segment,
        "segment_bytes": segment_bytes,
        "ts": utc_timestamp(),
        "reason": reason,
        "key_id": key_id(signing_key.public_key()),
    }
    fields["sig"] = signing_key.sign(canonical(fields)).hex()
    return canonical(fields)


def parse_checkpoint(line: bytes, source: str, public_key: Ed25519PublicKey) -> Checkpoint | BadCheckpoint:
    """Check one checkpoint line: well-formed, from our key, and signed by it."""
    try:
        obj = json.loads(line)
    except ValueError:
        return BadCheckpoint(source, NOT_JSON)
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        return BadCheckpoint(source, f"fields must be exactly {', '.join(sorted(_FIELDS))}")
    for name, kind in _FIELDS.items():
        if type(obj[name]) is not kind:
            return BadCheckpoint(source, f"{name}: must be {kind.__name__}")
    if obj["v"] != CHECKPOINT_VERSION:
        return BadCheckpoint(source, f"v: unknown checkpoint version {obj['v']}")
    if obj["key_id"] != key_id(public_key):
        return BadCheckpoint(
            source,
            f"key_id: signed by key {obj['key_id'][:16]}..., not by the checkpoint key {key_id(public_key)[:16]}...: "
            "the log and its keys were replaced, or this checkpoint belongs to another enclave",
        )
    sig = obj.pop("sig")
    try:
        public_key.verify(bytes.fromhex(sig), canonical(obj))
    except (ValueError, InvalidSignature):
        return BadCheckpoint(source, "signature does not verify")
    return Checkpoint(
        seq=obj["seq"],
        mac=obj["mac"],
        segment=obj["segment"],
        segment_bytes=obj["segment_bytes"],
        ts=obj["ts"],
        reason=obj["reason"],
        key_id=obj["key_id"],
        source=source,
    )


def read_checkpoint_lines(path: Path, lenient: bool) -> Iterator[tuple[str, bytes]]:
    """Yield (``file:line``, checkpoint JSON) from a checkpoints file.

    An incomplete last line is a checkpoint interrupted by a crash, never acknowledged: skipped.
    ``lenient`` is for copies kept elsewhere: text before the first ``{`` is a syslog prefix, and lines
    without a signature are someone else's messages (or torn lines on the mirror's storage).
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # the empty string after the final newline, or the incomplete last line
    for number, line in enumerate(lines, start=1):
        if lenient:
            start = line.find(b"{")
            if start < 0 or b'"sig":' not in line:
                continue
            line = line[start:]
        yield f"{path}:{number}", line

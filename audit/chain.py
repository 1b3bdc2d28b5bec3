"""The record format: canonical JSON, the MAC, the chain, and segment names. See audit/README.md.

A stored line is the canonical JSON of the whole record, ``mac`` included, followed by ``\\n``. Canonical
means ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)``, so a
line is pure ASCII. The MAC input is the canonical JSON of every field except ``mac``. Because keys are
sorted and ``mac`` sorts between ``details`` and ``outcome`` (and no field after it is an object), the MAC
input is also exactly the stored line with its last ``"mac":"<64 hex>",`` member cut out. The writer builds
lines that way round and the verifier checks them that way round: neither re-serializes, so they cannot
disagree about number formatting or escapes, and the verifier is fast.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.errors import AuditRecordError

FORMAT_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024
"""A record is a sentence about an action, not a payload. The cap also bounds how far back a writer must
read to find the last record."""

SEGMENT_RE = re.compile(r"^audit-(\d{8})\.jsonl$")
CHECKPOINTS_FILE = "checkpoints.jsonl"
LOCK_FILE = "audit.lock"

_MAC_MEMBER = b'"mac":"'
MAC_MEMBER_LEN = len(_MAC_MEMBER) + 64 + 2  # "mac":" + 64 hex + ",
_OUTCOME_MEMBER = b',"outcome":"'
_PREV_MEMBER = b',"prev":'
_SEQ_MEMBER = b',"seq":'
_HEX64 = re.compile(rb"[0-9a-f]{64}")
_DIGITS = re.compile(rb"[1-9][0-9]*")


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The one serialization that MACs and signatures are computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def segment_name(index: int) -> str:
    return f"audit-{index:08d}.jsonl"


def segment_paths(audit_dir: Path) -> list[Path]:
    """The log's segment files, oldest first (names are fixed width, so they sort by index)."""
    if not audit_dir.is_dir():
        return []
    return sorted(audit_dir / name for name in os.listdir(audit_dir) if SEGMENT_RE.match(name))


def segment_index(path: Path) -> int:
    match = SEGMENT_RE.match(path.name)
    assert match is not None, path
    return int(match.group(1))


def utc_timestamp(when: datetime | None = None) -> str:
    """``2025-11-24T09:47:00.123456Z``: fixed width, so timestamps compare as strings."""
    when = when or datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mac_of(key: bytes, message: bytes) -> str:
    return hmac.digest(key, message, "sha256").hex()


def seal(key: bytes, fields: Mapping[str, Any]) -> tuple[bytes, str]:
    """Serialize a record (all fields but ``mac``) and insert its MAC. Returns (line without newline, mac)."""
    try:
        body = canonical(fields)
    except (TypeError, ValueError) as exc:
        raise AuditRecordError(
            f"audit record {fields.get('action')}: details: not plain JSON: {exc}"
        ) from None
    if len(body) > MAX_RECORD_BYTES:
        raise AuditRecordError(
            f"audit record {fields.get('action')}: {len(body)} bytes; the limit is {MAX_RECORD_BYTES}"
        )
    mac = mac_of(key, body)
    # The last ',"outcome":"' is the top-level one: nothing after it is an object that could hold the key.
    cut = body.rfind(_OUTCOME_MEMBER)
    line = body[:cut] + b',"mac":"' + mac.encode("ascii") + b'"' + body[cut:]
    return line, mac


@dataclass(frozen=True)
class Link:
    """What the chain needs from one stored line."""

    seq: int
    prev: str | None
    mac: str
    mac_ok: bool


def unseal(key: bytes | None, line: bytes) -> Link | None:
    """Read one stored line (without its newline). None if it is not a well-formed record line.

    ``mac_ok`` says whether the MAC matches (always True when ``key`` is None: nothing was checked).
    After the mac member come, in canonical order, outcome, prev, project, seq, ...: ``prev`` is the first
    ``,"prev":`` after the mac, and ``seq`` the first ``,"seq":`` after that (a string value cannot contain
    an unescaped quote, so neither can appear inside ``outcome`` or ``project``). This is the readable twin
    of the hot loop in audit/verify.py, which follows the same rules.
    """
    cut = line.rfind(_MAC_MEMBER)
    if cut < 0 or line[cut + MAC_MEMBER_LEN - 2 : cut + MAC_MEMBER_LEN] != b'",':
        return None
    mac = line[cut + len(_MAC_MEMBER) : cut + len(_MAC_MEMBER) + 64]
    at = line.find(_PREV_MEMBER, cut + MAC_MEMBER_LEN)
    if _HEX64.fullmatch(mac) is None or at < 0:
        return None
    at += len(_PREV_MEMBER)
    if line.startswith(b"null,", at):
        prev, at = None, at + 4
    elif (
        line[at : at + 1] == b'"'
        and line[at + 65 : at + 67] == b'",'
        and _HEX64.fullmatch(line, at + 1, at + 65)
    ):
        prev, at = line[at + 1 : at + 65].decode("ascii"), at + 66
    else:
        return None
    start = line.find(_SEQ_MEMBER, at)
    end = line.find(b",", start + len(_SEQ_MEMBER))
    if start < 0 or end < 0 or _DIGITS.fullmatch(line, start + len(_SEQ_MEMBER), end) is None:
        return None
    mac_ok = key is None or hmac.compare_digest(
        mac_of(key, line[:cut] + line[cut + MAC_MEMBER_LEN :]).encode("ascii"), mac
    )
    return Link(
        seq=int(line[start + len(_SEQ_MEMBER) : end]), prev=prev, mac=mac.decode("ascii"), mac_ok=mac_ok
    )

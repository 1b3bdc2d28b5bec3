"""The verifier: every MAC, every chain link, sequence continuity, and every signed checkpoint.

It reports the first place where the log stops being the log that was written, and why:

- ``modified``: a record fails its MAC (or is not a record), or the log disagrees with a signed checkpoint
  (rewritten with the MAC key, or rolled back and continued);
- ``deleted``: records are missing from the middle (or the start);
- ``inserted``: a line that the writer never wrote (bad MAC, but the chain goes on after it), or a replayed
  copy of an earlier record;
- ``reordered``: a record sits where another belongs, and the missing one turns up later;
- ``truncated``: the log ends before a signed checkpoint says it reached;
- ``bad checkpoint``: a checkpoint whose signature, key or form is wrong.

``first_bad_seq`` is where the chain first breaks: the log is good up to ``first_bad_seq - 1``. Checkpoints
are read before the segments, so that a verification running beside live writers never sees a checkpoint
for records it has not read yet.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.chain import CHECKPOINTS_FILE, MAC_MEMBER_LEN, Link, segment_index, segment_paths, unseal
from audit.checkpoint import NOT_JSON, BadCheckpoint, Checkpoint, parse_checkpoint, read_checkpoint_lines
from audit.keys import key_id
from audit.spool import SPOOL_FILE, spool_usage

try:  # the C function behind hmac.digest, without its Python wrapper: a fifth of the hot loop's time
    from _hashlib import hmac_digest as _hmac_digest
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _hmac_digest = hmac.digest


class Reason(StrEnum):
    MODIFIED = "modified"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    BAD_CHECKPOINT = "bad checkpoint"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of one verification. ``ok`` is False exactly when ``reason`` is set."""

    ok: bool
    records: int
    """Records that verified: the good prefix of the log."""
    segments: int
    checkpoints: int
    """Distinct, validly signed checkpoints that were checked against the log."""
    last_seq: int
    last_checkpoint_seq: int
    key_id: str
    """Fingerprint of the checkpoint key used; auditors should compare it with the one they pinned."""
    macs_checked: bool = True
    reason: Reason | None = None
    first_bad_seq: int | None = None
    first_bad_segment: str | None = None
    first_bad_line: int | None = None
    bad_checkpoint: str | None = None
    """``file:line`` of the checkpoint at fault (bad checkpoint), or that proves the fault (truncated,
    modified against a checkpoint)."""
    detail: str = ""
    torn_tail: str | None = None
    """A segment ending in an incomplete line: an append interrupted by a crash, never acknowledged, cut off
    by the next writer. Not a failure."""
    warnings: tuple[str, ...] = field(default=())
    witnessed: int = 0
    """Distinct, validly signed checkpoints found in the witnesses."""

    @property
    def uncovered(self) -> int:
        """Records after the last signed checkpoint: their truncation would not be detectable yet."""
        return max(0, self.last_seq - self.last_checkpoint_seq)

    def summary(self) -> str:
        if self.ok:
            return (
                f"audit log verified: {self.records} record(s) in {self.segments} segment(s), "
                f"{self.checkpoints} signed checkpoint(s), last checkpoint at seq {self.last_checkpoint_seq}"
                + ("" if self.macs_checked else " (MACs NOT checked: no MAC key)")
            )
        where = self.first_bad_segment or self.bad_checkpoint or "audit log"
        line = f": line {self.first_bad_line}" if self.first_bad_line else ""
        seq = f": record seq {self.first_bad_seq}" if self.first_bad_seq is not None else ""
        proof = (
            f" (checkpoint {self.bad_checkpoint})" if self.first_bad_segment and self.bad_checkpoint else ""
        )
        return f"{where}{line}{seq}: {self.reason}: {self.detail}{proof}"


@dataclass(frozen=True)
class _Problem:
    reason: Reason
    seq: int | None
    detail: str
    segment: Path | None = None
    line: int | None = None
    checkpoint: str | None = None


@dataclass(frozen=True)
class _Entry:
    segment: Path
    line: int
    link: Link | None


_NO_PREV = b',"prev":null,'
_HEX64 = re.compile(rb"[0-9a-f]{64}")


@dataclass
class _Walk:
    """State of the chain walk. ``found`` keeps, for checkpointed seqs only, (mac, segment, end, line)."""

    expected_seq: int = 1
    expected_prev: bytes = _NO_PREV
    """The prev member the next record must carry, as it appears in a stored line."""
    found: dict[int, tuple[str, str, int, int]] = field(default_factory=dict)
    problem: _Problem | None = None
    torn_tail: Path | None = None


def verify_log(
    audit_dir: Path,
    *,
    mac_key: bytes | None,
    public_key: Ed25519PublicKey,
    checkpoint_copies: Sequence[Path] = (),
) -> VerifyReport:
    """Verify the log in ``audit_dir`` against its checkpoints file and the witnesses ``checkpoint_copies``:
    copies kept outside the state directory (the witness file, lines extracted from syslog or the journal;
    prefixes and unrelated lines are skipped). With ``mac_key`` None, MACs are not checked and record
    contents are not authenticated (see audit/README.md, "Without the MAC key")."""
    primary = audit_dir / CHECKPOINTS_FILE
    own = _load_checkpoints([primary], public_key, lenient=False)
    witnessed = _load_checkpoints(list(checkpoint_copies), public_key, lenient=True)
    good = _merge(own.good, witnessed.good)
    paths = segment_paths(audit_dir)
    walk = _walk(paths, mac_key, {cp.seq for cp in good})
    last_seq = walk.expected_seq - 1
    problem = _first_problem(walk, good, own.bad + witnessed.bad, paths, last_seq, audit_dir)
    if problem is None:
        problem = _primary_problem(own, witnessed, last_seq, primary)
    covered = [cp.seq for cp in good if cp.seq <= last_seq]
    report = VerifyReport(
        ok=problem is None,
        records=last_seq,
        segments=len(paths),
        checkpoints=len(good),
        last_seq=last_seq,
        last_checkpoint_seq=max(covered, default=0),
        key_id=key_id(public_key),
        macs_checked=mac_key is not None,
        torn_tail=str(walk.torn_tail) if walk.torn_tail else None,
        warnings=tuple(
            own.warnings
            + witnessed.warnings
            + _unwitnessed(own, witnessed, checkpoint_copies)
            + _spool_warning(audit_dir)
        ),
        witnessed=len(witnessed.good),
    )
    if problem is None:
        return report
    return replace(
        report,
        reason=problem.reason,
        first_bad_seq=problem.seq,
        first_bad_segment=str(problem.segment) if problem.segment else None,
        first_bad_line=problem.line,
        bad_checkpoint=problem.checkpoint,
        detail=problem.detail,
    )


# -- checkpoints -------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    """Checkpoints read from one group of files: the state directory's own file, or the witnesses."""

    good: dict[tuple[int, str, str], Checkpoint] = field(default_factory=dict)
    bad: list[BadCheckpoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: int = 0


def _load_checkpoints(files: list[Path], public_key: Ed25519PublicKey, lenient: bool) -> _Loaded:
    """Read checkpoint files. The primary file is repaired under the writers' lock, so any line in it that
    does not parse is damage; witnesses may hold torn lines from crashes on their own storage, which are
    skipped with a warning. A line that parses must be valid. Duplicate lines count once."""
    loaded = _Loaded()
    for path in files:
        if not path.exists():
            if lenient:
                loaded.warnings.append(f"{path}: witness not found; not checked")
            continue
        loaded.files += 1
        for source, line in read_checkpoint_lines(path, lenient):
            parsed = parse_checkpoint(line, source, public_key)
            if isinstance(parsed, Checkpoint):
                loaded.good.setdefault((parsed.seq, parsed.mac, parsed.ts), parsed)
            elif lenient and parsed.why == NOT_JSON:
                loaded.warnings.append(f"{source}: skipped a line that is not a whole checkpoint")
            else:
                loaded.bad.append(parsed)
    return loaded


def _merge(*groups: dict[tuple[int, str, str], Checkpoint]) -> list[Checkpoint]:
    merged: dict[tuple[int, str, str], Checkpoint] = {}
    for group in groups:
        for k, cp in group.items():
            merged.setdefault(k, cp)
    return sorted(merged.values(), key=lambda cp: cp.seq)


def _first_problem(
    walk: _Walk,
    good: list[Checkpoint],
    bad: list[BadCheckpoint],
    paths: list[Path],
    last_seq: int,
    audit_dir: Path,
) -> _Problem | None:
    """The earliest fault: chain breaks and disagreements with checkpoints first (by seq), then
    truncation, then checkpoints that are themselves bad."""
    candidates = [p for p in (walk.problem, _checkpoint_mismatch(walk, good, audit_dir)) if p is not None]
    if candidates:
        return min(candidates, key=lambda p: p.seq if p.seq is not None else 0)
    beyond = [cp for cp in good if cp.seq > last_seq]
    if beyond:
        cp = beyond[-1]
        return _Problem(
            Reason.TRUNCATED,
            last_seq + 1,
            f"the log ends at seq {last_seq}, but a signed checkpoint of {cp.ts} says it held {cp.seq} "
            f"records: records {last_seq + 1}..{cp.seq} were removed (or the log was rolled back)",
            segment=paths[-1] if paths else None,
            checkpoint=cp.source,
        )
    if bad:
        return _Problem(Reason.BAD_CHECKPOINT, None, bad[0].why, checkpoint=bad[0].source)
    return None


def _primary_problem(own: _Loaded, witnessed: _Loaded, last_seq: int, primary: Path) -> _Problem | None:
    """The state directory's checkpoints file must exist, hold a checkpoint once there are records (the
    writer checkpoints on the first append), and hold every checkpoint a witness saw (the writer writes
    there first, so a checkpoint only a witness has was removed from it)."""
    if last_seq and not own.files:
        return _Problem(
            Reason.BAD_CHECKPOINT,
            None,
            f"the log has {last_seq} records but its checkpoints file is missing",
            checkpoint=str(primary),
        )
    if last_seq and not own.good:
        return _Problem(
            Reason.BAD_CHECKPOINT,
            None,
            f"the log has {last_seq} records but its checkpoints file holds no checkpoint (emptied?); the "
            "writer checkpoints on the first append, so records after the last checkpoint may have been cut",
            checkpoint=str(primary),
        )
    missing = [cp for k, cp in witnessed.good.items() if k not in own.good]
    if missing:
        cp = missing[0]
        return _Problem(
            Reason.BAD_CHECKPOINT,
            None,
            f"the witness holds {len(missing)} checkpoint(s) that {primary.name} lacks, the first of seq "
            f"{cp.seq} at {cp.ts}: checkpoints were removed from {primary.name}, or it was rolled back",
            checkpoint=cp.source,
        )
    return None


def _spool_warning(audit_dir: Path) -> list[str]:
    """Records waiting in the spool are not in the trail yet (and not covered by any checkpoint)."""
    _, _, used, pending = spool_usage(audit_dir)
    if not used:
        return []
    message = (
        f"{audit_dir / SPOOL_FILE}: {pending} record(s) spooled on a full disk wait to be appended to the "
        "trail; they are not covered by checkpoints until then"
    )
    return [message]


def _unwitnessed(own: _Loaded, witnessed: _Loaded, copies: Sequence[Path]) -> list[str]:
    """Checkpoints the witness never got. Not a failure (a witness write is best effort and a witness may
    start late), but it narrows what the witness proves, so it is named."""
    if not witnessed.files:
        return []
    if not witnessed.good:
        return [f"the witness ({', '.join(map(str, copies))}) holds no checkpoint of this log"]
    first = min(cp.seq for cp in witnessed.good.values())
    lacking = sorted(cp.seq for k, cp in own.good.items() if k not in witnessed.good and cp.seq > first)
    if not lacking:
        return []
    message = (
        f"the witness lacks {len(lacking)} checkpoint(s) of {CHECKPOINTS_FILE} after its first one, the first "
        f"of seq {lacking[0]}: the witness was unavailable then, or lines were removed from it"
    )
    return [message]


def _checkpoint_mismatch(walk: _Walk, good: list[Checkpoint], audit_dir: Path) -> _Problem | None:
    """The first checkpoint that the (MAC-valid) records it covers disagree with."""
    matched = [0]  # seqs of checkpoints the log agrees with
    for cp in good:
        seen = walk.found.get(cp.seq)
        if seen is None:
            continue  # beyond the good prefix: truncation or an earlier chain problem covers it
        mac, segment, end, line = seen
        if mac == cp.mac and segment == cp.segment and end == cp.segment_bytes:
            matched.append(cp.seq)
            continue
        good_until = max(seq for seq in matched if seq < cp.seq)
        if mac != cp.mac:
            why = f"has another MAC than the signed checkpoint of {cp.ts} says"
        else:
            why = f"ends at {segment} byte {end}, the signed checkpoint says {cp.segment} byte {cp.segment_bytes}"
        return _Problem(
            Reason.MODIFIED,
            good_until + 1,
            f"record seq {cp.seq} (line {line}) {why}: records {good_until + 1}..{cp.seq} were rewritten with the "
            "MAC key, or the log was rolled back and continued",
            segment=audit_dir / segment,
            checkpoint=cp.source,
        )
    return None


# -- the chain ---------------------------------------------------------------------------------------------


def _walk(paths: list[Path], key: bytes | None, wanted: set[int]) -> _Walk:
    walk = _Walk()
    for k, path in enumerate(paths):
        lines = path.read_bytes().split(b"\n")
        last = lines.pop()
        if last:
            if k == len(paths) - 1:
                walk.torn_tail = path
            else:
                lines.append(last)  # not at the end of the log: not a crash, a damaged record
        bad = _check_lines(walk, lines, key, path.name, wanted)
        if bad >= 0:
            rest = _entries(path, lines, bad, key) + [
                e for p in paths[k + 1 :] for e in _read_entries(p, key)
            ]
            walk.problem = _diagnose(walk, rest, paths, k)
            return walk
    return walk


def _check_lines(walk: _Walk, lines: list[bytes], key: bytes | None, segment: str, wanted: set[int]) -> int:
    """The hot loop: one pass, no JSON parsing. Returns the index of the first line that does not continue
    the chain, or -1; ``_diagnose`` then reads that line slowly and says what is wrong with it.

    Why the shortcuts are sound: the MAC covers the exact bytes of the line minus its mac member, so a line
    that passes was written, byte for byte, by a holder of the key. Such a line is canonical JSON, in which
    nothing after the mac member is an object and no string holds an unescaped quote; so the members
    ``,"prev":...,`` and ``,"seq":N,`` can only appear after the mac member as the record's own prev and
    seq, and finding them there is reading them. ``audit.chain.unseal`` is the slow, strict twin."""
    digest = _hmac_digest
    seq, prev = walk.expected_seq, walk.expected_prev
    offset = 0
    for index, line in enumerate(lines):
        cut = line.rfind(b'"mac":"')
        mac = line[cut + 7 : cut + 71]
        # The two bytes after the MAC are outside the MAC's input, so they are checked here, exactly: a
        # line the writer cannot continue from must not verify.
        if cut < 0 or line[cut + 71 : cut + 73] != b'",':
            break
        if key is None:
            if _HEX64.fullmatch(mac) is None:
                break
        elif digest(key, line[:cut] + line[cut + MAC_MEMBER_LEN :], "sha256").hex().encode() != mac:
            break
        if (
            line.find(prev, cut + MAC_MEMBER_LEN) < 0
            or line.find(b',"seq":%d,' % seq, cut + MAC_MEMBER_LEN) < 0
        ):
            break
        offset += len(line) + 1
        if seq in wanted:
            walk.found[seq] = (mac.decode(), segment, offset, index + 1)
        prev = b',"prev":"' + mac + b'",'
        seq += 1
    else:
        index = -1
    walk.expected_seq, walk.expected_prev = seq, prev
    return index


def _entries(path: Path, lines: list[bytes], start: int, key: bytes | None) -> list[_Entry]:
    return [_Entry(path, n + 1, unseal(key, lines[n])) for n in range(start, len(lines))]


def _read_entries(path: Path, key: bytes | None) -> list[_Entry]:
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return _entries(path, lines, 0, key)


def _diagnose(walk: _Walk, rest: list[_Entry], paths: list[Path], k: int) -> _Problem:
    """Say what happened at the first line that does not continue the chain (``rest[0]``). Only runs on
    failure, so it may look ahead as far as it likes."""
    seq = walk.expected_seq
    prev = None if walk.expected_prev == _NO_PREV else walk.expected_prev[9:73].decode()
    here = rest[0]
    link = here.link

    def problem(reason: Reason, detail: str) -> _Problem:
        return _Problem(reason, seq, detail, segment=here.segment, line=here.line)

    if link is None or not link.mac_ok:
        after = rest[1].link if len(rest) > 1 else None
        if after is not None and after.mac_ok and after.seq == seq and after.prev == prev:
            return problem(Reason.INSERTED, "this line is not a valid record (inserted without the MAC key, or "
                           f"damaged and skipped by the writer) and the chain continues after it with seq {seq}")  # fmt: skip
        if link is None:
            return problem(Reason.MODIFIED, f"this line is not a well-formed record (seq {seq} belongs here)")
        return problem(
            Reason.MODIFIED, f"the MAC does not match the contents of record seq {link.seq}: it was edited"
        )
    if link.seq > seq:
        later = next((e for e in rest[1:] if e.link and e.link.mac_ok and e.link.seq == seq), None)
        if later is not None:
            return problem(Reason.REORDERED, f"found seq {link.seq} where seq {seq} belongs; seq {seq} appears "
                           f"later, at {later.segment.name} line {later.line}")  # fmt: skip
        gap = _segment_gap(paths, k, here)
        return problem(Reason.DELETED, f"records {seq}..{link.seq - 1} are missing: found seq {link.seq} where "
                       f"seq {seq} belongs{gap}")  # fmt: skip
    if link.seq < seq:
        return problem(Reason.INSERTED, f"seq {link.seq} appears again where seq {seq} belongs: a copy of an "
                       "earlier record was inserted")  # fmt: skip
    return problem(Reason.MODIFIED, f"record seq {seq} does not chain to seq {seq - 1} (its prev differs from "
                   f"the MAC of seq {seq - 1}): a record was replaced by one from another chain")  # fmt: skip


def _segment_gap(paths: list[Path], k: int, here: _Entry) -> str:
    """Name missing segment files when a deletion spans them."""
    if here.line != 1:
        return ""
    if k == 0:
        return (
            f"; segment file(s) before {here.segment.name} are missing"
            if segment_index(here.segment) > 1
            else ""
        )
    if segment_index(here.segment) - segment_index(paths[k - 1]) > 1:
        return f"; segment file(s) between {paths[k - 1].name} and {here.segment.name} are missing"
    return ""

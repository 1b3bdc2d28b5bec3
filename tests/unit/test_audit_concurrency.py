"""Several real processes writing at once, and writers killed with SIGKILL mid-append."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from audit import AuditLog
from audit.keys import key_id, load_mac_key, load_signing_key
from audit.verify import verify_log

FORK = multiprocessing.get_context("fork")


def _write(log: AuditLog | None, state: str, worker: int, count: int) -> None:
    log = log or AuditLog.open(state)
    for i in range(count):
        log.append(actor=f"worker{worker}", action="auth.login", details={"i": i})


def test_four_processes_append_2000_records_each_into_one_chain(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with AuditLog.open(state, rotate_bytes=512 * 1024) as shared:  # workers 0 and 1 inherit it across fork
        workers = [
            FORK.Process(target=_write, args=(shared if k < 2 else None, str(state), k, 2000))
            for k in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
            if worker.is_alive():
                worker.kill()
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]

        report = shared.verify()
        assert report.ok, report.summary()
        assert report.records == 8000 and report.segments > 1
        per_worker: dict[str, list[int]] = {}
        for record in shared.records():
            per_worker.setdefault(record["actor"], []).append(record["details"]["i"])
        assert per_worker == {f"worker{k}": list(range(2000)) for k in range(4)}


def _race_to_create(state: str, barrier) -> None:
    barrier.wait()
    with AuditLog.open(state) as log:
        for _ in range(5):
            log.append(actor="alice", action="auth.login")


def test_processes_racing_to_create_the_keys_agree_on_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    barrier = FORK.Barrier(4)
    workers = [FORK.Process(target=_race_to_create, args=(str(state), barrier)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    with AuditLog.open(state) as log:
        report = log.verify()  # records MACed under two different keys would fail here
        assert report.ok and report.records == 20, report.summary()
        assert report.key_id == key_id(load_signing_key(state / "secrets", create=False).public_key())
    assert sorted(p.name for p in (state / "secrets").iterdir()) == [
        "audit-checkpoint.ed25519",
        "audit-mac.key",
    ]


WRITER = textwrap.dedent(
    """
    import os, random, signal, sys
    from audit import AuditLog
    log = AuditLog.open(sys.argv[1], checkpoint_every=7, rotate_bytes=400_000)
    rng = random.Random(int(sys.argv[2]))
    tear_at = int(sys.argv[3])
    for n in range(1, 10**9):
        if n == tear_at:  # die in the middle of writing this record, as a power cut would
            real_write = os.write
            def half_then_die(fd, data):
                # Tear the record itself, not a checkpoint or rotation write that may come first.
                if not os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("audit-0"):
                    return real_write(fd, data)
                real_write(fd, bytes(data[: len(data) // 2]))
                os.kill(os.getpid(), signal.SIGKILL)
            os.write = half_then_die
        # Large records span several pages, so SIGKILL can land in the middle of one write.
        record = log.append(actor="writer", action="auth.login", details={"pad": "x" * rng.randrange(0, 40_000)})
        sys.stdout.write(f"{record['seq']} {record['mac']}\\n")
        sys.stdout.flush()
    """
)


def test_writers_killed_mid_append_lose_nothing_they_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "state"
    acknowledged: dict[int, str] = {}
    rng = random.Random(20251124)
    torn_seen = tears = 0
    for round_ in range(12):
        tear_at = rng.randrange(2, 50) if round_ % 3 == 0 else 0  # every third writer tears its last record
        tears += bool(tear_at)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(state), str(round_), str(tear_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            first = writer.stdout.readline()  # the writer is up and appending
            if not tear_at:
                time.sleep(rng.uniform(0.0, 0.15))
                os.kill(writer.pid, signal.SIGKILL)
            rest = writer.stdout.read()
        finally:
            writer.kill()
            writer.wait()
        for line in (first + rest).splitlines():
            if line.count(" ") == 1 and len(line.split()[1]) == 64:  # a whole acknowledgement line
                seq, mac = line.split()
                acknowledged[int(seq)] = mac

        before_repair = verify_log(  # read-only: what the kill left behind
            state / "audit",
            mac_key=load_mac_key(state / "secrets", create=False),
            public_key=load_signing_key(state / "secrets", create=False).public_key(),
        )
        assert before_repair.ok, before_repair.summary()
        torn_seen += before_repair.torn_tail is not None
        with AuditLog.open(state, checkpoint_every=7) as log:  # opening repairs a torn tail
            report = log.verify()
            assert report.ok, report.summary()
            assert report.torn_tail is None
            stored = {r["seq"]: r["mac"] for r in log.records()}
        missing = {seq for seq, mac in acknowledged.items() if stored.get(seq) != mac}
        assert not missing, f"round {round_}: acknowledged records lost: {sorted(missing)[:10]}"
    assert len(acknowledged) > 12
    assert torn_seen >= tears, "each torn write must have been seen and repaired"
    print(f"{len(acknowledged)} acknowledged records survived 12 kills; {torn_seen} torn tails repaired")

"""Benchmark of the audit trail: durable appends per second and verified records per second.

    /opt/enclave/venv/bin/python bench/audit.py                  # 1,000,000-record verify
    /opt/enclave/venv/bin/python bench/audit.py --records 100000 # quicker

Targets on the 2-core reference machine: >= 2,000 durable appends/s and >= 200,000 verified records/s.
Each figure is printed next to a baseline measured in the same process on the same disk, because an absolute
number says more about the machine than about the code:
- appends are compared with a bare ``write`` + ``fdatasync`` of lines of the same size (the disk's bound);
- verification is compared with the HMAC alone over the same lines (the crypto's bound).
"""

from __future__ import annotations

import argparse
import hmac
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's own directory comes first on sys.path, and this file is called audit.py:
# put the repository root there instead, so that "audit" is the package being measured.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from audit import AuditLog

APPEND_TARGET = 2_000
VERIFY_TARGET = 200_000
IMAGE = "sha256:" + "ab" * 32


def entry(i: int) -> dict[str, Any]:
    """A typical record: about 350 bytes, like a spawn with its image digest."""
    return {
        "actor": "alice",
        "action": "server.spawn",
        "project": "demo-cardio",
        "target": "demo-cardio",
        "details": {"image_digest": IMAGE, "n": i},
    }


def _appender(state: str, count: int, start: Any) -> None:
    log = AuditLog.open(state)
    start.wait()
    for i in range(count):
        log.append(**entry(i))
    log.close()


def bench_appends(root: Path, processes: int, count: int) -> float:
    """Durable appends per second with ``processes`` writers of ``count`` appends each."""
    state = root / f"appends-{processes}"
    AuditLog.open(state).close()  # keys exist before the clock starts
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    workers = [ctx.Process(target=_appender, args=(str(state), count, start)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # let every worker open the log
    began = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    assert all(w.exitcode == 0 for w in workers)
    with AuditLog.open(state) as log:
        report = log.verify()
    assert report.ok and report.records == processes * count, report.summary()
    return processes * count / elapsed


def bench_raw_fsync(root: Path, count: int) -> float:
    """Baseline: bare write + fdatasync of record-sized lines, one at a time."""
    line = b"x" * 350 + b"\n"
    fd = os.open(root / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    began = time.perf_counter()
    for _ in range(count):
        os.write(fd, line)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - began
    os.close(fd)
    return count / elapsed


def build_log(root: Path, records: int) -> Path:
    """A valid log of ``records`` records, written in batches (group commit) rather than one fsync each."""
    state = root / "verify"
    with AuditLog.open(state) as log:
        batch = 20_000
        for first in range(0, records, batch):
            log.append_many([entry(i) for i in range(first, min(records, first + batch))])
    return state


def bench_verify(state: Path) -> tuple[float, int]:
    with AuditLog.open(state) as log:
        began = time.perf_counter()
        report = log.verify()
        elapsed = time.perf_counter() - began
    assert report.ok, report.summary()
    return report.records / elapsed, report.segments


def bench_hmac_only(state: Path, limit: int) -> float:
    """Baseline: HMAC-SHA256 of the same lines, nothing else."""
    key = os.urandom(32)
    lines: list[bytes] = []
    for path in sorted((state / "audit").glob("audit-*.jsonl")):
        lines.extend(path.read_bytes().splitlines()[: limit - len(lines)])
        if len(lines) >= limit:
            break
    digest = hmac.digest
    began = time.perf_counter()
    for line in lines:
        digest(key, line, "sha256")
    return len(lines) / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="size of the log to verify")
    parser.add_argument("--appends", type=int, default=2_000, help="durable appends per process")
    parser.add_argument("--processes", type=int, default=4, help="writers in the concurrent append run")
    parser.add_argument(
        "--dir", help="where to build the logs (default: a temporary directory, removed after)"
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir))
    try:
        raw = bench_raw_fsync(root, args.appends)
        one = bench_appends(root, 1, args.appends)
        many = bench_appends(root, args.processes, args.appends)
        print(f"bare write+fdatasync (baseline)     {raw:>10,.0f} /s")
        print(
            f"durable appends, 1 process          {one:>10,.0f} /s  ({one / raw:.2f}x baseline)  {_vs(one, APPEND_TARGET)}"
        )
        print(
            f"durable appends, {args.processes} processes        {many:>10,.0f} /s  ({many / raw:.2f}x baseline)  "
            f"{_vs(many, APPEND_TARGET)}"
        )

        began = time.perf_counter()
        state = build_log(root, args.records)
        built = time.perf_counter() - began
        size = sum(p.stat().st_size for p in (state / "audit").glob("audit-*.jsonl"))
        print(
            f"built a {args.records:,}-record log ({size / 2**20:,.0f} MiB) in {built:.1f} s (group commit)"
        )
        rate, segments = bench_verify(state)
        baseline = bench_hmac_only(state, min(args.records, 200_000))
        print(f"HMAC only (baseline)                {baseline:>10,.0f} records/s")
        print(
            f"verify, {segments} segment(s)              {rate:>10,.0f} records/s  ({rate / baseline:.2f}x baseline)  "
            f"{_vs(rate, VERIFY_TARGET)}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _vs(value: float, target: int) -> str:
    return f"{'meets' if value >= target else 'BELOW'} target {target:,}"


if __name__ == "__main__":
    sys.exit(main())

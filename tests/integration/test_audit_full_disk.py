"""A real full disk (issue 19): the trail lives on a small ext4 filesystem made for this test and
loop-mounted; it is filled until the kernel says ENOSPC. A stop's record survives through the reserved
spool, lands in the trail in order when space returns, and the trail verifies. Needs root and loop devices
(deploy/test provides both); cleans up its mount."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import AuditLog, AuditWriteError, Spooled

REPO = Path(__file__).resolve().parents[2]
IMAGE = "sha256:" + "cd" * 32

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not os.path.exists("/dev/loop-control"),
    reason="needs root, mkfs.ext4 and loop devices",
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    image, mount = tmp_path / "disk.img", tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)  # -o loop detaches the loop device with it


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last block, as a runaway process would."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (64 * 1024, 1024, 1):
            while True:
                try:
                    f.write(b"x" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


def stop(log: AuditLog, user: str):
    return log.append_or_spool(
        actor=user,
        action="server.stop",
        project="demo-cardio",
        target="demo-cardio",
        details={"image_digest": IMAGE},
    )


def test_a_stop_on_a_full_disk_is_spooled_and_lands_in_order(small_disk: Path) -> None:
    state = small_disk / "state"
    with AuditLog.open(state, spool_bytes=128 * 1024) as log:
        for i in range(20):
            log.append(actor="alice", action="auth.login", details={"i": i})
        filler = fill(small_disk)
        # The segment's last block may still hold a record or two; then the kernel says no.
        with pytest.raises(AuditWriteError) as refused:
            for i in range(200):
                log.append(actor="bob", action="auth.login", details={"i": i, "pad": "p" * 200})
        assert refused.value.errno == errno.ENOSPC and "no space left on device" in str(refused.value)
        written = sum(1 for _ in log.records())

        spooled = stop(log, "alice")
        assert isinstance(spooled, Spooled), "the stop's record must survive the full disk"
        assert log.health().spool_pending == 1 and log.health().free_bytes < 64 * 1024
        with pytest.raises(AuditWriteError):
            log.append(actor="carol", action="auth.login")  # granting access stays refused

        filler.unlink()  # space returns
        after = log.append(actor="carol", action="auth.login")
        assert log.health().spool_pending == 0

    trail = [
        json.loads(line) for p in sorted((state / "audit").glob("audit-*.jsonl")) for line in p.open("rb")
    ]
    assert [(r["actor"], r["action"]) for r in trail[written:]] == [
        ("alice", "server.stop"),
        ("service:audit", "audit.spooled"),
        ("carol", "auth.login"),
    ]
    assert trail[written]["details"]["spool_id"] == spooled.spool_id and after["seq"] == len(trail)
    result = subprocess.run(
        [sys.executable, "-m", "audit", "--state-dir", str(state), "verify"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"audit log verified: {len(trail)} record(s)" in result.stdout

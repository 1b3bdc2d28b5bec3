"""Durable file operations: what "written" means in the enclave.

A write goes to a temporary file in the target directory, is fsynced, renamed over the target, and the
directory is fsynced, so a crash (or a kill) leaves either the old file or all of the new one under the
final name, and the rename itself survives a power cut. audit/keys.py keeps its own copy of these few
lines on purpose: audit/ must run alone, with nothing of ours installed.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse directory fsync; the rename is still atomic
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> None:
    """``path`` and any missing parents, mode 700 (existing directories keep their mode)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _temporary(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a new, fsynced temporary file beside ``path``; removed again if anything fails."""
    tmp = path.parent / f".tmp-{path.name[:16]}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it, and readers of e.g. policies need 644
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` so that readers see the old file or all of the new one."""
    tmp = _temporary(path, data.encode() if isinstance(data, str) else data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` with all of ``data`` unless it exists; True if this call created it.

    The bytes are written and fsynced under a temporary name, then ``link``-ed to ``path``: link fails
    if the name exists, so of two racing processes exactly one wins and nobody sees a half-written file."""
    if path.exists():
        return False
    tmp = _temporary(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True

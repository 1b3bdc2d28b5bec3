"""Project workspaces on the host: one directory per project, shared by its members (uid 1000).

With a ``workspace_quota`` in the project's resources, the workspace is its own ext4 filesystem in a
sparse image file, loop-mounted at the workspace path: a full workspace then fails with ENOSPC inside
that project only, and can never fill the host's disk (where the audit trail and the export stores
live). A larger quota grows the filesystem at the next spawn that finds no other server of the project
running (it is grown offline); shrinking is not done, and said so in the log.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from hub.security_profile import NOTEBOOK_GID, NOTEBOOK_UID, memory_bytes

log = logging.getLogger("enclave.workspace")


class WorkspaceError(RuntimeError):
    """The workspace could not be prepared; the message names the project and the step."""


def _run(*cmd: str, ok: tuple[int, ...] = (0,)) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:  # the tool itself is missing or not executable
        raise WorkspaceError(f"{cmd[0]} cannot run: {exc.strerror}") from exc
    if proc.returncode not in ok:
        raise WorkspaceError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")


def image_path(workspaces_dir: Path, project: str) -> Path:
    return workspaces_dir / f".{project}.ext4"


def ensure_workspace(
    workspaces_dir: Path,
    project: str,
    quota: str | None,
    in_use: bool = False,
    mkfs: tuple[str, ...] = ("mkfs.ext4",),
) -> Path:
    """Create (and with a quota, mount or grow) the workspace of ``project``; return its path.

    Blocking (mkfs, e2fsck, resize2fs, mount run for up to seconds): the hub calls it from an executor.
    ``in_use``: a server of the project is running, so its filesystem must not be taken offline.
    ``mkfs``: the command that makes the ext4 filesystem (EnclaveSpawner.workspace_mkfs)."""
    # Only root (and, through their bind mounts, the containers) may enter the workspaces.
    workspaces_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    workspaces_dir.chmod(0o700)
    path = workspaces_dir / project
    path.mkdir(exist_ok=True)
    if quota:
        _ensure_filesystem(
            path, image_path(workspaces_dir, project), memory_bytes(quota), project, in_use, mkfs
        )
    os.chown(path, NOTEBOOK_UID, NOTEBOOK_GID)
    path.chmod(0o770)
    return path


def _ensure_filesystem(
    path: Path, image: Path, size: int, project: str, in_use: bool, mkfs: tuple[str, ...] = ("mkfs.ext4",)
) -> None:
    if not image.exists():
        if any(path.iterdir()) and not os.path.ismount(path):
            raise WorkspaceError(
                f"workspace of {project} already holds files without a quota; move them aside before "
                f"giving it a workspace_quota (nothing was changed)"
            )
        tmp = image.with_suffix(".tmp")
        with os.fdopen(
            os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb"
        ) as fh:
            fh.truncate(size)  # sparse: disk is used as the workspace fills
        _run(
            *mkfs,
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            f"root_owner={NOTEBOOK_UID}:{NOTEBOOK_GID},lazy_itable_init=1,lazy_journal_init=1",
            str(tmp),
        )
        os.replace(tmp, image)
    current = image.stat().st_size
    if size > current and not in_use and _unmount_if_idle(path, image):
        # Grown offline: an online resize of a loop-mounted ext4 is not allowed everywhere.
        with open(image, "r+b") as fh:
            fh.truncate(size)
        _run("e2fsck", "-f", "-p", str(image), ok=(0, 1))  # 1: corrected (e.g. recreated lost+found)
        _run("resize2fs", "-f", str(image))
        log.info("workspace of %s grown to %d bytes", project, size)
    elif size > current:
        log.warning(
            "workspace of %s stays at %d bytes until its last server stops (in use)", project, current
        )
    elif size < current:
        log.warning(
            "workspace of %s keeps %d bytes: shrinking to %d needs it offline", project, current, size
        )
    if not os.path.ismount(path):
        attached = _attached_loop(image)
        if attached:  # a container still holds it: mount that device, never a second one on the same file
            _run("mount", "-o", "nosuid,nodev,noexec", attached, str(path))
        else:
            _run("mount", "-o", "loop,nosuid,nodev,noexec", str(image), str(path))
        lost = path / "lost+found"
        if lost.is_dir() and not lost.is_symlink() and not any(lost.iterdir()):
            lost.rmdir()  # e2fsck recreates it if it ever needs it; researchers need not see it


def _attached_loop(image: Path) -> str | None:
    """The loop device backing ``image``, if any (a container's mount keeps it attached)."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
    return out.split(":", 1)[0] if out.strip() else None


def _unmount_if_idle(path: Path, image: Path) -> bool:
    """Unmount a workspace that nothing else holds. False (and still mounted) when it is in use: a
    container's bind mount keeps the loop device attached even after the host's umount succeeds."""
    if os.path.ismount(path):
        subprocess.run(["umount", str(path)], capture_output=True, check=False)
    attached = _attached_loop(image)
    if attached:
        if not os.path.ismount(path):
            _run("mount", "-o", "nosuid,nodev,noexec", attached, str(path))
        return False
    return not os.path.ismount(path)

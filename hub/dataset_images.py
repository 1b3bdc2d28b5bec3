"""Published datasets as read-only filesystems of their own: one squashfs image per project, dataset and
version, loop-mounted read-only on the host and bind-mounted into the project's containers.

Why not bind the published directory itself: a bind mount's ``statvfs`` reports the filesystem it lives
on, so ``/data`` showed the host disk's free space, which moves with every other project's writes (a
covert channel and a view of the host). A squashfs is read-only by construction and reports its own
fixed size with no free blocks, whatever happens elsewhere.

The published version directory is immutable (ingest/publish.py), so its image is built once, at the
first spawn that needs it (the demo and the test harness publish plain directories and need no extra
step), atomically (temp file, fsync, rename), under a lock. Everything here blocks (mksquashfs, mount):
the spawner calls it from an executor, never on the hub's event loop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from hub.workspace import WorkspaceError, _attached_loop, _run

log = logging.getLogger("enclave.datasets")

MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"


class DatasetImageError(WorkspaceError):
    """The dataset's read-only filesystem could not be prepared; the message names it and the step."""


def images_dir(state_dir: Path) -> Path:
    """Squashfs images and their mount points, apart from the published directories (ingest owns those)."""
    return state_dir / "data-images"


def image_path(state_dir: Path, project: str, dataset: str, version: str) -> Path:
    return images_dir(state_dir) / project / dataset / f"{version}.squashfs"


def mount_point(state_dir: Path, project: str, dataset: str, version: str) -> Path:
    return images_dir(state_dir) / project / dataset / version


@contextmanager
def _locked(path: Path):
    """One builder and mounter at a time per dataset version, across hub threads and processes."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_dataset_filesystem(
    state_dir: Path, source: Path, project: str, dataset: str, version: str
) -> Path:
    """Build (once) and mount (if not mounted) the read-only filesystem of a published dataset version;
    return its mount point, which is what the container gets at ``/data/<dataset>``."""
    folder = images_dir(state_dir) / project / dataset
    # 0711: the containers' bind mounts need to pass through; nobody on the host may list the images.
    folder.mkdir(mode=0o711, parents=True, exist_ok=True)
    for parent in (images_dir(state_dir), images_dir(state_dir) / project, folder):
        parent.chmod(0o711)
    image = image_path(state_dir, project, dataset, version)
    target = mount_point(state_dir, project, dataset, version)
    with _locked(folder / f".{version}.lock"):
        if not image.exists():
            _build(source, image, f"{project}/{dataset}@{version}")
        target.mkdir(mode=0o755, exist_ok=True)
        if not os.path.ismount(target):
            attached = _attached_loop(image)
            # A container still holding the image keeps its loop device: mount that one, never a second.
            device = [attached] if attached else [str(image)]
            options = MOUNT_OPTIONS if attached else f"loop,{MOUNT_OPTIONS}"
            _run("mount", "-t", "squashfs", "-o", options, *device, str(target))
    return target


def _build(source: Path, image: Path, name: str) -> None:
    if not (source / "manifest.json").is_file():
        raise DatasetImageError(f"dataset {name}: {source} is not a published version (no manifest.json)")
    tmp = image.with_name(f".{image.name}.tmp")
    tmp.unlink(missing_ok=True)
    # -all-root: the files are the site's; their read bits come from the published tree (world-readable).
    # -processors 1: a spawn must not take both cores of a small host away from the hub.
    try:
        _run(
            "mksquashfs",
            str(source),
            str(tmp),
            "-noappend",
            "-all-root",
            "-no-xattrs",
            "-processors",
            "1",
            "-quiet",
        )
    except WorkspaceError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetImageError(f"dataset {name}: {exc}") from exc
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.chmod(0o600)
    os.replace(tmp, image)
    dir_fd = os.open(image.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    log.info("dataset %s: read-only image %s built", name, image)


def release_dataset_filesystems(state_dir: Path) -> None:
    """Unmount every dataset image under ``state_dir`` (tests and decommissioning); the images stay."""
    root = images_dir(state_dir)
    if not root.exists():
        return
    for path in sorted(root.glob("*/*/*")):
        if path.is_dir() and os.path.ismount(path):
            subprocess.run(["umount", str(path)], check=False)

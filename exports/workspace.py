"""Reading a named file out of a project workspace, which researchers control and can race.

The container never uploads bytes: it names a path relative to /workspace and the service reads the
file on the host side. The workspace is attacker-controlled, so we check twice and trust neither alone:

1. ``realpath`` plus a prefix check, which gives a clear message for the common mistakes;
2. a walk from the workspace root with one ``openat`` per component, each with ``O_NOFOLLOW``, so a
   symlink swapped in between the check and the open is refused by the kernel, not by us. The final
   open also has ``O_NONBLOCK``, so naming a FIFO cannot hang the service, and the opened descriptor
   is checked again through /proc.

Only regular files with one link, of an allowlisted type and under the size cap, are read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from exports.domain import FileRefused

ALLOWED_TYPES = {"csv": "csv", "tsv": "tsv", "txt": "text", "md": "markdown", "json": "json", "png": "png"}
REFUSED_TYPES = {
    "svg": "SVG is refused: it can carry scripts and hidden payloads (ACRO refuses it too); export a PNG",
}
MAX_PATH_CHARS = 1024


def normalize_relpath(raw: object, label: str) -> str:
    """``raw`` as a clean path relative to the workspace root, or FileRefused naming ``label``."""
    if not isinstance(raw, str) or not raw.strip():
        raise FileRefused(f"{label}: a file path relative to the workspace is required", "unsafe_path")
    if len(raw) > MAX_PATH_CHARS:
        raise FileRefused(f"{label}: path is longer than {MAX_PATH_CHARS} characters", "unsafe_path")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in raw):
        raise FileRefused(f"{label} {raw!r}: control characters are not allowed in paths", "unsafe_path")
    if raw.startswith("/"):
        raise FileRefused(
            f"{label} {raw!r}: absolute paths are refused; name the file relative to /workspace",
            "unsafe_path",
        )
    if "\\" in raw:
        raise FileRefused(f"{label} {raw!r}: backslashes are not allowed in paths", "unsafe_path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileRefused(
            f"{label} {raw!r}: '..' is refused; the file must be inside the project workspace", "unsafe_path"
        )
    if not parts:
        raise FileRefused(f"{label} {raw!r}: names no file", "unsafe_path")
    return "/".join(parts)


def file_type(relpath: str, label: str) -> str:
    """The allowlisted type of ``relpath`` from its extension, or FileRefused saying what is allowed."""
    name = relpath.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in REFUSED_TYPES:
        raise FileRefused(f"{label} {relpath!r}: {REFUSED_TYPES[ext]}", "type_not_allowed")
    if ext not in ALLOWED_TYPES:
        allowed = ", ".join(sorted(ALLOWED_TYPES))
        raise FileRefused(
            f"{label} {relpath!r}: type {ext or '(none)'!r} is not allowed (allowed: {allowed})",
            "type_not_allowed",
        )
    return ALLOWED_TYPES[ext]


def read_workspace_file(workspace: Path, relpath: str, max_bytes: int, label: str) -> bytes:
    """The bytes of ``workspace/relpath``, read without following any symlink. ``relpath`` must come
    from ``normalize_relpath``."""
    root = os.path.realpath(workspace)
    if not os.path.isdir(root):
        raise FileRefused(
            f"{label} {relpath!r}: the project workspace does not exist on the host", "no_workspace"
        )
    _check_realpath(root, relpath, label)
    fd = _open_beneath(root, relpath, label)
    try:
        _check_opened(fd, root, relpath, max_bytes, label)
        return _read_capped(fd, relpath, max_bytes, label)
    finally:
        os.close(fd)


def _check_realpath(root: str, relpath: str, label: str) -> None:
    joined = os.path.join(root, relpath)
    real = os.path.realpath(joined)
    if not real.startswith(root + os.sep):
        raise FileRefused(
            f"{label} {relpath!r}: resolves outside the project workspace (symbolic link?)", "symlink"
        )
    if real != joined:
        raise FileRefused(
            f"{label} {relpath!r}: is or passes through a symbolic link; links are not followed", "symlink"
        )


def _open_beneath(root: str, relpath: str, label: str) -> int:
    *dirs, name = relpath.split("/")
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for component in dirs:
            next_fd = _open_component(component, dir_flags, fd, relpath, label)
            os.close(fd)
            fd = next_fd
        file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        return _open_component(name, file_flags, fd, relpath, label)
    finally:
        os.close(fd)


def _open_component(component: str, flags: int, dir_fd: int, relpath: str, label: str) -> int:
    try:
        return os.open(component, flags, dir_fd=dir_fd)
    except OSError as exc:
        explanation, reason = _explain_open_error(exc, component, dir_fd)
        raise FileRefused(f"{label} {relpath!r}: {explanation}", reason) from None


def _explain_open_error(exc: OSError, component: str, dir_fd: int) -> tuple[str, str]:
    if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_symlink(component, dir_fd)):
        return f"{component!r} is a symbolic link; links are not followed", "symlink"
    if exc.errno == errno.ENOTDIR:
        return f"{component!r} is not a directory", "not_found"
    if exc.errno == errno.ENOENT:
        return "no such file in the workspace", "not_found"
    if exc.errno == errno.ENXIO:
        return "not a regular file (a socket or device)", "not_regular_file"
    if exc.errno == errno.EACCES:
        return "permission denied reading it", "unreadable"
    return f"cannot be opened ({os.strerror(exc.errno or 0)})", "unreadable"


def _is_symlink(component: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(component, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_opened(fd: int, root: str, relpath: str, max_bytes: int, label: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(
            f"{label} {relpath!r}: not a regular file ({_kind(info.st_mode)}); only regular files",
            "not_regular_file",
        )
    if info.st_nlink != 1:
        raise FileRefused(
            f"{label} {relpath!r}: has {info.st_nlink} hard links; export a plain copy of it", "hard_link"
        )
    if info.st_size > max_bytes:
        raise FileRefused(
            f"{label} {relpath!r}: {info.st_size} bytes is over this project's cap of {max_bytes}",
            "too_large",
        )
    opened = os.readlink(f"/proc/self/fd/{fd}")
    if not opened.startswith(root + os.sep):
        raise FileRefused(f"{label} {relpath!r}: the opened file is outside the project workspace", "symlink")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_capped(fd: int, relpath: str, max_bytes: int, label: str) -> bytes:
    """Read at most ``max_bytes``; a file that grew past the cap since fstat is refused, not truncated."""
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise FileRefused(
                f"{label} {relpath!r}: more than this project's cap of {max_bytes} bytes", "too_large"
            )
        chunks.append(chunk)

"""Quarantine and release stores: files addressed by sha256, written atomically, read back verified.

Layout under the state directory (never mounted into a container)::

    exports/quarantine/<sha256[:2]>/<sha256>     every version of every requested file
    exports/release/<request id>/<sha256>        the approved bytes of a released request

A write goes to a temporary file in the target directory, is fsynced, renamed into place, and the
directory is fsynced (ground/durable.py), so a crash leaves either the whole file or no file under the
final name.
Every read hashes the bytes again: a store that was tampered with refuses to serve.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ground.durable import atomic_write, ensure_private_dir

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class StoreCorrupted(Exception):
    """Bytes on disk do not match the hash they are filed under."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    actual = sha256_hex(data)
    if actual != sha256:
        raise StoreCorrupted(f"{path}: content hashes to {actual}, expected {sha256}")
    return data


def _checked(sha256: str) -> str:
    if not SHA256_RE.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class Quarantine:
    """Content-addressed: the same bytes requested twice are stored once."""

    def __init__(self, root: Path):
        self.root = root

    def path_for(self, sha256: str) -> Path:
        sha256 = _checked(sha256)
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha256 = sha256_hex(data)
        path = self.path_for(sha256)
        if path.exists():
            try:
                read_verified(path, sha256)
                return sha256
            except StoreCorrupted:
                pass  # rewrite a damaged copy with the bytes we hold
        ensure_private_dir(path.parent)
        atomic_write(path, data)
        return sha256

    def get(self, sha256: str) -> bytes:
        return read_verified(self.path_for(sha256), sha256)


class ReleaseStore:
    """One directory per released request, each file named by its sha256."""

    def __init__(self, root: Path):
        self.root = root

    def request_dir(self, request_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", request_id):
            raise ValueError(f"not a request id: {request_id!r}")
        return self.root / request_id

    def path_for(self, request_id: str, sha256: str) -> Path:
        return self.request_dir(request_id) / _checked(sha256)

    def place(self, request_id: str, sha256: str, data: bytes) -> None:
        """Copy ``data`` in (idempotent) and verify the copy on disk by hash."""
        if sha256_hex(data) != sha256:
            raise StoreCorrupted(f"release of {request_id}: bytes do not hash to {sha256}")
        path = self.path_for(request_id, sha256)
        ensure_private_dir(path.parent)
        if path.exists():
            try:
                read_verified(path, sha256)
                return
            except StoreCorrupted:
                pass  # a damaged earlier attempt: write it again
        atomic_write(path, data)
        read_verified(path, sha256)

    def get(self, request_id: str, sha256: str) -> bytes:
        return read_verified(self.path_for(request_id, sha256), sha256)

    def clean_partial(self, request_id: str) -> None:
        """Remove temporary files a crashed release attempt left behind (never under a final name)."""
        directory = self.request_dir(request_id)
        if directory.is_dir():
            for leftover in directory.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)

"""The pseudonymization keys: one master key on the admin side, one derived key per project.

The master key is the guidelines' "additional information": with it (and the raw data) pseudonyms can be
recomputed, so it lives only in ``<state>/secrets/master.key`` (directory 700, file 600), is never written
to an output, and is never mounted into a container.

- ``master.key``: 32 random bytes as 64 hex digits and a newline, created on first use by writing a private
  ``O_EXCL`` temporary file and ``link()``-ing it to the final name. ``link`` fails if the name exists, so two
  ingests racing to create the key both end up with the one that won, and nobody ever reads a half-written
  key. Looser modes are refused rather than repaired: a key others could read must be assumed known.
- project key = HKDF-SHA256(master key, info = project id). Different projects get unrelated keys, so the
  same person gets unrelated pseudonyms and date offsets in each project: linkage between projects is
  impossible by construction (the Korean guideline reserves linkage for designated combination agencies).
- purpose keys = HKDF-SHA256(project key, info = "enclave-ingest/v1/<purpose>"): one per pseudonym domain
  and one for date shifts, so that no two uses of the project key can ever produce related outputs.

The master key is for dataset pseudonyms only; other concerns (audit, exports) keep their own keys.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ground.durable import create_exclusive, fsync_dir
from ingest.errors import KeyFileError

MASTER_KEY_FILE = "master.key"
KEY_BYTES = 32
PURPOSE_PREFIX = b"enclave-ingest/v1/"


def hkdf(key: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 without salt: the input is already a uniformly random key (RFC 5869 section 3.1)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def project_key(master: bytes, project: str) -> bytes:
    """HKDF-SHA256(master key, info = project id)."""
    return hkdf(master, project.encode("utf-8"))


def purpose_key(project_key_: bytes, purpose: str) -> bytes:
    """A key for one use of the project key: ``pseudonym/<domain>`` or ``date-shift``."""
    return hkdf(project_key_, PURPOSE_PREFIX + purpose.encode("utf-8"))


def load_master_key(secrets_dir: Path, *, create: bool = True) -> bytes:
    """Read ``<secrets_dir>/master.key``, creating the directory and key first if ``create``."""
    secrets_dir = Path(secrets_dir)
    _ensure_private_dir(secrets_dir)
    path = secrets_dir / MASTER_KEY_FILE
    if create and not path.exists():
        create_exclusive(path, secrets.token_bytes(KEY_BYTES).hex().encode("ascii") + b"\n")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no master key (run an ingest as the administrator to create it)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: mode {mode:04o} lets others read it; it must be 0600 (chmod 600 {path})"
            )
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: malformed: expected {KEY_BYTES * 2} hex digits and a newline")
    return key


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` mode 700 if missing; refuse it if group or others can get in."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            fsync_dir(path.parent)
        except FileExistsError:
            pass
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path}: mode {mode:04o} lets others in; it must be 0700 (chmod 700 {path})")

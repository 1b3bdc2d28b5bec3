"""The audit trail's keys: where they live, how they are created, and how they are checked.

- ``<state>/secrets/audit-mac.key``: 32 random bytes as 64 hex digits and a newline. Keys the HMAC of every
  record. Every writer (hub, export service, CLI) needs it; so does a full verification.
- ``<state>/secrets/audit-checkpoint.ed25519``: the Ed25519 private key (PKCS#8 PEM) that signs checkpoints.
- ``<state>/audit/checkpoint-key.pub``: the matching public key (SubjectPublicKeyInfo PEM), beside the
  checkpoints, so that an auditor can check signatures without any secret.

The secrets directory is mode 700 and key files mode 600; anything looser is refused rather than repaired,
because a key that others could read must be assumed known. Keys are created on first use with a write to a
private temporary file followed by ``link()`` to the final name, which fails if the name exists (the
``O_EXCL`` of whole files): two processes racing to create a key both end up with the one that won.

The few lines of durable writing here (``_create_exclusive``, ``_write_atomic``, ``fsync_dir``) repeat
ground/durable.py on purpose: audit/ must run alone, copied next to a trail with only ``cryptography``
installed (tests/unit/test_audit_standalone.py), so it may not import ground/.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.errors import AuditKeyError

MAC_KEY_FILE = "audit-mac.key"
SIGNING_KEY_FILE = "audit-checkpoint.ed25519"
PUBLIC_KEY_FILE = "checkpoint-key.pub"
MAC_KEY_BYTES = 32


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` mode 700 if missing; refuse it if group or others can get in."""
    try:
        os.mkdir(path, 0o700)
        fsync_dir(path.parent)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return ensure_private_dir(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise AuditKeyError(f"{path}: mode {mode:04o} lets others in; it must be 0700 (chmod 700 {path})")


def load_mac_key(key_dir: Path, create: bool) -> bytes:
    """Read the record MAC key, creating it first if ``create`` and it does not exist."""
    path = key_dir / MAC_KEY_FILE
    if create:
        _create_exclusive(path, secrets.token_bytes(MAC_KEY_BYTES).hex().encode() + b"\n")
    text = read_secret(path)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != MAC_KEY_BYTES:
        raise AuditKeyError(f"{path}: malformed: expected {MAC_KEY_BYTES * 2} hex digits")
    return key


def load_signing_key(key_dir: Path, create: bool) -> Ed25519PrivateKey:
    """Read the checkpoint signing key, creating it first if ``create`` and it does not exist."""
    path = key_dir / SIGNING_KEY_FILE
    if create:
        fresh = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _create_exclusive(path, fresh)
    try:
        key = serialization.load_pem_private_key(read_secret(path), password=None)
    except ValueError as exc:
        raise AuditKeyError(f"{path}: malformed: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path}: malformed: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a checkpoint public key (PEM). Not a secret: no mode check."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise AuditKeyError(f"{path}: missing: no checkpoint public key") from None
    except ValueError as exc:
        raise AuditKeyError(f"{path}: malformed: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path}: malformed: not an Ed25519 public key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey) -> str:
    """The fingerprint auditors pin: sha256 of the 32 raw public key bytes, in hex."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def publish_public_key(audit_dir: Path, key: Ed25519PublicKey) -> None:
    """Write the public key beside the checkpoints, or check that the one there is ours."""
    path = audit_dir / PUBLIC_KEY_FILE
    pem = public_key_pem(key)
    try:
        existing = path.read_bytes()
    except FileNotFoundError:
        _write_atomic(path, pem, 0o644)
        return
    if existing != pem:
        raise AuditKeyError(
            f"{path}: does not match the signing key in {SIGNING_KEY_FILE}; someone replaced one of them. "
            "Find out which before writing more audit records"
        )


def read_secret(path: Path) -> bytes:
    """Read a key file, refusing symlinks, non-regular files and modes that let others read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AuditKeyError(f"{path}: missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AuditKeyError(f"{path}: is a symlink; a key file must be a regular file") from None
        raise AuditKeyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise AuditKeyError(f"{path}: not a regular file")
        if mode & 0o077:
            raise AuditKeyError(
                f"{path}: mode {mode:04o} lets others read it; it must be 0600 (chmod 600 {path})"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _create_exclusive(path: Path, content: bytes) -> None:
    """Create ``path`` with ``content``, mode 600, unless it exists. Never exposes a half-written key."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and fails if another process got there first: theirs wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


def _write_atomic(path: Path, content: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

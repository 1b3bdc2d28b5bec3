"""The second factor: time-based one-time passwords (TOTP, RFC 6238) with pyotp.

Each user's secret is stored encrypted (AES-256-GCM, the user's uid as associated data, so a record
cannot be moved to another user) under a key in ``<state>/secrets/mfa_key`` (mode 600). The store is one
JSON file in the secrets directory, rewritten atomically under a file lock, because the hub and the
``enclave`` CLI (a reset) both write it.

- A code is accepted for the current 30-second step or one step either side (clock drift); the step
  accepted last is remembered and a code for that step or an earlier one is refused as a replay.
- ``lockout_after`` consecutive failures lock the factor for ``lockout_seconds``; while locked even a
  correct code is refused, so guessing gains nothing.
- Enrolment is two steps: :meth:`MfaStore.begin` draws a secret and keeps it pending (encrypted, 10
  minutes); :meth:`MfaStore.confirm` makes it the user's factor once a first code from it is right.

    python -m hub.mfa enrol-demo STATE --seed deploy/demo-directory.yaml

enrols the demo users ahead of time and writes each base32 secret to ``STATE/demo-totp/<uid>`` (mode 600),
for an authenticator app or the tests. A real site never does this: its users enrol at first login.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hmac
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pyotp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

STEP = 30
PENDING_SECONDS = 600
ISSUER = "Research enclave"


class MfaError(Exception):
    """The MFA store cannot be read or written. The message names the file."""


class Outcome(str, Enum):
    """The answer to one code."""

    OK = "ok"
    """The code is right and newer than any accepted before."""
    FAILED = "failed"
    """Wrong code (or none)."""
    REPLAY = "replay"
    """A right code for a time step already used: someone saw or replayed it."""
    LOCKED = "locked"
    """Too many failures: refused without looking at the code."""
    LOCKOUT = "lockout"
    """This failure started a lockout."""
    NOT_ENROLLED = "not_enrolled"


@dataclass(frozen=True)
class MfaSettings:
    lockout_after: int = 5
    lockout_seconds: float = 300.0
    valid_window: int = 1
    """Steps accepted either side of now: one step (30 s) of clock drift."""


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    failures: int = 0
    locked_for: float = 0.0


def matched_step(secret: str, code: str, now: float, window: int) -> int | None:
    """The time step whose code ``code`` is, within ``window`` steps of now, or None."""
    code = (code or "").strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // STEP)
    found = None
    for step in range(current - window, current + window + 1):
        if hmac.compare_digest(totp.at(step * STEP), code):  # compare all: no early exit to time
            found = step
    return found


def provisioning_uri(secret: str, uid: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=uid, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The otpauth:// URI as an inline SVG QR code (no image request, nothing written to disk)."""
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    return image.to_string(encoding="unicode")


class MfaStore:
    """Enrolments, pending enrolments, replay and lockout state of every user, encrypted at rest."""

    def __init__(
        self,
        state_dir: Path | str,
        settings: MfaSettings | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.dir = Path(state_dir) / "secrets"
        self.path = self.dir / "mfa.json"
        self.key_path = self.dir / "mfa_key"
        self.settings = settings or MfaSettings()
        self.clock = clock
        self._aead: AESGCM | None = None

    # ---- storage ------------------------------------------------------------------------------
    def _key(self) -> AESGCM:
        if self._aead is None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.key_path.exists():
                self._create_key()
            key = self.key_path.read_bytes()
            if len(key) != 32:
                raise MfaError(
                    f"{self.key_path}: not a 32-byte key ({len(key)} bytes); restore it from backup"
                )
            self._aead = AESGCM(key)
        return self._aead

    def _create_key(self) -> None:
        """Written whole to a temporary file, then linked into place: a reader never sees half a key, and
        of two processes creating it at once, one wins and both use its key."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".mfa_key.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(AESGCM.generate_key(bit_length=256))
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, self.key_path)
        except FileExistsError:
            pass  # the other writer won
        finally:
            os.unlink(tmp)

    def _seal(self, uid: str, secret: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._key().encrypt(nonce, secret.encode(), uid.encode())).decode()

    def _open(self, uid: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        try:
            return self._key().decrypt(raw[:12], raw[12:], uid.encode()).decode()
        except Exception as exc:  # InvalidTag: a changed key or a record moved from another user
            raise MfaError(f"{self.path}: {uid}'s secret does not decrypt under {self.key_path}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """Read-modify-write under an exclusive lock; written atomically (fsync, rename) on success."""
        self._key()
        fd = os.open(self.dir / ".mfa.lock", os.O_RDWR | os.O_CREAT, 0o600)  # secrets/: every file 0600
        with os.fdopen(fd, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"users": {}, "pending": {}}
        except (OSError, ValueError) as exc:
            raise MfaError(f"{self.path}: unreadable MFA store: {exc}") from exc
        data.setdefault("users", {})
        data.setdefault("pending", {})
        return data

    def _write(self, data: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".mfa.")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # ---- enrolment ----------------------------------------------------------------------------
    def enrolled(self, uid: str) -> bool:
        with self._locked() as data:
            return uid in data["users"]

    def begin(self, uid: str, context: dict | None = None) -> tuple[str, str]:
        """A new pending secret for ``uid``; returns (nonce, secret). ``context`` (e.g. the groups) is kept
        with it. The nonce goes into the browser's signed cookie, binding the pending enrolment to it."""
        secret = pyotp.random_base32()
        nonce = secrets.token_urlsafe(16)
        with self._locked() as data:
            now = self.clock()
            data["pending"] = {k: v for k, v in data["pending"].items() if v["expires"] > now}
            data["pending"][uid] = {
                "nonce": nonce,
                "secret": self._seal(uid, secret),
                "expires": now + PENDING_SECONDS,
                "context": context or {},
            }
        return nonce, secret

    def pending(self, uid: str, nonce: str) -> tuple[str, dict] | None:
        """(secret, context) of the pending enrolment bound to ``nonce``, or None (none, expired, other)."""
        with self._locked() as data:
            entry = data["pending"].get(uid)
            if (
                not entry
                or entry["expires"] <= self.clock()
                or not hmac.compare_digest(entry["nonce"], nonce)
            ):
                return None
            return self._open(uid, entry["secret"]), entry["context"]

    def confirm(self, uid: str, nonce: str, code: str) -> Verdict:
        """Make the pending secret the user's factor if ``code`` is right for it."""
        with self._locked() as data:
            entry = data["pending"].get(uid)
            now = self.clock()
            if not entry or entry["expires"] <= now or not hmac.compare_digest(entry["nonce"], nonce):
                return Verdict(Outcome.NOT_ENROLLED)
            secret = self._open(uid, entry["secret"])
            step = matched_step(secret, code, now, self.settings.valid_window)
            if step is None:
                entry["attempts"] = entry.get("attempts", 0) + 1
                if entry["attempts"] >= self.settings.lockout_after:  # guessing a first code: start again
                    del data["pending"][uid]
                    return Verdict(Outcome.LOCKOUT, entry["attempts"])
                return Verdict(Outcome.FAILED, entry["attempts"])
            del data["pending"][uid]
            data["users"][uid] = {
                "secret": self._seal(uid, secret),
                "enrolled": int(now),
                "last_step": step,
                "failures": 0,
                "locked_until": 0,
            }
        return Verdict(Outcome.OK)

    def enrol(self, uid: str, secret: str | None = None) -> str:
        """Enrol directly (the demo's pre-enrolment); returns the base32 secret."""
        secret = secret or pyotp.random_base32()
        with self._locked() as data:
            data["users"][uid] = {
                "secret": self._seal(uid, secret),
                "enrolled": int(self.clock()),
                "last_step": -1,
                "failures": 0,
                "locked_until": 0,
            }
        return secret

    def reset(self, uid: str) -> bool:
        """Forget the user's factor (they enrol again at next login). True if there was one."""
        with self._locked() as data:
            data["pending"].pop(uid, None)
            return data["users"].pop(uid, None) is not None

    # ---- verification -------------------------------------------------------------------------
    def verify(self, uid: str, code: str) -> Verdict:
        with self._locked() as data:
            record = data["users"].get(uid)
            if record is None:
                return Verdict(Outcome.NOT_ENROLLED)
            now = self.clock()
            if record["locked_until"] > now:
                return Verdict(Outcome.LOCKED, record["failures"], record["locked_until"] - now)
            step = matched_step(self._open(uid, record["secret"]), code, now, self.settings.valid_window)
            if step is not None and step > record["last_step"]:
                record.update(last_step=step, failures=0, locked_until=0)
                return Verdict(Outcome.OK)
            return self._failure(record, now, Outcome.REPLAY if step is not None else Outcome.FAILED)

    def _failure(self, record: dict, now: float, outcome: Outcome) -> Verdict:
        record["failures"] += 1
        if record["failures"] >= self.settings.lockout_after:
            record["locked_until"] = now + self.settings.lockout_seconds
            failures, record["failures"] = record["failures"], 0  # a fresh count after the lockout
            return Verdict(Outcome.LOCKOUT, failures, self.settings.lockout_seconds)
        return Verdict(outcome, record["failures"])

    def last_step(self, uid: str) -> int | None:
        with self._locked() as data:
            record = data["users"].get(uid)
            return None if record is None else record["last_step"]


# ---- the demo's pre-enrolment -----------------------------------------------------------------------


def enrol_demo(state_dir: Path, uids: list[str]) -> list[str]:
    """Enrol each uid not yet enrolled and write its secret to ``state/demo-totp/<uid>`` (mode 600).
    Idempotent: an enrolled user keeps the secret already handed out."""
    store = MfaStore(state_dir)
    out = Path(state_dir) / "demo-totp"
    out.mkdir(mode=0o700, exist_ok=True)
    made = []
    for uid in uids:
        target = out / uid
        if store.enrolled(uid) and target.exists():
            continue
        secret = store.enrol(uid)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{uid}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
        made.append(uid)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.mfa", description="TOTP second factor (demo tools)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "enrol-demo", help="enrol the demo users and write their secrets to STATE/demo-totp/"
    )
    demo.add_argument("state", type=Path)
    demo.add_argument("--seed", type=Path, required=True, help="deploy/demo-directory.yaml")
    args = parser.parse_args(argv)
    import yaml

    uids = [u["uid"] for u in yaml.safe_load(args.seed.read_text())["users"]]
    made = enrol_demo(args.state, uids)
    from hub import runtime

    log = runtime.audit_log(str(args.state))
    for uid in made:
        log.append(
            actor="service:demo", action="auth.mfa", target=uid, details={"event": "enrol", "how": "demo"}
        )
    print(f"demo TOTP secrets in {args.state / 'demo-totp'}/ ({len(made)} newly enrolled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

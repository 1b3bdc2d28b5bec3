"""The TOTP store (hub/mfa.py): codes, replay, lockout, encryption at rest, pending enrolment, the demo."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor

import pyotp
import pytest

from hub.mfa import STEP, MfaError, MfaSettings, MfaStore, Outcome, enrol_demo, matched_step, qr_svg


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    return MfaStore(tmp_path, MfaSettings(lockout_after=5, lockout_seconds=300), clock=clock)


def code(secret: str, at: float) -> str:
    return pyotp.TOTP(secret).at(at)


def test_a_right_code_is_accepted_once_and_a_replay_refused(store, clock):
    secret = store.enrol("alice")
    assert store.verify("alice", code(secret, clock.now)).outcome == Outcome.OK
    assert store.verify("alice", code(secret, clock.now)).outcome == Outcome.REPLAY, "the same code twice"
    assert store.verify("alice", code(secret, clock.now - STEP)).outcome == Outcome.REPLAY, "an older code"
    clock.now += STEP
    assert store.verify("alice", code(secret, clock.now)).outcome == Outcome.OK


def test_wrong_codes_lock_the_factor_and_then_even_the_right_one_is_refused(store, clock):
    secret = store.enrol("alice")
    outcomes = [
        store.verify("alice", "000000" if code(secret, clock.now) != "000000" else "111111").outcome
        for _ in range(5)
    ]
    assert outcomes == [Outcome.FAILED] * 4 + [Outcome.LOCKOUT]
    locked = store.verify("alice", code(secret, clock.now))
    assert locked.outcome == Outcome.LOCKED and 0 < locked.locked_for <= 300
    clock.now += 301
    assert store.verify("alice", code(secret, clock.now)).outcome == Outcome.OK, "the lock ends"


def test_a_success_resets_the_failure_count(store, clock):
    secret = store.enrol("alice")
    for _ in range(4):
        store.verify("alice", "abcdef")
    clock.now += STEP
    assert store.verify("alice", code(secret, clock.now)).outcome == Outcome.OK
    assert store.verify("alice", "abcdef").failures == 1


def test_drift_of_one_step_is_accepted_two_are_not(clock):
    secret = pyotp.random_base32()
    assert matched_step(secret, code(secret, clock.now + STEP), clock.now, 1) is not None
    assert matched_step(secret, code(secret, clock.now - 2 * STEP), clock.now, 1) is None
    assert (
        matched_step(secret, "12345", clock.now, 1) is None and matched_step(secret, "", clock.now, 1) is None
    )


def test_secrets_are_encrypted_at_rest_under_a_600_key(store, tmp_path):
    secret = store.enrol("alice")
    raw = (tmp_path / "secrets" / "mfa.json").read_text()
    assert secret not in raw
    key = tmp_path / "secrets" / "mfa_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "secrets").iterdir()}
    assert set(modes.values()) == {0o600}, f"every file in secrets/ is 0600 (enclave doctor checks): {modes}"


def test_a_record_moved_to_another_user_does_not_decrypt(store, tmp_path, clock):
    store.enrol("alice")
    store.enrol("mallory")
    path = tmp_path / "secrets" / "mfa.json"
    data = json.loads(path.read_text())
    data["users"]["mallory"]["secret"] = data["users"]["alice"]["secret"]
    path.write_text(json.dumps(data))
    with pytest.raises(MfaError, match="mallory's secret does not decrypt"):
        store.verify("mallory", "123456")


def test_enrolment_needs_the_right_first_code_and_the_browser_nonce(store, clock):
    nonce, secret = store.begin("erin", {"groups": ["enclave-researchers"]})
    assert not store.enrolled("erin")
    assert store.pending("erin", "forged") is None
    assert store.confirm("erin", "forged", code(secret, clock.now)).outcome == Outcome.NOT_ENROLLED
    assert (
        store.confirm("erin", nonce, "000000" if code(secret, clock.now) != "000000" else "1").outcome
        == Outcome.FAILED
    )
    assert store.pending("erin", nonce) == (secret, {"groups": ["enclave-researchers"]})
    assert store.confirm("erin", nonce, code(secret, clock.now)).outcome == Outcome.OK
    assert store.enrolled("erin") and store.pending("erin", nonce) is None
    assert store.verify("erin", code(secret, clock.now)).outcome == Outcome.REPLAY, (
        "the confirming code is used"
    )


def test_five_wrong_first_codes_end_the_enrolment(store, clock):
    nonce, secret = store.begin("erin")
    bad = "000000" if code(secret, clock.now) != "000000" else "111111"
    outcomes = [store.confirm("erin", nonce, bad).outcome for _ in range(5)]
    assert outcomes == [Outcome.FAILED] * 4 + [Outcome.LOCKOUT]
    assert store.confirm("erin", nonce, code(secret, clock.now)).outcome == Outcome.NOT_ENROLLED


def test_a_pending_enrolment_expires(store, clock):
    nonce, secret = store.begin("erin")
    clock.now += 601
    assert store.confirm("erin", nonce, code(secret, clock.now)).outcome == Outcome.NOT_ENROLLED


def test_reset_forgets_the_factor(store):
    store.enrol("alice")
    assert store.reset("alice") is True
    assert store.verify("alice", "123456").outcome == Outcome.NOT_ENROLLED
    assert store.reset("alice") is False


def test_concurrent_writers_lose_nothing(tmp_path):
    """Separate stores (as the hub and the CLI are), the key created by whichever comes first."""
    uids = [f"u{i}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda uid: MfaStore(tmp_path).enrol(uid), uids))  # raises what a writer raised
    assert all(MfaStore(tmp_path).enrolled(uid) for uid in uids)


def test_the_demo_enrolment_writes_600_secrets_and_is_idempotent(tmp_path):
    assert enrol_demo(tmp_path, ["alice", "bob"]) == ["alice", "bob"]
    secret = (tmp_path / "demo-totp" / "alice").read_text().strip()
    assert stat.S_IMODE((tmp_path / "demo-totp" / "alice").stat().st_mode) == 0o600
    assert enrol_demo(tmp_path, ["alice", "bob"]) == []
    assert (tmp_path / "demo-totp" / "alice").read_text().strip() == secret
    store = MfaStore(tmp_path)
    assert store.verify("alice", pyotp.TOTP(secret).now()).outcome == Outcome.OK


def test_the_qr_code_is_inline_svg():
    svg = qr_svg(pyotp.TOTP(pyotp.random_base32()).provisioning_uri(name="alice", issuer_name="x"))
    assert svg.startswith("<svg") and "<script" not in svg

"""Login throttling as bookkeeping (hub/throttle.py), with a fake clock, and the username rule (hub/auth.py).
The real hub, directory and audit trail are attacked in tests/integration/test_websec.py."""

from __future__ import annotations

import pytest

from hub.auth import suspicious_username
from hub.throttle import LoginThrottle, ThrottleSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    return LoginThrottle(ThrottleSettings(**kw), clock=clock), clock


def test_the_delay_grows_past_the_free_failures_and_is_capped():
    throttle, _ = make(free_failures=2, base_delay=1.0, max_delay=5.0)
    delays = []
    for _ in range(7):
        throttle.failed("alice", "192.0.2.7")
        delays.append(throttle.delay("alice", "192.0.2.7"))
    assert delays == [0.0, 0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_user_is_locked_out_then_let_in_again():
    throttle, clock = make(user_lockout_after=5, lockout_seconds=60)
    started = [throttle.failed("alice", f"192.0.2.{i}") for i in range(5)]
    assert started[:4] == [[]] * 4 and started[4] == ["user"], "five addresses, one account: locked"
    assert throttle.locked("alice", "198.51.100.1") == ("user", 60.0)
    assert throttle.locked("bob", "198.51.100.1") is None, "other accounts are not affected"
    clock.now += 61
    assert throttle.locked("alice", "198.51.100.1") is None
    assert throttle.delay("alice", "198.51.100.1") == 0.0, "the count starts again after a lockout"


def test_a_source_is_locked_out_for_every_name():
    throttle, _ = make(source_lockout_after=4, user_lockout_after=100)
    for name in ("a", "b", "c", "d"):
        throttle.failed(name, "192.0.2.9")
    assert throttle.locked("erin", "192.0.2.9")[0] == "source"
    assert throttle.locked("erin", "192.0.2.10") is None


def test_failures_age_out_of_the_window_and_success_resets_the_user():
    throttle, clock = make(window=100, free_failures=0, base_delay=1.0)
    throttle.failed("alice", "192.0.2.1")
    clock.now += 101
    assert throttle.delay("alice", "192.0.2.2") == 0.0
    throttle.failed("alice", "192.0.2.1")
    throttle.succeeded("alice")
    assert throttle.delay("alice", "192.0.2.2") == 0.0


def test_memory_is_bounded_under_a_spray_of_names_and_addresses():
    throttle, _ = make(max_tracked=100)
    for i in range(10_000):
        throttle.failed(f"user{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle.users) == 100 and len(throttle.sources) == 100


@pytest.mark.parametrize("name", ["alice\u200b", "al\u202eice", "alice\n", "alice\x00", "\u2028alice"])
def test_invisible_and_control_characters_make_a_name_suspicious(name):
    assert suspicious_username(name)


@pytest.mark.parametrize("name", ["alice", "o'brien", "alice)(uid=*", "김민수"])
def test_ordinary_names_are_not_suspicious(name):
    assert not suspicious_username(name)


# ---- the authenticator's use of it, without a directory ------------------------------------------------


def _authenticator(tmp_path, monkeypatch, **config):
    import asyncio
    import types

    from hub.auth import EnclaveAuthenticator

    auth = EnclaveAuthenticator(
        state_dir=str(tmp_path), login_delay_base=0.01, login_delay_max=0.02, **config
    )
    calls = []

    async def directory(handler, data, username):  # every password is wrong: no model
        calls.append(username)

    monkeypatch.setattr(auth, "_directory_login", directory)
    handler = types.SimpleNamespace(request=types.SimpleNamespace(remote_ip="192.0.2.5"))

    def attempt(name):
        return asyncio.run(auth.authenticate(handler, {"username": name, "password": "guess"}))

    return auth, calls, attempt


def _logins(tmp_path, **query):
    from audit import AuditLog

    return list(AuditLog.open(tmp_path).records(action="auth.login", **query))


def test_an_invisible_character_never_reaches_the_directory_and_is_audited_escaped_once(
    tmp_path, monkeypatch
):
    _, calls, attempt = _authenticator(tmp_path, monkeypatch)
    assert attempt("alice\u200b") is None
    assert calls == []
    found = _logins(tmp_path, actor="alice\\u200b")
    assert [r["details"]["reason"] for r in found] == ["invalid username or password"]


def test_a_locked_user_gets_429_without_a_directory_bind(tmp_path, monkeypatch):
    from tornado.web import HTTPError

    _, calls, attempt = _authenticator(tmp_path, monkeypatch, login_user_lockout_after=3)
    for _ in range(3):
        assert attempt("erin") is None
    with pytest.raises(HTTPError) as refused:
        attempt("erin")
    assert refused.value.status_code == 429 and "Too many failed logins" in refused.value.log_message
    assert calls == ["erin"] * 3, "a locked user's password is not even checked"
    reasons = [r["details"]["reason"] for r in _logins(tmp_path, actor="erin")]
    assert reasons == ["invalid username or password", "lockout_started", "locked_out"]


def test_concurrent_guesses_at_one_name_cannot_outrun_the_lockout(tmp_path, monkeypatch):
    import asyncio
    import types

    from tornado.web import HTTPError

    auth, calls, _ = _authenticator(tmp_path, monkeypatch, login_user_lockout_after=3)
    handler = types.SimpleNamespace(request=types.SimpleNamespace(remote_ip="192.0.2.5"))

    async def burst():
        attempts = [auth.authenticate(handler, {"username": "erin", "password": f"g{i}"}) for i in range(20)]
        return await asyncio.gather(*attempts, return_exceptions=True)

    answers = asyncio.run(burst())
    assert len(calls) == 3, f"{len(calls)} guesses reached the directory"
    assert sum(isinstance(a, HTTPError) and a.status_code == 429 for a in answers) == 17
    assert auth._in_flight == {}, "nothing is kept once the attempts are answered"


def test_hub_cookies_are_lax_and_secure_exactly_when_the_site_is_https():
    from hub.headers import browser_settings

    plain, tls = browser_settings("http://127.0.0.1:8000"), browser_settings("https://enclave.example.org")
    assert plain["cookie_options"] == {"samesite": "Lax"}
    assert tls["cookie_options"] == {"samesite": "Lax", "secure": True}
    assert (
        plain["headers"]["X-Frame-Options"] == "DENY"
        and "object-src 'none'" in plain["headers"]["Content-Security-Policy"]
    )

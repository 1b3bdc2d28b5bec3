"""Identity that takes effect now, against a real slapd, hub, engine and Chromium.

- The second factor: first-login enrolment in the browser (QR code, a first code to confirm), a correct
  code accepted, a wrong and a replayed code refused, a lockout after repeated failures, an
  administrator's reset through the directory-authenticated CLI; each step on the audit trail.
- Revocation: a researcher with a running server, a browser session and an API token is removed from
  enclave-researchers with ldapmodify; within 60 s (measured and printed) the server is gone, the cookie
  and the token are refused at the hub, and the token is refused at the export service. A disabled and a
  deleted user lose their session the same way.
- The directory stopped mid-session: logins and spawns refused (fail closed), the running server survives
  the grace period and is stopped after it; outage, refusal, grace expiry and recovery on the trail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pyotp
import pytest
import requests
import yaml

from audit import AuditLog
from hub.mfa import STEP, MfaStore
from tests.harness import PYTHON, REPO, Directory, Hub, HubClient, wait_for

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
]
RESEARCHERS = "enclave-researchers"


def records(hub: Hub, target: str | None = None, **query) -> list[dict]:
    found = AuditLog.open(hub.state).records(**query)
    return [r for r in found if target is None or r.get("target") == target]


def mfa_events(hub: Hub, uid: str) -> list[tuple[str, str]]:
    return [(r["details"]["event"], r["outcome"]) for r in records(hub, action="auth.mfa", target=uid)]


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


@pytest.fixture(scope="module")
def ihub(tmp_path_factory, directory):
    h = Hub(tmp_path_factory.mktemp("identity"), directory).prepare()
    try:
        h.start()
        yield h
    finally:
        h.teardown()


# ---- the second factor -----------------------------------------------------------------------------


def test_first_login_enrols_the_second_factor_in_the_browser(ihub):
    """A site without pre-enrolment: erin's correct password leads to the enrolment page, whose QR code
    and key give the codes; a wrong first code is refused, the right one logs her in."""
    from playwright.sync_api import sync_playwright

    MfaStore(ihub.state).reset("erin")  # as a real site: nobody is enrolled ahead of time
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{ihub.url}/hub/login")
        assert page.locator("#otp_input").count() == 1, "JupyterHub's own OTP field is on the form"
        page.fill("#username_input", "erin")
        page.fill("#password_input", "demo-erin")
        page.click("#login_submit")
        page.wait_for_url(re.compile(r".*/hub/mfa/enrol$"))
        assert page.locator("#mfa-qr svg").count() == 1, "the QR code is an inline SVG"
        secret = page.inner_text("#mfa-secret").strip()
        totp = pyotp.TOTP(secret)
        page.fill("#code_input", wrong(totp.now()))
        page.click("#mfa_submit")
        assert "not right" in page.inner_text("#mfa-error")
        page.fill("#code_input", totp.now())
        page.click("#mfa_submit")
        page.wait_for_url(re.compile(r".*/hub/home$"))
        browser.close()
    events = mfa_events(ihub, "erin")
    assert events[-3:] == [("enrol_pending", "ok"), ("enrol_failed", "denied"), ("enrol", "ok")], events
    logins = [
        r["details"]["reason"]
        for r in records(ihub, action="auth.login", actor="erin")
        if r["outcome"] == "ok"
    ]
    assert logins[-1] == "password verified by LDAP; second factor enrolled"

    # the enrolled secret now guards every login
    time.sleep(STEP - time.time() % STEP + 0.5)  # the next step: the confirming code is spent
    assert HubClient(ihub, "erin", otp=totp.now()).login().status_code == 302
    assert HubClient(ihub, "erin", otp="").login().status_code == 403, "no code, no login"


def test_the_enrolment_page_needs_a_pending_enrolment_of_this_browser(ihub):
    """Without a correct password first there is no secret to see, and a forged cookie is not one."""
    session = requests.Session()
    response = session.get(f"{ihub.url}/hub/mfa/enrol", allow_redirects=False, timeout=10)
    assert response.status_code == 302 and "/hub/login" in response.headers["Location"]
    session.cookies.set("enclave-mfa-enrol", '{"uid": "alice", "nonce": "x"}', path="/hub/")
    response = session.get(f"{ihub.url}/hub/mfa/enrol", allow_redirects=False, timeout=10)
    assert response.status_code == 302, "an unsigned cookie is ignored"


def test_codes_right_wrong_replayed_then_locked_out_then_reset_by_an_admin(ihub, tmp_path):
    uid = "bob"
    code = ihub.totp_code(uid)
    assert HubClient(ihub, uid, otp=code).login().status_code == 302, "a correct code"
    replay = HubClient(ihub, uid, otp=code).login()
    assert replay.status_code == 403, "the same code a second time"
    assert HubClient(ihub, uid, otp=wrong(ihub.totp_code(uid))).login().status_code == 403, "a wrong code"
    for _ in range(3):
        assert HubClient(ihub, uid, otp="000000").login().status_code == 403
    locked = HubClient(ihub, uid).login()  # now even the right code: the fifth failure locked the factor
    assert locked.status_code == 429 and "one-time codes" in locked.text
    events = mfa_events(ihub, uid)
    assert ("ok", "ok") in events and ("replay", "denied") in events
    assert events.count(("failed", "denied")) == 4 and ("lockout", "denied") in events, events
    refused = [
        r for r in records(ihub, action="auth.login", actor=uid) if r["details"].get("reason") == "mfa_locked"
    ]
    assert refused, "the refusal while locked is on the trail (aggregated)"

    # a researcher cannot reset anyone's factor; an administrator can, proving it with a directory login
    def reset(operator: str) -> subprocess.CompletedProcess:
        pw = tmp_path / f"{operator}.pw"
        pw.write_text(f"demo-{operator}")
        return subprocess.run(
            [PYTHON, "-m", "hub.cli", "user", "reset-mfa", uid, "--as", operator, "--password-file", str(pw)],
            cwd=REPO,
            env=ihub.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    denied = reset("alice")
    assert denied.returncode == 1 and "not in enclave-admins" in denied.stderr
    assert MfaStore(ihub.state).enrolled(uid), "a refused reset changes nothing"
    done = reset("adam")
    assert done.returncode == 0, done.stderr
    assert not MfaStore(ihub.state).enrolled(uid)
    resets = [r for r in records(ihub, action="auth.mfa", target=uid) if r["details"]["event"] == "reset"]
    assert resets and resets[-1]["actor"] == "adam"
    # bob's next login (the lockout went with the factor) starts a new enrolment
    again = HubClient(ihub, uid, otp="").login()
    assert again.status_code == 302 and again.headers["Location"].endswith("/hub/mfa/enrol")
    MfaStore(ihub.state).enrol(uid, ihub.totp_secret(uid))  # leave bob as the demo has him


# ---- revocation within a minute --------------------------------------------------------------------


def token_for(client: HubClient) -> str:
    response = client.api("POST", f"/users/{client.user}/tokens", json={"note": "revocation test"})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def hub_accepts_cookie(client: HubClient) -> bool:
    return client.api("GET", "/user").status_code == 200


def hub_accepts_token(hub: Hub, token: str) -> bool:
    return (
        requests.get(
            f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=10
        ).status_code
        == 200
    )


def exports_accepts_token(hub: Hub, token: str) -> bool:
    return (
        requests.get(
            f"{hub.url}/services/exports/api/whoami", headers={"Authorization": f"token {token}"}, timeout=10
        ).status_code
        == 200
    )


def container_exists(hub: Hub, user: str, project: str) -> bool:
    try:
        hub.container(user, project)
        return True
    except docker.errors.NotFound:
        return False


def time_until_all(checks: dict, timeout: float) -> dict[str, float]:
    """Seconds until each check became false (polled once a second)."""
    start, done = time.monotonic(), {}
    while len(done) < len(checks) and time.monotonic() - start < timeout:
        for name, still in checks.items():
            if name not in done and not still():
                done[name] = round(time.monotonic() - start, 1)
        time.sleep(1)
    return done


def test_leaving_enclave_researchers_ends_server_cookie_and_tokens_within_a_minute(ihub, directory):
    alice = HubClient(ihub, "alice")
    assert alice.login().status_code == 302
    alice.spawn("demo-cardio")
    token = token_for(alice)
    assert hub_accepts_cookie(alice) and hub_accepts_token(ihub, token)
    assert exports_accepts_token(ihub, token), "the token works at the export service before"

    directory.remove_from_group("alice", RESEARCHERS)
    try:
        taken = time_until_all(
            {
                "server": lambda: container_exists(ihub, "alice", "demo-cardio"),
                "cookie": lambda: hub_accepts_cookie(alice),
                "hub token": lambda: hub_accepts_token(ihub, token),
                "exports token": lambda: exports_accepts_token(ihub, token),
            },
            timeout=90,
        )
        print(f"\nrevocation of alice (left {RESEARCHERS}), seconds until refused: {taken}")
        assert set(taken) == {"server", "cookie", "hub token", "exports token"}, f"not all revoked: {taken}"
        assert max(taken.values()) <= 60, taken
        home = alice.session.get(f"{ihub.url}/hub/home", allow_redirects=False, timeout=10)
        assert home.status_code in (302, 403) and (
            home.status_code == 403 or "/hub/login" in home.headers["Location"]
        )
        assert HubClient(ihub, "alice").login().status_code == 403, "and she cannot log in again"
        revoked = records(ihub, action="auth.revoke", target="alice")
        assert revoked and revoked[0]["details"]["reason"] == "not_accredited"
        assert "demo-cardio" in revoked[0]["details"]["stopped"] and revoked[0]["details"]["tokens"] >= 1
        assert RESEARCHERS in revoked[0]["details"]["groups"], "taken out of the hub group too"
    finally:
        directory.add_to_group("alice", RESEARCHERS)
    # accredited again: she logs in as before (the directory is the source of truth both ways)
    wait_for(lambda: HubClient(ihub, "alice").login().status_code == 302, 60, "alice to be admitted again")


@pytest.mark.parametrize("how", ["disable", "delete"])
def test_a_disabled_or_deleted_user_loses_their_session_within_a_minute(ihub, directory, how):
    uid = f"ident{how[:3]}"
    directory.add_user(uid, [RESEARCHERS])
    try:
        secret = MfaStore(ihub.state).enrol(uid)
        client = HubClient(ihub, uid, otp=pyotp.TOTP(secret).now())
        assert client.login().status_code == 302
        token = token_for(client)
        if how == "disable":
            directory.disable(uid)
        else:
            directory.delete_user(uid, [RESEARCHERS])
        taken = time_until_all(
            {"cookie": lambda: hub_accepts_cookie(client), "token": lambda: hub_accepts_token(ihub, token)},
            timeout=90,
        )
        print(f"\n{how}d user {uid}, seconds until refused: {taken}")
        assert set(taken) == {"cookie", "token"} and max(taken.values()) <= 60, taken
        reason = {"disable": "disabled", "delete": "deleted"}[how]
        wait_for(lambda: records(ihub, action="auth.revoke", target=uid), 30, f"auth.revoke of {uid}")
        assert records(ihub, action="auth.revoke", target=uid)[0]["details"]["reason"] == reason
    finally:
        if how == "disable":
            directory.delete_user(uid, [RESEARCHERS])


# ---- the directory stopped mid-session -------------------------------------------------------------


@pytest.fixture
def outage_hub(tmp_path_factory):
    """A hub with its own directory (this test stops it) and a short grace period."""
    root = Path(tempfile.mkdtemp(prefix="enclave-test-outage-", dir="/var/tmp"))
    root.chmod(0o755)
    own = Directory(root).start()
    h = Hub(tmp_path_factory.mktemp("outage"), own, env_extra={"ENCLAVE_DIRECTORY_EVERY": "3"}).prepare()
    site = yaml.safe_load((h.policy / "site.yaml").read_text())
    site["ldap"]["outage_grace_seconds"] = 25
    (h.policy / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    try:
        h.start()
        yield h
    finally:
        h.teardown()
        own.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_directory_outage_refuses_logins_and_spawns_and_keeps_servers_for_the_grace_period(outage_hub):
    h = outage_hub
    alice, bob = HubClient(h, "alice"), HubClient(h, "bob")
    assert alice.login().status_code == 302 and bob.login().status_code == 302
    alice.spawn("demo-cardio")

    h.directory.stop()
    down = time.monotonic()
    refused = HubClient(h, "erin").login()
    assert refused.status_code == 503 and "directory" in refused.text.lower(), "a new login fails closed"
    spawn = bob.start("demo-oncology")
    assert spawn.status_code == 503 and "directory" in spawn.text.lower(), (
        f"a spawn fails closed: {spawn.text}"
    )
    wait_for(
        lambda: [r for r in records(h, action="auth.directory") if r["details"]["state"] == "outage"],
        20,
        "the outage on the trail",
    )
    time.sleep(max(0.0, 15 - (time.monotonic() - down)))
    assert (
        container_exists(h, "alice", "demo-cardio")
        and h.container("alice", "demo-cardio").status == "running"
    )
    assert hub_accepts_cookie(alice), "her session continues during the grace period"

    wait_for(
        lambda: not container_exists(h, "alice", "demo-cardio"), 60, "the server to stop after the grace"
    )
    lasted = time.monotonic() - down
    print(f"\ndirectory down: alice's server stopped {lasted:.0f}s after (grace 25 s)")
    assert lasted >= 25, "not before the grace period ended"
    states = [r["details"]["state"] for r in records(h, action="auth.directory")]
    assert states[:2] == ["outage", "grace_expired"], states
    logins = [r["details"]["reason"] for r in records(h, action="auth.login", actor="erin")]
    assert any("directory unreachable" in reason for reason in logins), logins
    spawns = [r for r in records(h, action="server.spawn", actor="bob") if r["outcome"] == "denied"]
    assert spawns and spawns[-1]["details"]["reason"] == "directory_unreachable"

    h.directory.start()
    wait_for(
        lambda: "restored" in [r["details"]["state"] for r in records(h, action="auth.directory")],
        30,
        "the recovery on the trail",
    )
    assert HubClient(h, "erin").login().status_code == 302, "logins work again"


# ---- bounded sessions -------------------------------------------------------------------------------


@pytest.fixture
def short_sessions(tmp_path_factory, directory):
    """Idle logout after 6 s, refreshed every 2 s: the real mechanism, on a test's clock."""
    h = Hub(
        tmp_path_factory.mktemp("sessions"),
        directory,
        hub_args=[
            "--EnclaveAuthenticator.idle_logout_seconds=6",
            "--EnclaveAuthenticator.auth_refresh_age=2",
        ],
    )
    h.prepare()
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def test_sessions_are_bounded_idle_logout_and_logout_revokes_tokens(short_sessions):
    h = short_sessions
    alice = HubClient(h, "alice")
    response = alice.login()
    assert response.status_code == 302
    cookie = next(c for c in alice.session.cookies if c.name.startswith("jupyterhub-hub-login"))
    lifetime = cookie.expires - time.time()
    assert 11.5 * 3600 < lifetime <= 12 * 3600 + 60, (
        f"the hub cookie lives session.max_hours (12 h): {lifetime}"
    )

    # busy: requests more often than the idle limit keep the session
    for _ in range(5):
        assert hub_accepts_cookie(alice)
        time.sleep(2.5)
    time.sleep(8)  # idle longer than the limit
    assert not hub_accepts_cookie(alice), "an idle session must log in again"
    idle = [
        r for r in records(h, action="auth.logout", actor="alice") if r["details"].get("reason") == "idle"
    ]
    assert idle, "the idle logout is on the trail"

    # logout revokes the tokens issued in the session
    bob = HubClient(h, "bob")
    assert bob.login().status_code == 302
    token = token_for(bob)
    assert hub_accepts_token(h, token)
    bob.session.get(f"{h.url}/hub/logout", timeout=10)
    assert not hub_accepts_token(h, token), "a token must not outlive the logout"
    logout = records(h, action="auth.logout", actor="bob")
    assert logout and logout[-1]["details"]["tokens_revoked"] >= 1

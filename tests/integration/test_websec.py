"""The web-security pass (issue 18) and refusal floods at the export door (issue 10 section 4), attacked for
real: a hub of its own with tight throttling settings, the real directory and proxy, alice's real
container, and checkers' browser sessions through the proxy.

- blinding: before dave reviews, neither he nor alice learns that carol reviewed, or when;
- login guessing: delayed, then locked out (the right password too), audited as a few records with counts,
  and the hub's event loop keeps serving meanwhile;
- an invisible character in a username: the normal refusal, audited escaped;
- no existence oracle between a missing request and someone else's;
- security headers and cookie attributes on hub pages, service pages, the 404 page and static files;
- a planted ``_xsrf`` cookie cannot lock a checker out, and a POST without the token is refused and audited;
- 200 refused export requests from inside the container leave a handful of records that keep the count.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from audit import AuditLog
from tests.harness import Hub, HubClient, docker_exec, wait_for

pytestmark = pytest.mark.integration

EXPORTS = "/services/exports/"
WINDOW = 5  # seconds: the refusal-aggregation window of this hub (logins and exports)
LOCKOUT = 12  # seconds a username stays locked
THROTTLE = [
    "--EnclaveAuthenticator.login_free_failures=2",
    "--EnclaveAuthenticator.login_delay_base=0.2",
    "--EnclaveAuthenticator.login_delay_max=0.5",
    "--EnclaveAuthenticator.login_user_lockout_after=4",
    f"--EnclaveAuthenticator.login_lockout_seconds={LOCKOUT}",
    f"--EnclaveAuthenticator.login_refusal_window={WINDOW}",
]


@pytest.fixture(scope="module")
def tight(tmp_path_factory, directory):
    """A hub of its own: its throttling and refusal windows are short, and tests lock users out on it."""
    h = Hub(
        tmp_path_factory.mktemp("websec"),
        directory,
        hub_args=THROTTLE,
        env_extra={"ENCLAVE_EXPORTS_REFUSAL_WINDOW": str(WINDOW)},
    ).prepare()
    try:
        h.start()
        yield h
    finally:
        h.teardown()


@pytest.fixture(scope="module")
def alice(tight):
    client = HubClient(tight, "alice")
    assert client.login().status_code == 302
    client.spawn("demo-cardio")
    container = tight.container("alice", "demo-cardio")
    table = "group,count\\nA,120\\nB,45\\n"
    assert docker_exec(container, f"mkdir -p /workspace/r && printf '{table}' > /workspace/r/t.csv")[0] == 0
    yield client, container
    client.stop("demo-cardio")


def browser(hub, user: str) -> HubClient:
    """A logged-in session that has also been through the export service's OAuth."""
    client = HubClient(hub, user)
    assert client.login().status_code == 302
    assert client.session.get(f"{hub.url}{EXPORTS}", timeout=30).status_code == 200
    return client


def page_token(client: HubClient, path: str) -> str:
    page = client.session.get(f"{client.hub.url}{EXPORTS}{path}", timeout=30)
    assert page.status_code == 200, page.text[-300:]
    return re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)


def new_request(container) -> str:
    code, out = docker_exec(
        container,
        [
            "enclave-export",
            "--json",
            "request",
            "r/t.csv",
            "--context",
            "counts per group",
            "--controls",
            "all >= 10",
        ],
    )
    assert code == 0, out
    return json.loads(out)["id"]


def records(hub, **query) -> list[dict]:
    return list(AuditLog.open(hub.state).records(**query))


def total(found: list[dict]) -> int:
    """Refusals a set of records stands for: a full record is one, a summary carries its repeats."""
    return sum(r["details"]["repeated"] if r["details"].get("aggregated") else 1 for r in found)


# ---- 2. blinding ---------------------------------------------------------------------------------------


def test_before_dave_reviews_nobody_learns_who_reviewed_first_or_when(tight, alice):
    _, container = alice
    rid = new_request(container)
    time.sleep(1.1)  # pages show times to the second: keep carol's review apart from the submission
    carol = browser(tight, "carol")
    token = page_token(carol, f"requests/{rid}")
    api = f"{tight.url}{EXPORTS}api/requests/{rid}"
    vote = carol.session.post(
        f"{api}/vote",
        json={"path": "r/t.csv", "decision": "approve", "comment": "carol says fine"},
        headers={"X-XSRFToken": token},
        timeout=30,
    )
    assert vote.status_code == 200, vote.text
    review = carol.session.post(f"{api}/review", json={}, headers={"X-XSRFToken": token}, timeout=30)
    assert review.json()["status"] == "PARTIALLY_REVIEWED"
    carol_at = next(h["at"] for h in review.json()["history"] if h["reason"] == "first review submitted")

    dave = browser(tight, "dave")
    alice_web = browser(tight, "alice")
    _, shown = docker_exec(container, ["enclave-export", "--json", "show", rid])
    answers = {
        "dave api": dave.session.get(api, timeout=30).text,
        "dave page": dave.session.get(f"{tight.url}{EXPORTS}requests/{rid}", timeout=30).text,
        "dave queue": dave.session.get(f"{tight.url}{EXPORTS}api/requests", timeout=30).text,
        "alice page": alice_web.session.get(f"{tight.url}{EXPORTS}requests/{rid}", timeout=30).text,
        "alice container": shown,
    }
    for who, text in answers.items():
        assert "carol" not in text, f"{who} names carol before the round closes"
        assert "first review submitted" not in text, who
        assert carol_at not in text and carol_at[:19].replace("T", " ") not in text, f"{who} shows when"
    for who in ("dave api", "alice container"):
        body = json.loads(answers[who])
        assert body["status"] == "PARTIALLY_REVIEWED"
        assert body["history"][-1]["actor"] is None and body["history"][-1]["at"] is None
        assert body["updated_at"] < carol_at, f"{who}: updated_at moved with carol's review"


# ---- 7. a planted _xsrf cookie; CSRF still holds ---------------------------------------------------------


def test_a_planted_xsrf_cookie_does_not_lock_a_checker_out(tight, alice):
    _, container = alice
    rid = new_request(container)
    bob = browser(tight, "bob")
    planted = bob.session.cookies.get("_xsrf", path=EXPORTS)
    assert planted, "bob holds a validly signed _xsrf of his own session"
    dave = browser(tight, "dave")
    token = page_token(dave, f"requests/{rid}")
    file_id = re.search(
        r'name="file_id" value="(\d+)"',
        dave.session.get(f"{tight.url}{EXPORTS}requests/{rid}", timeout=30).text,
    ).group(1)
    # what a page on the same host, another port, can do: a cookie on a narrower path comes first
    dave.session.cookies.set("_xsrf", planted, domain="127.0.0.1", path=f"{EXPORTS}requests/")
    time.sleep(1.1)
    r = dave.session.post(
        f"{tight.url}{EXPORTS}requests/{rid}/vote",
        allow_redirects=False,
        timeout=30,
        data={"_xsrf": token, "file_id": file_id, "decision": "approve"},
    )
    assert r.status_code == 302, r.text[-400:]
    mine = dave.session.get(f"{tight.url}{EXPORTS}api/requests/{rid}", timeout=30).json()
    assert [v["reviewer"] for f in mine["files"] for v in f["votes"]] == ["dave"]

    # CSRF holds: without this session's token, nothing changes, and the attempt is on the trail
    for forged in ({}, {"_xsrf": planted}):
        r = dave.session.post(
            f"{tight.url}{EXPORTS}requests/{rid}/withdraw", allow_redirects=False, timeout=30, data=forged
        )
        assert r.status_code == 403 and "_xsrf" in r.text
    assert (
        dave.session.get(f"{tight.url}{EXPORTS}api/requests/{rid}", timeout=30).json()["status"]
        == "SUBMITTED"
    )
    refused = [
        r
        for r in records(tight, action="export.refused", actor="dave")
        if r["details"]["reason"] in ("xsrf_missing", "xsrf_invalid")
    ]
    assert {r["details"]["reason"] for r in refused} == {"xsrf_missing", "xsrf_invalid"}


# ---- 5. no existence oracle ------------------------------------------------------------------------------


def test_someone_elses_request_answers_like_a_missing_one(tight, alice):
    _, container = alice
    rid = new_request(container)
    bob = browser(tight, "bob")
    missing = "r" + "0" * 19
    for path in (
        "api/requests/{}",
        "requests/{}",
        "api/requests/{}/files/1/content",
        "requests/{}/download/1",
    ):
        theirs = bob.session.get(f"{tight.url}{EXPORTS}{path.format(rid)}", timeout=30)
        none = bob.session.get(f"{tight.url}{EXPORTS}{path.format(missing)}", timeout=30)
        assert theirs.status_code == none.status_code == 404, path
        assert theirs.text.replace(rid, "<id>") == none.text.replace(missing, "<id>"), path
        assert "alice" not in theirs.text


# ---- 6. headers and cookies ------------------------------------------------------------------------------


def _security_headers(response, what: str, csp: str) -> None:
    h = response.headers
    assert h.get("X-Content-Type-Options") == "nosniff", what
    assert h.get("X-Frame-Options") == "DENY", what
    assert (
        csp in h.get("Content-Security-Policy", "")
        and "frame-ancestors 'none'" in h["Content-Security-Policy"]
    ), what
    assert h.get("Referrer-Policy") in ("no-referrer", "same-origin"), what


def test_hub_pages_send_the_security_headers_and_lax_cookies(tight):
    anonymous = requests.get(f"{tight.url}/hub/login", timeout=30)
    _security_headers(anonymous, "hub login page", "default-src 'self'")
    assert "object-src 'none'" in anonymous.headers["Content-Security-Policy"]
    client = HubClient(tight, "carol")
    login = client.login()
    cookies = login.raw.headers.getlist("Set-Cookie")
    assert cookies and all("SameSite=Lax" in c or "SameSite=Strict" in c for c in cookies), cookies
    home = client.session.get(f"{tight.url}/hub/home", timeout=30)
    assert home.status_code == 200
    _security_headers(home, "hub home page", "default-src 'self'")


def test_service_pages_404_and_static_files_send_the_security_headers(tight):
    carol = HubClient(tight, "carol")
    assert carol.login().status_code == 302
    queue = carol.session.get(f"{tight.url}{EXPORTS}queue", timeout=30)
    assert queue.status_code == 200
    session_cookies = [
        c
        for r in queue.history
        for c in r.raw.headers.getlist("Set-Cookie")
        if "oauth-state" not in c.split("=", 1)[0] and not c.startswith("_xsrf") and EXPORTS in c
    ]
    assert session_cookies and all("SameSite=Strict" in c and "HttpOnly" in c for c in session_cookies)
    answers = {
        "queue page": queue,
        "404 page": carol.session.get(f"{tight.url}{EXPORTS}no/such/page", timeout=30),
        "static file": requests.get(f"{tight.url}{EXPORTS}static/style.css", timeout=30),
    }
    for what, response in answers.items():
        _security_headers(response, what, "default-src 'none'")
    assert answers["404 page"].status_code == 404 and answers["static file"].status_code == 200


# ---- 3, 4. login throttling, invisible characters --------------------------------------------------------


def login(hub, user: str, password: str) -> requests.Response:
    return HubClient(hub, user, password).login()


def test_password_guessing_is_delayed_then_locked_out_and_audited(tight):
    statuses, times = [], []
    for _ in range(6):
        start = time.monotonic()
        statuses.append(login(tight, "erin", "guess").status_code)
        times.append(time.monotonic() - start)
    assert statuses == [403, 403, 403, 403, 429, 429], statuses
    assert times[2] >= 0.2 and times[3] >= 0.4, f"no growing delay: {times}"
    locked = login(tight, "erin", "demo-erin")
    assert locked.status_code == 429 and "Too many failed logins" in locked.text, "right password refused"
    time.sleep(WINDOW + 6)  # the window closes and the hub's timer writes the counts
    erin = [r for r in records(tight, action="auth.login", actor="erin") if r["outcome"] == "denied"]
    assert len(erin) <= 6, f"{len(erin)} records for 7 refusals: not aggregated"
    by_reason = {}
    for r in erin:
        by_reason[r["details"]["reason"]] = by_reason.get(r["details"]["reason"], 0) + total([r])
    assert by_reason == {"invalid username or password": 4, "lockout_started": 1, "locked_out": 3}, by_reason
    wait_for(
        lambda: login(tight, "erin", "demo-erin").status_code == 302, LOCKOUT + 10, "erin's lockout to end"
    )


def test_a_flood_of_wrong_passwords_does_not_stall_the_hub(tight):
    def guess(i: int) -> int:
        return login(tight, "zed", f"guess-{i}").status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        flood = [pool.submit(guess, i) for i in range(60)]
        slowest = 0.0
        while not all(f.done() for f in flood):
            start = time.monotonic()
            assert requests.get(f"{tight.url}/hub/health", timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.2)
    assert slowest < 2.0, f"the hub answered /hub/health in {slowest:.1f}s during the flood"
    assert {f.result() for f in flood} <= {403, 429} and 429 in {f.result() for f in flood}
    time.sleep(WINDOW + 6)
    zed = records(tight, action="auth.login", actor="zed")
    attempts = [r for r in zed if r["details"]["reason"] != "lockout_started"]
    assert len(zed) <= 8 and total(attempts) == 60, (len(zed), total(attempts))
    checked = total([r for r in zed if r["details"]["reason"] == "invalid username or password"])
    print(f"60 concurrent guesses: {checked} reached the directory, slowest /hub/health {slowest:.2f}s")
    assert checked == 4, "guesses at one name wait for each other: only the lockout's number is checked"


def test_an_invisible_character_in_a_username_is_refused_and_audited_escaped(tight):
    response = login(tight, "alice\u200b", "demo-alice")
    assert response.status_code == 403 and "Invalid username or password" in response.text
    found = records(tight, action="auth.login", actor="alice\\u200b")
    assert found and found[0]["outcome"] == "denied"
    assert login(tight, "alice", "demo-alice").status_code == 302, "alice herself is not affected"


# ---- issue 10 section 4: refusals cannot flood the trail -------------------------------------------------

FLOOD = """
import contextlib, io
from enclave_export import cli
name = "evil" + "\\u200b" * 300 + ".svg"
codes = []
for _ in range(200):
    with contextlib.redirect_stderr(io.StringIO()):
        codes.append(cli.main(["request", name, "--context", "c", "--controls", "c"]))
print(sorted(set(codes)))
"""


def test_a_flood_of_refused_export_requests_leaves_few_records_with_the_count(tight, alice):
    _, container = alice
    before = len(records(tight, action="export.refused", actor="alice"))
    start = time.monotonic()
    code, out = docker_exec(container, ["/opt/notebook/bin/python", "-c", FLOOD], timeout=300)
    took = time.monotonic() - start
    assert code == 0 and out.strip() == "[1]", out
    time.sleep(WINDOW + 12)  # the window closes and the service's timer writes the count
    flood = records(tight, action="export.refused", actor="alice")[before:]
    windows = int(took // WINDOW) + 2  # the flood spans this many windows at most
    print(f"200 refused export requests in {took:.1f}s: {len(flood)} records")
    assert len(flood) <= 2 * windows, f"{len(flood)} records for 200 refusals over {took:.0f}s"
    assert total(flood) == 200
    message = flood[0]["details"]["message"]
    assert "\u200b" not in message and "\\u200b" in message and len(message) <= 520


# ---- keep holding: no open redirect at the login ---------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["https://192.0.2.1/", "//192.0.2.1/x", "/\\192.0.2.1/x", "https:192.0.2.1", "javascript:alert(1)"],
)
def test_the_login_never_redirects_off_site(tight, target):
    client = HubClient(tight, "carol")
    page = client.session.get(f"{tight.url}/hub/login", params={"next": target}, timeout=10)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    data = {
        "username": "carol",
        "password": "demo-carol",
        "otp": tight.totp_code("carol"),
        **({"_xsrf": xsrf.group(1)} if xsrf else {}),
    }
    response = client.session.post(
        f"{tight.url}/hub/login", params={"next": target}, data=data, allow_redirects=False, timeout=30
    )
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    resolved = urllib.parse.urlsplit(urllib.parse.urljoin(tight.url + "/hub/login", location))
    assert resolved.netloc == urllib.parse.urlsplit(tight.url).netloc, location

"""The export service under a web-security review (issue 18, issue 10 section 4), over real HTTP with a fake
hub: blinding of who reviewed and when, one answer for "no such request" and "not yours", security headers
on every answer, session-bound xsrf tokens that a planted cookie cannot break, and refusals that cannot
flood the trail."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from exports.domain import FileDecision, RequestStatus, Visibility
from exports.testing import admin, checker, create_request_at_status, make_env, researcher, serve

S = RequestStatus
ALICE, ALICE_WEB = researcher("alice"), researcher("alice", in_container=False)
BOB, BOB_WEB = researcher("bob", "demo-oncology"), researcher("bob", "demo-oncology", in_container=False)
CAROL, DAVE, ERIN_WEB = checker("carol"), checker("dave"), researcher("erin", in_container=False)


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


@pytest.fixture
def svc(env):
    with serve(env) as served:
        yield served


def api(svc, who, method, path, **kw):
    headers = {"Authorization": f"token {svc.token(who)}"}
    return requests.request(method, svc.url + path, headers=headers, timeout=30, **kw)


def xsrf_of(page: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)


# ---------------------------------------------------------------------------------------------------------
# 2. blinding: who reviewed, and when


def carol_reviewed_first(env) -> str:
    """carol votes (with a checker-only comment) and submits her review; dave has not reviewed yet."""
    rid = create_request_at_status(env, S.SUBMITTED)
    time.sleep(1.1)  # the page shows times to the second: keep carol's apart from the submission
    wf = env.workflow
    f = wf.get(CAROL, rid).output_files[0]
    wf.vote(CAROL, rid, f.id, FileDecision.APPROVED, "fine by me")
    wf.submit_review(CAROL, rid)
    assert env.storage.get(rid).status is S.PARTIALLY_REVIEWED
    return rid


def test_before_dave_reviews_nobody_learns_who_reviewed_or_when(svc, env):
    rid = carol_reviewed_first(env)
    carol_review = env.storage.get(rid).reviews[0].at
    submitted = next(h.at for h in env.storage.get(rid).history if h.to_status is S.SUBMITTED)
    answers = {
        "dave api": api(svc, DAVE, "GET", f"api/requests/{rid}"),
        "dave page": svc.browser(DAVE).get(svc.url + f"requests/{rid}", timeout=30),
        "alice api (container)": api(svc, ALICE, "GET", f"api/requests/{rid}"),
        "alice page": svc.browser(ALICE_WEB).get(svc.url + f"requests/{rid}", timeout=30),
        "dave queue api": api(svc, DAVE, "GET", "api/requests"),
        "dave queue page": svc.browser(DAVE).get(svc.url + "queue", timeout=30),
        "alice mine api": api(svc, ALICE, "GET", "api/requests"),
    }
    for who, answer in answers.items():
        assert answer.status_code == 200, (who, answer.text[:300])
        assert "carol" not in answer.text, f"{who} names carol before the round closes"
        assert carol_review not in answer.text and carol_review[:19].replace("T", " ") not in answer.text, (
            f"{who} shows the time of carol's review"
        )
        assert "first review submitted" not in answer.text, who
    for who in ("dave api", "alice api (container)"):
        body = answers[who].json()
        assert body["updated_at"] == submitted, f"{who}: updated_at moved with carol's review"
        assert [h["actor"] for h in body["history"]][-1] is None
        assert body["history"][-1]["at"] is None and body["history"][-1]["to"] == "PARTIALLY_REVIEWED"
        assert body["reviews"] == [] and all(f["votes"] == [] for f in body["files"])
    queue = answers["dave queue api"].json()["items"][0]
    assert queue["updated_at"] == submitted
    # carol herself still sees her own review, and an admin sees everything
    assert "first review submitted" in api(svc, CAROL, "GET", f"api/requests/{rid}").text
    assert "carol" in api(svc, admin(), "GET", f"api/requests/{rid}").text


def test_once_the_round_closes_the_history_is_shown_whole(svc, env):
    rid = carol_reviewed_first(env)
    f = env.workflow.get(DAVE, rid).output_files[0]
    env.workflow.vote(DAVE, rid, f.id, FileDecision.APPROVED)
    env.workflow.submit_review(DAVE, rid)
    for who in (DAVE, ALICE):
        body = api(svc, who, "GET", f"api/requests/{rid}").json()
        assert body["status"] == "RELEASED"
        actors = [h["actor"] for h in body["history"]]
        assert "carol" in actors and None not in actors
        assert body["updated_at"] == env.storage.get(rid).updated_at


def test_comment_numbers_do_not_count_hidden_comments(svc, env):
    rid = carol_reviewed_first(env)
    env.workflow.comment(ALICE, rid, "the bands are 10 years wide", Visibility.RESEARCHER)
    body = api(svc, DAVE, "GET", f"api/requests/{rid}").json()
    assert [c["id"] for c in body["comments"]] == [1], "carol's hidden comment must not show as a gap"


# ---------------------------------------------------------------------------------------------------------
# 5. no existence oracle


def _shape(response):
    try:
        body = response.json()
    except ValueError:
        body = re.sub(r"r[0-9a-f]{19}|nope[0-9a-z]*", "<id>", response.text)
    else:
        body = {k: re.sub(r"r[0-9a-f]{19}|nope[0-9a-z]*", "<id>", str(v)) for k, v in body.items()}
    return response.status_code, body


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "api/requests/{rid}", None),
        ("POST", "api/requests/{rid}/vote", {"file_id": 1, "decision": "approve"}),
        ("POST", "api/requests/{rid}/withdraw", {}),
        ("POST", "api/requests/{rid}/comment", {"text": "hi"}),
        ("GET", "api/requests/{rid}/files/1/content", None),
    ],
)
def test_api_answers_alike_for_a_missing_request_and_someone_elses(svc, env, method, path, body):
    rid = create_request_at_status(env, S.RELEASED)
    for who in (BOB, BOB_WEB, ERIN_WEB):
        theirs = api(svc, who, method, path.format(rid=rid), json=body)
        missing = api(svc, who, method, path.format(rid="nope" + rid[4:]), json=body)
        assert _shape(theirs) == _shape(missing), (who.name, theirs.text, missing.text)
        assert theirs.status_code == 404 and "alice" not in theirs.text


@pytest.mark.parametrize("path", ["requests/{rid}", "requests/{rid}/download/1"])
def test_pages_answer_alike_for_a_missing_request_and_someone_elses(svc, env, path):
    rid = create_request_at_status(env, S.RELEASED)
    browser = svc.browser(BOB_WEB)
    theirs = browser.get(svc.url + path.format(rid=rid), timeout=30)
    missing = browser.get(svc.url + path.format(rid="nope" + rid[4:]), timeout=30)
    assert _shape(theirs) == _shape(missing)
    assert theirs.status_code == 404 and "alice" not in theirs.text


def test_a_form_post_on_someone_elses_request_answers_as_missing(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    browser = svc.browser(BOB_WEB)
    token = xsrf_of(browser.get(svc.url + "mine", timeout=30).text)
    theirs = browser.post(svc.url + f"requests/{rid}/withdraw", data={"_xsrf": token}, timeout=30)
    missing = browser.post(svc.url + "requests/nope0000/withdraw", data={"_xsrf": token}, timeout=30)
    assert _shape(theirs) == _shape(missing) and theirs.status_code == 404
    assert env.storage.get(rid).status is S.SUBMITTED


def test_the_trail_still_says_why(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    api(svc, BOB, "GET", f"api/requests/{rid}")
    record = env.audit.refusals()[-1]
    assert (record["actor"], record["target"], record["details"]["reason"]) == ("bob", rid, "not_allowed")


# ---------------------------------------------------------------------------------------------------------
# 6. headers on every answer, cookies


def _assert_security_headers(response, what):
    h = response.headers
    assert h.get("X-Content-Type-Options") == "nosniff", what
    assert h.get("X-Frame-Options") == "DENY", what
    assert "frame-ancestors 'none'" in h.get("Content-Security-Policy", ""), what
    assert "default-src 'none'" in h.get("Content-Security-Policy", ""), what
    assert h.get("Referrer-Policy") == "no-referrer", what


def test_every_answer_carries_the_security_headers(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    answers = {
        "queue page": svc.browser(CAROL).get(svc.url + "queue", timeout=30),
        "request page": svc.browser(CAROL).get(svc.url + f"requests/{rid}", timeout=30),
        "api": api(svc, CAROL, "GET", f"api/requests/{rid}"),
        "default 404 page": requests.get(svc.url + "no/such/page", timeout=30),
        "404 outside the prefix": requests.get(svc.url.split("/services/")[0] + "/elsewhere", timeout=30),
        "static file": requests.get(svc.url + "static/style.css", timeout=30),
        "missing static file": requests.get(svc.url + "static/nope.css", timeout=30),
        "anonymous redirect": requests.get(svc.url + "queue", allow_redirects=False, timeout=30),
    }
    for what, response in answers.items():
        _assert_security_headers(response, what)
    assert answers["default 404 page"].status_code == 404
    assert answers["static file"].status_code == 200 and answers["missing static file"].status_code == 404


def test_the_session_cookie_is_samesite_strict_and_the_state_cookie_lax(svc):
    from exports.web import EnclaveHubOAuth

    auth = EnclaveHubOAuth(
        api_token="t",
        oauth_client_id="service-exports",
        base_url="/services/exports/",
        api_url="http://127.0.0.1:9/hub/api",
        oauth_redirect_uri="http://127.0.0.1/services/exports/oauth_callback",
    )
    assert auth.cookie_options["samesite"] == "Lax" and "secure" not in auth.cookie_options
    https = EnclaveHubOAuth(
        api_token="t",
        oauth_client_id="service-exports",
        base_url="/services/exports/",
        api_url="http://127.0.0.1:9/hub/api",
        public_url="https://enclave.example.org",
        oauth_redirect_uri="https://enclave.example.org/services/exports/oauth_callback",
    )
    assert https.cookie_options["secure"] is True
    anonymous = requests.get(svc.url + "queue", allow_redirects=False, timeout=30)
    state_cookie = anonymous.headers["Set-Cookie"]
    assert "SameSite=Lax" in state_cookie and "HttpOnly" in state_cookie


# ---------------------------------------------------------------------------------------------------------
# 7. xsrf bound to the session; a planted cookie cannot lock a checker out


def test_a_planted_xsrf_cookie_does_not_block_a_checkers_vote(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    file_id = env.storage.get(rid).output_files[0].id
    # bob's own, validly signed _xsrf cookie, planted on a more specific path than the service's own
    bob = svc.browser(BOB_WEB)
    bob.get(svc.url + "mine", timeout=30)
    planted = bob.cookies.get("_xsrf") or xsrf_of(bob.get(svc.url + "mine", timeout=30).text)
    carol = svc.browser(CAROL)
    page = carol.get(svc.url + f"requests/{rid}", timeout=30).text
    carol.cookies.set("_xsrf", "garbage", domain="127.0.0.1", path="/services/exports/")
    carol.cookies.set("_xsrf", planted, domain="127.0.0.1", path="/services/exports/requests/")
    sent = carol.prepare_request(requests.Request("POST", svc.url + f"requests/{rid}/vote")).headers["Cookie"]
    assert sent.index(planted) < sent.index("garbage"), (
        "the planted cookie comes first, as a browser sends it"
    )
    time.sleep(1.1)  # a person reads the page first; signed values made in the same second are identical
    r = carol.post(
        svc.url + f"requests/{rid}/vote",
        data={"_xsrf": xsrf_of(page), "file_id": file_id, "decision": "approve"},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302, r.text[:400]
    assert [v.reviewer for v in env.storage.get(rid).votes] == ["carol"]


def test_csrf_still_holds_and_is_audited(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    file_id = env.storage.get(rid).output_files[0].id
    carol = svc.browser(CAROL)
    bob = svc.browser(BOB_WEB)
    bobs_token = xsrf_of(bob.get(svc.url + "mine", timeout=30).text)
    carol.get(svc.url + f"requests/{rid}", timeout=30)
    for forged in ({}, {"_xsrf": "forged"}, {"_xsrf": bobs_token}):
        env.workflow.flush_refusals(everything=True)
        before = len(env.audit.refusals())
        r = carol.post(
            svc.url + f"requests/{rid}/vote",
            data={**forged, "file_id": file_id, "decision": "approve"},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 403, forged
        assert env.storage.get(rid).votes == (), "a forged POST changed nothing"
        records = env.audit.refusals()[before:]
        assert len(records) == 1 and records[0]["actor"] == "carol", forged
        assert records[0]["details"]["reason"] in ("xsrf_missing", "xsrf_invalid")


# ---------------------------------------------------------------------------------------------------------
# issue 10 section 4: refusals cannot flood the trail


def test_a_flood_of_refusals_leaves_few_records_that_keep_the_count(svc, env):
    name = "x\u200b" * 300 + ".svg"
    for _ in range(200):
        r = api(svc, ALICE, "POST", "api/requests", json={"paths": [name], "context": "c", "controls": "c"})
        assert r.status_code == 400
    refusals = env.audit.refusals()
    assert len(refusals) == 1, "one full record per source and window"
    first = refusals[0]
    assert "\u200b" not in json.dumps(first, ensure_ascii=False) and "\\u200b" in first["details"]["message"]
    assert len(first["details"]["message"]) <= 520
    env.workflow.flush_refusals(everything=True)
    summary = env.audit.refusals()[-1]
    assert summary["details"]["repeated"] == 199 and summary["details"]["aggregated"] is True
    assert summary["actor"] == "alice" and summary["project"] == "demo-cardio"


# ---------------------------------------------------------------------------------------------------------
# keep holding: stored XSS in every field a checker sees, CSRF on every POST, no open redirect

XSS = "\"'><script>alert(1)</script><img src=x onerror=alert(2)><a href=javascript:alert(3)>x</a>"


class _Elements(__import__("html.parser").parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts, self.handlers, self.js_urls = [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append(dict(attrs))
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.js_urls.append((tag, value))


def test_no_field_a_checker_sees_can_carry_markup(svc, env):
    quoted = (
        '"' + XSS.replace('"', '""') + '"'
    )  # a well-formed CSV cell: the canonical form would refuse a bare quote
    table = f'"group {XSS.replace(chr(34), chr(34) * 2)}",n\n{quoted},120\nB,45\n'
    rid = create_request_at_status(
        env,
        S.SUBMITTED,
        files={f"r/{XSS[12:20]}x.csv": table, "notes.md": f"# Notes\n\n`{XSS}`\n", "t.txt": XSS},
    )
    wf = env.workflow
    wf.comment(ALICE, rid, XSS, Visibility.RESEARCHER)
    f = wf.get(CAROL, rid).output_files[0]
    wf.vote(CAROL, rid, f.id, FileDecision.CHANGES_REQUESTED, XSS, Visibility.RESEARCHER)
    wf.return_request(DAVE, rid, XSS)
    for who in (CAROL, DAVE, ALICE_WEB, admin()):
        for path in (f"requests/{rid}", "queue", "mine"):
            page = svc.browser(who).get(svc.url + path, timeout=30)
            if page.status_code != 200:
                continue
            parsed = _Elements()
            parsed.feed(page.text)
            assert parsed.scripts == [] and parsed.handlers == [] and parsed.js_urls == [], (who.name, path)
            assert "<script>alert(1)" not in page.text
    # the same text through the JSON API is data, served as JSON, never sniffed as HTML
    answer = api(svc, CAROL, "GET", f"api/requests/{rid}")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


POSTS = ["vote", "review", "return", "comment", "revoke", "withdraw", "submit", "add_files", "remove_file"]


@pytest.mark.parametrize("action", POSTS)
def test_every_form_post_needs_this_sessions_token(svc, env, action):
    rid = create_request_at_status(env, S.SUBMITTED)
    before = env.storage.get(rid)
    for who in (CAROL, ALICE_WEB):
        r = svc.browser(who).post(
            svc.url + f"requests/{rid}/{action}",
            data={"reason": "x", "text": "x"},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 403
        r = svc.browser(who).post(svc.url + f"api/requests/{rid}/{action}", json={"reason": "x"}, timeout=30)
        assert r.status_code == 403
    assert env.storage.get(rid) == before
    new = svc.browser(ALICE_WEB).post(svc.url + "requests/new", data={"project": "demo-cardio"}, timeout=30)
    assert new.status_code == 403


def test_the_error_page_never_links_off_site(svc, env):
    browser = svc.browser(CAROL)
    for referer in ("https://192.0.2.1/services/exports/", "//198.51.100.1/x", "javascript:alert(1)"):
        page = browser.get(svc.url + "requests/nope0000", headers={"Referer": referer}, timeout=30)
        assert page.status_code == 404
        links = re.findall(r'href="([^"]+)"', page.text)
        assert links and all(link.startswith(("/services/exports/", "/hub/", "#")) for link in links), links

"""The export service over HTTP: the REST API with hub tokens, the pages with the OAuth cookie and xsrf,
and downloads. The app runs on a loopback ephemeral port with a fake hub (FakeHubOAuth)."""

from __future__ import annotations

import hashlib
import re
import struct
import zlib

import pytest
import requests

from exports.canonical import Limits, canonicalize
from exports.domain import RequestStatus
from exports.storage import RequestQuery
from exports.testing import SAFE_CSV, admin, checker, create_request_at_status, make_env, researcher, serve

S = RequestStatus


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


@pytest.fixture
def svc(env):
    with serve(env) as served:
        yield served


def api(svc, who, method, path, **kw):
    return requests.request(
        method, svc.url + path, headers={"Authorization": f"token {svc.token(who)}"}, timeout=30, **kw
    )


ALICE = researcher("alice")
ALICE_WEB = researcher("alice", in_container=False)
CAROL, DAVE = checker("carol"), checker("dave")


def create(svc, env, who=ALICE, paths=("results/table1.csv",), **extra):
    for p in paths:
        env.write(p, SAFE_CSV)
    body = {"paths": list(paths), "context": "Table 1", "controls": "n >= 10", "submit": True, **extra}
    return api(svc, who, "POST", "api/requests", json=body)


def test_a_container_creates_a_request_by_path_and_its_project_comes_from_the_token(svc, env):
    response = create(
        svc, env, provenance={"notebook": "analysis.ipynb", "image_digest": "sha256:" + "a" * 64}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["project"], body["author"], body["status"]) == ("demo-cardio", "alice", "SUBMITTED")
    prov = body["files"][0]["provenance"]
    assert prov["server"] == "alice/demo-cardio" and prov["via"] == "server-token"
    assert prov["notebook"] == "analysis.ipynb" and prov["image_digest_source"] == "container"
    again = api(svc, ALICE, "GET", f"api/requests/{body['id']}").json()
    assert again["files"][0]["sha256"] == body["files"][0]["sha256"]


def test_a_container_cannot_name_another_project(svc, env):
    response = create(svc, env, project="demo-oncology")
    assert response.status_code == 400
    assert "this container belongs to demo-cardio" in response.json()["message"]
    assert env.storage.list(RequestQuery()).total == 0


def test_unauthenticated_calls_are_refused_with_a_message(svc):
    response = requests.get(svc.url + "api/requests", timeout=30)
    assert response.status_code == 403
    assert "authentication required" in response.json()["message"]
    response = requests.get(svc.url + "api/requests", headers={"Authorization": "token forged"}, timeout=30)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "body,status,message",
    [
        ("not json", 400, "body: not valid JSON"),
        ({"paths": "results/t.csv"}, 400, "paths: must be a list"),
        ({"groups": [{"name": "bad/name", "files": ["a.csv"]}]}, 400, "groups[0].name 'bad/name'"),
        (
            {"paths": ["../demo-oncology/x.csv"], "context": "c", "controls": "c"},
            400,
            "files[0].path '../demo-oncology/x.csv'",
        ),
        ({"paths": ["fig.svg"], "context": "c", "controls": "c"}, 400, "SVG is refused"),
        (
            {"paths": ["a.csv", "./a.csv"], "context": "c", "controls": "c"},
            400,
            "names the same file as groups[0].files[0].path",
        ),
        (
            {"paths": ["nope.csv"], "context": "c", "controls": "c", "submit": "yes"},
            400,
            "submit: must be true or false",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(svc, env, body, status, message):
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    response = api(svc, ALICE, "POST", "api/requests", **kw)
    assert response.status_code == status
    assert message in response.json()["message"]
    assert env.storage.list(RequestQuery()).total == 0


def test_refusals_over_http_are_audited(svc, env):
    api(
        svc,
        ALICE,
        "POST",
        "api/requests",
        json={"paths": ["/data/synthetic-omop/person.csv"], "context": "c", "controls": "c"},
    )
    refusal = env.audit.refusals()[-1]
    assert refusal["actor"] == "alice" and refusal["details"]["attempted"] == "export.create"
    assert refusal["details"]["reason"] == "unsafe_path"
    assert "absolute paths are refused" in refusal["details"]["message"]


def test_listing_mine_and_the_queue(svc, env):
    mine = create(svc, env).json()["id"]
    create_request_at_status(env, S.SUBMITTED, author="bob", project="demo-oncology")
    listed = api(svc, ALICE, "GET", "api/requests").json()
    assert [i["id"] for i in listed["items"]] == [mine]
    queue = api(svc, CAROL, "GET", "api/requests").json()
    assert queue["total"] == 2 and queue["items"][0]["checks"] == {"pass": 1, "review": 0, "fail": 0}
    assert api(svc, ALICE, "GET", "api/requests?scope=queue").status_code == 403
    assert api(svc, CAROL, "GET", "api/requests?limit=1000").status_code == 400
    assert api(svc, CAROL, "GET", "api/requests?status=NOPE").status_code == 400


def test_review_over_the_api_then_the_requester_downloads_from_the_browser(svc, env):
    rid = create(svc, env).json()["id"]
    for who in (CAROL, DAVE):
        r = api(
            svc,
            who,
            "POST",
            f"api/requests/{rid}/votes",
            json={"path": "results/table1.csv", "decision": "approve"},
        )
        assert r.status_code == 200, r.text
        r = api(svc, who, "POST", f"api/requests/{rid}/review", json={})
        assert r.status_code == 200, r.text
    assert r.json()["status"] == "RELEASED"
    file_id = r.json()["released"][0]["file_id"]

    url = f"requests/{rid}/download/{file_id}"
    assert api(svc, ALICE, "GET", url).status_code == 403  # not from inside the container
    browser = svc.browser(ALICE_WEB)
    response = browser.get(svc.url + url, timeout=30)
    assert response.status_code == 200
    assert response.content == SAFE_CSV.encode()
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.headers["X-Export-SHA256"] == r.json()["released"][0]["sha256"]
    assert (
        svc.browser(researcher("erin", in_container=False)).get(svc.url + url, timeout=30).status_code == 404
    ), "not hers to see: answered as if it did not exist"
    assert svc.browser(CAROL).get(svc.url + url, timeout=30).status_code == 403

    # revoke closes the download
    assert (
        api(svc, admin(), "POST", f"api/requests/{rid}/revoke", json={"reason": "oops"}).json()["status"]
        == "REVOKED"
    )
    closed = browser.get(svc.url + url, timeout=30)
    assert closed.status_code == 403 and "REVOKED" in closed.text


def test_a_vote_on_a_decided_request_is_a_conflict(svc, env):
    rid = create_request_at_status(env, S.RELEASED)
    r = api(
        svc,
        checker("frank"),
        "POST",
        f"api/requests/{rid}/votes",
        json={"path": "results/table1.csv", "decision": "approve"},
    )
    assert r.status_code == 409 and "RELEASED: voting is closed" in r.json()["message"]
    r = api(
        svc,
        admin(),
        "POST",
        f"api/requests/{rid}/votes",
        json={"path": "results/table1.csv", "decision": "approve"},
    )
    assert r.status_code in (403, 409)


def test_the_openapi_document(svc):
    doc = requests.get(svc.url + "api/openapi.json", timeout=30).json()
    assert doc["openapi"].startswith("3.")
    assert "/api/requests/{id}/votes" in doc["paths"]


# ---------------------------------------------------------------------------------------------
# pages


def test_an_anonymous_visitor_is_sent_to_the_hub_login(svc):
    response = requests.get(svc.url + "queue", allow_redirects=False, timeout=30)
    assert response.status_code == 302
    assert "/hub/api/oauth2/authorize" in response.headers["Location"]


def test_the_queue_page_lists_requests_with_their_checks(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED, files={"results/t.csv": "g,n\na,3\nb,40\n"})
    page = svc.browser(CAROL).get(svc.url + "queue", timeout=30)
    assert page.status_code == 200
    assert f'id="open-{rid}"' in page.text and "1 fail" in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert svc.browser(ALICE_WEB).get(svc.url + "queue", timeout=30).status_code == 403


def test_the_request_page_shows_the_table_with_failing_cells_marked(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED, files={"results/t.csv": "g,n\na,3\nb,40\nc,0\n"})
    page = svc.browser(CAROL).get(svc.url + f"requests/{rid}", timeout=30).text
    flagged = re.findall(r'<td class="flag" data-flag="([^"]+)">([^<]+)<', page)
    assert flagged == [("below 10", "3 "), ("zero", "0 ")]
    assert 'id="submit-review"' in page and 'id="approve-' in page


def test_repeated_column_names_are_marked_on_the_right_column(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED, files={"results/t.csv": "g,n,n\na,40,3\n"})
    page = svc.browser(CAROL).get(svc.url + f"requests/{rid}", timeout=30).text
    assert re.findall(r'<td class="flag" data-flag="([^"]+)">([^<]+)<', page) == [("below 10", "3 ")]


def test_images_are_shown_inline_and_other_types_are_never_served_raw(svc, env):
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    image = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )
    rid = create_request_at_status(env, S.SUBMITTED, files={"fig.png": image, "t.csv": SAFE_CSV})
    files = {f.filetype: f.id for f in env.storage.get(rid).output_files}
    browser = svc.browser(CAROL)
    shown = browser.get(svc.url + f"api/requests/{rid}/files/{files['png']}/content", timeout=30)
    frozen = env.storage.get(rid).file_by_id(files["png"])
    assert shown.status_code == 200 and shown.content == canonicalize(image, "png", Limits(), "fig.png")
    assert hashlib.sha256(shown.content).hexdigest() == frozen.sha256, "the canonical bytes, as frozen"
    assert frozen.original_sha256 == hashlib.sha256(image).hexdigest() and frozen.original_size == len(image)
    assert (
        shown.headers["Content-Type"] == "image/png" and "sandbox" in shown.headers["Content-Security-Policy"]
    )
    assert (
        browser.get(svc.url + f"api/requests/{rid}/files/{files['csv']}/content", timeout=30).status_code
        == 404
    )
    assert (
        svc.browser(researcher("erin", in_container=False))
        .get(svc.url + f"api/requests/{rid}/files/{files['png']}/content", timeout=30)
        .status_code
        == 404
    )


def xsrf_of(page: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)


def test_a_form_post_without_the_xsrf_token_is_not_authenticated(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    browser = svc.browser(CAROL)
    file_id = env.storage.get(rid).output_files[0].id
    response = browser.post(
        svc.url + f"requests/{rid}/vote",
        data={"file_id": file_id, "decision": "approve"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 403
    assert env.storage.get(rid).votes == ()


def test_checkers_vote_and_review_through_the_pages(svc, env):
    rid = create_request_at_status(env, S.SUBMITTED)
    file_id = env.storage.get(rid).output_files[0].id
    for who in (CAROL, DAVE):
        browser = svc.browser(who)
        page = browser.get(svc.url + f"requests/{rid}", timeout=30).text
        token = xsrf_of(page)
        r = browser.post(
            svc.url + f"requests/{rid}/vote",
            timeout=30,
            allow_redirects=False,
            data={
                "_xsrf": token,
                "file_id": file_id,
                "decision": "approve",
                "comment": "ok",
                "visibility": "checkers",
            },
        )
        assert r.status_code == 302, r.text
        r = browser.post(
            svc.url + f"requests/{rid}/review", data={"_xsrf": token, "verdict": "votes"}, timeout=30
        )
        assert r.status_code == 200
    assert env.storage.get(rid).status is S.RELEASED
    page = svc.browser(ALICE_WEB).get(svc.url + f"requests/{rid}", timeout=30).text
    assert f'id="download-{file_id}"' in page


def test_a_researcher_creates_a_request_from_their_page(svc, env):
    env.write("results/t.csv", SAFE_CSV)
    browser = svc.browser(ALICE_WEB)
    page = browser.get(svc.url + "mine", timeout=30).text
    assert 'id="new-request"' in page and '<option value="demo-cardio">' in page
    r = browser.post(
        svc.url + "requests/new",
        timeout=30,
        data={
            "_xsrf": xsrf_of(page),
            "project": "demo-cardio",
            "group": "main",
            "paths": "/workspace/results/t.csv\n",
            "context": "Table 1",
            "controls": "none below 10",
            "submit": "1",
        },
    )
    assert r.status_code == 200 and 'id="status"' in r.text and "SUBMITTED" in r.text
    request = env.storage.list(RequestQuery()).items[0]
    assert request.author == "alice" and request.status is S.SUBMITTED
    # and a refused form shows the reason on an error page, changing nothing
    r = browser.post(
        svc.url + "requests/new",
        timeout=30,
        data={
            "_xsrf": xsrf_of(page),
            "project": "demo-oncology",
            "paths": "results/t.csv",
            "context": "c",
            "controls": "c",
        },
    )
    assert r.status_code == 403 and "alice is not a member of project demo-oncology" in r.text
    assert env.storage.list(RequestQuery()).total == 1

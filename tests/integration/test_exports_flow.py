"""The export queue end to end: a request from inside alice's container, two checkers in Chromium,
a download through the proxy, and every step on a verifiable audit trail."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import requests

from audit import AuditLog
from hub.cli import main as enclave
from tests.harness import HubClient, docker_exec

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABLE = "group,count\nA,120\nB,45\nC,30\n"


def _png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG, built with the standard library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = _png()


@pytest.fixture(scope="module")
def alice(hub):
    client = HubClient(hub, "alice")
    assert client.login().status_code == 302
    client.spawn("demo-cardio")
    container = hub.container("alice", "demo-cardio")
    write = f"mkdir -p /workspace/results && printf '{TABLE}' > /workspace/results/table1.csv"
    assert docker_exec(container, write)[0] == 0
    container.put_archive("/workspace", _tar({"fig2.png": PNG}))
    yield client, container
    client.stop("demo-cardio")


def _tar(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid = len(data), 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def export(container, *args: str) -> dict:
    code, out = docker_exec(container, ["enclave-export", "--json", *args])
    assert code == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def checker_page(browser, hub, user):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", f"demo-{user}")
    page.fill("#otp_input", hub.totp_code(user))
    page.click("#login_submit")
    page.wait_for_url(re.compile(r".*/hub/home"))
    return page


def review(
    page, hub, request_id: str, vote: str = "approve", comment: str = "", visible: bool = False
) -> str:
    page.goto(f"{hub.url}/services/exports/queue")
    page.click(f"#open-{request_id}")
    for button in page.locator(f"[id^={vote}-]").all():
        file_id = button.get_attribute("id").split("-", 1)[1]
        if comment:
            page.fill(f"#vote-comment-{file_id}", comment)
            page.select_option(f"#vote-visibility-{file_id}", "researcher" if visible else "checkers")
        button.click()
    page.click("#submit-review")
    return page.inner_text("#status").strip()


def audit_actions(hub, target):
    return [r["action"] for r in AuditLog.open(hub.state).records(action="export.*") if r["target"] == target]


def test_request_review_release_download(hub, alice, browser):
    client, container = alice
    request = export(
        container,
        "request",
        "results/table1.csv",
        "fig2.png",
        "--context",
        "Patients per group; figure of the same",
        "--controls",
        "All cells >= 10",
    )
    rid = request["id"]
    assert request["status"] == "SUBMITTED" and request["project"] == "demo-cardio"
    assert {f["path"] for f in request["files"]} == {"results/table1.csv", "fig2.png"}
    png = next(f for f in request["files"] if f["path"] == "fig2.png")
    assert png["checks"]["outcome"] == "review", "a PNG always needs a person to look at it"

    # Editing the workspace copy after submission changes nothing in the request.
    docker_exec(container, "echo 'A,3' >> /workspace/results/table1.csv")

    carol = checker_page(browser, hub, "carol")
    assert review(carol, hub, rid) == "PARTIALLY_REVIEWED"
    dave = checker_page(browser, hub, "dave")
    dave.goto(f"{hub.url}/services/exports/requests/{rid}")
    for votes in dave.locator("[id^=votes-]").all():
        assert "carol" not in votes.inner_text(), "a checker sees no other checker's vote before voting"
    assert review(dave, hub, rid) == "RELEASED"

    released = export(container, "show", rid)
    table = next(f for f in released["files"] if f["path"] == "results/table1.csv")
    mine = client.session.get(f"{hub.url}/services/exports/mine", timeout=30)  # OAuth login to the service
    assert mine.status_code == 200 and rid in mine.text
    link = f"/services/exports/requests/{rid}/download/{table['id']}"
    page = client.session.get(f"{hub.url}/services/exports/requests/{rid}", timeout=30)
    assert link in page.text, "the researcher's page offers the download"
    download = client.session.get(f"{hub.url}{link}", timeout=30)
    assert download.status_code == 200, re.sub(r"<[^>]+>|\s+", " ", download.text)[-600:]
    assert download.content == TABLE.encode(), "exactly the approved bytes, not the edited workspace file"
    assert hashlib.sha256(download.content).hexdigest() == table["sha256"]

    # Nobody else downloads: not a fellow checker, not a member of another project.
    for other, status in (("carol", 403), ("bob", 404)):  # bob may not even see it: answered as missing
        s = HubClient(hub, other)
        s.login()
        s.session.get(f"{hub.url}/services/exports/", timeout=30)
        r = s.session.get(f"{hub.url}/services/exports/requests/{rid}/download/{table['id']}", timeout=30)
        assert r.status_code == status, other

    steps = audit_actions(hub, rid)
    for step in (
        "export.create",
        "export.file_add",
        "export.submit",
        "export.vote",
        "export.decision",
        "export.release",
        "export.download",
    ):
        assert step in steps, f"{step} missing from the audit trail: {steps}"
    assert enclave(["--state-dir", str(hub.state), "--policy-dir", str(hub.policy), "audit", "verify"]) == 0

    # A checker revokes: the download closes.
    carol.goto(f"{hub.url}/services/exports/requests/{rid}")
    carol.fill("#revoke-reason", "released in error")
    carol.click("#revoke")
    assert carol.inner_text("#status").strip() == "REVOKED"
    closed = client.session.get(
        f"{hub.url}/services/exports/requests/{rid}/download/{table['id']}", timeout=30
    )
    assert closed.status_code == 403
    assert "export.revoke" in audit_actions(hub, rid)


def test_returned_request_is_resubmitted_with_a_new_version(hub, alice, browser):
    _, container = alice
    docker_exec(container, "printf 'group,count\\nA,120\\nB,4\\n' > /workspace/results/small.csv")
    request = export(
        container, "request", "results/small.csv", "--context", "counts", "--controls", "none yet"
    )
    rid = request["id"]
    failing = request["files"][0]["checks"]
    assert failing["outcome"] == "fail"
    cells = [c for r in failing["results"] for c in r.get("cells", [])]
    assert {"row": 2, "column": "count"}.items() <= cells[0].items() or any(c["row"] == 2 for c in cells)

    carol = checker_page(browser, hub, "carol")
    assert (
        review(carol, hub, rid, vote="changes", comment="B is below 10: suppress it", visible=True)
        == "PARTIALLY_REVIEWED"
    )
    dave = checker_page(browser, hub, "dave")
    assert review(dave, hub, rid, vote="changes", comment="checkers-only note") == "RETURNED"

    docker_exec(container, "printf 'group,count\\nA,120\\nB,<10\\n' > /workspace/results/small.csv")
    resubmitted = export(container, "resubmit", rid, "results/small.csv")
    assert resubmitted["status"] == "SUBMITTED"
    versions = [f["version"] for f in resubmitted["files"] if f["path"] == "results/small.csv"]
    assert max(versions) == 2
    shown = export(container, "show", rid)
    texts = [c["text"] for c in shown.get("comments", [])]
    assert "B is below 10: suppress it" in texts and "checkers-only note" not in texts


def test_other_projects_cannot_see_the_requests(hub, alice):
    _, container = alice
    rid = export(container, "request", "results/table1.csv", "--context", "c", "--controls", "k")["id"]
    bob = HubClient(hub, "bob")
    bob.login()
    bob.session.get(f"{hub.url}/services/exports/", timeout=30)
    listing = bob.session.get(f"{hub.url}/services/exports/api/requests", timeout=30)
    assert listing.status_code == 200 and rid not in listing.text
    assert bob.session.get(f"{hub.url}/services/exports/api/requests/{rid}", timeout=30).status_code in (
        403,
        404,
    )
    admin = HubClient(hub, "adam")
    admin.login()
    admin.session.get(f"{hub.url}/services/exports/", timeout=30)
    vote = admin.session.post(
        f"{hub.url}/services/exports/api/requests/{rid}/vote",
        json={"file_id": 1, "vote": "approve"},
        timeout=30,
    )
    assert vote.status_code == 403, "administrators never vote"


def test_side_door_attempts_reach_the_audit_trail(hub, alice):
    client, _ = alice
    token = client.api(
        "POST", "/users/alice/tokens", json={"scopes": ["access:servers!server=alice/demo-cardio"]}
    ).json()["token"]
    r = requests.get(
        f"{hub.url}/user/alice/demo-cardio/files/results/table1.csv?download=1",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code == 403
    refused = list(AuditLog.open(hub.state).records(action="sidedoor.refused", actor="alice"))
    assert refused and refused[-1]["project"] == "demo-cardio"

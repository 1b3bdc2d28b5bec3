"""The export workflow end to end on real SQLite and real files: every move of the state table through
the real operations, every refusal, blinding, versions, release, download and revoke, and the audit."""

from __future__ import annotations

import pytest

from exports.domain import (
    BadRequest,
    FileDecision,
    FileRefused,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    RequestStatus,
    Visibility,
)
from exports.storage import RequestQuery
from exports.testing import SAFE_CSV, admin, checker, create_request_at_status, group, make_env, researcher
from exports.views import request_view

S = RequestStatus
A, C = FileDecision.APPROVED, FileDecision.CHANGES_REQUESTED
ALICE, CAROL, DAVE, ERIN, ADAM = (
    researcher("alice"),
    checker("carol"),
    checker("dave"),
    researcher("erin"),
    admin(),
)
ALICE_WEB = researcher("alice", in_container=False)


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


def status(env, rid):
    return env.storage.get(rid).status


def vote_all(env, who, rid, decision=A):
    for f in env.workflow.get(who, rid).output_files:
        env.workflow.vote(who, rid, f.id, decision)


def unchanged(env, rid):
    """A snapshot of everything stored about a request, to compare before and after a refusal."""
    return env.storage.get(rid)


# ---------------------------------------------------------------------------------------------
# the happy path, and each transition


def test_two_independent_approvals_release_exactly_the_approved_bytes(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    vote_all(env, CAROL, rid)
    assert env.workflow.submit_review(CAROL, rid).status is S.PARTIALLY_REVIEWED
    vote_all(env, DAVE, rid)
    request = env.workflow.submit_review(DAVE, rid)
    assert request.status is S.RELEASED
    assert [(h.from_status, h.to_status, h.actor) for h in request.history][-4:] == [
        (S.SUBMITTED, S.PARTIALLY_REVIEWED, "carol"),
        (S.PARTIALLY_REVIEWED, S.REVIEWED, "dave"),
        (S.REVIEWED, S.APPROVED, "service:exports"),
        (S.APPROVED, S.RELEASED, "service:exports"),
    ]
    released, data = env.workflow.download(ALICE_WEB, rid, request.output_files[0].id)
    assert data == SAFE_CSV.encode()
    assert released.sha256 == request.output_files[0].sha256
    path = env.root / "state/exports/release" / rid / released.sha256
    assert path.read_bytes() == data


def test_every_step_is_on_the_audit_trail(env):
    rid = create_request_at_status(env, S.RELEASED)
    env.workflow.download(ALICE_WEB, rid, env.storage.get(rid).output_files[0].id)
    env.workflow.revoke(ADAM, rid, "wrong table")
    actions = env.audit.actions()
    for action in (
        "export.create",
        "export.file_add",
        "export.submit",
        "export.vote",
        "export.decision",
        "export.release",
        "export.download",
        "export.revoke",
    ):
        assert action in actions, action
    decision = next(r for r in env.audit.records if r["action"] == "export.decision")
    assert decision["actor"] == "service:exports" and decision["details"]["decision"] == "approved"
    assert all(r["target"] == rid for r in env.audit.records)
    assert all("outbox_id" in r["details"] for r in env.audit.records)


def test_changes_requested_on_any_file_returns_the_request(env):
    rid = create_request_at_status(env, S.SUBMITTED, files={"a.csv": SAFE_CSV, "b.csv": SAFE_CSV})
    vote_all(env, CAROL, rid)
    env.workflow.submit_review(CAROL, rid)
    files = env.storage.get(rid).output_files
    env.workflow.vote(DAVE, rid, files[0].id, A)
    env.workflow.vote(DAVE, rid, files[1].id, C, "row 3 is too small", Visibility.RESEARCHER)
    request = env.workflow.submit_review(DAVE, rid)
    assert request.status is S.RETURNED
    assert request.history[-1].reason == "changes requested on b.csv"


def test_a_checker_may_reject(env):
    rid = create_request_at_status(env, S.REJECTED)
    assert status(env, rid) is S.REJECTED
    with pytest.raises(InvalidTransition):
        env.workflow.submit(ALICE, rid)


def test_early_return_then_resubmit_with_a_new_version_keeps_the_old_one(env):
    rid = create_request_at_status(env, S.RETURNED)
    request = env.storage.get(rid)
    old = request.output_files[0]
    assert request.status is S.RETURNED
    env.write("results/table1.csv", "sex,age_band,n\nF,40-49,120\nM,40-49,140\n")
    request = env.workflow.add_files(ALICE, rid, [group(["results/table1.csv"], context=None, controls=None)])
    new = request.output_files[0]
    assert (new.version, new.round) == (2, 2) and new.sha256 != old.sha256
    assert [f.version for f in request.files if not f.current] == [1]
    assert env.workflow.quarantine.get(old.sha256) == SAFE_CSV.encode()
    request = env.workflow.submit(ALICE, rid)
    assert (request.status, request.round) == (S.SUBMITTED, 2)
    assert request.group("main").context  # kept from the first submission


def test_a_file_removed_from_a_pending_request_is_kept_as_an_old_version(env):
    rid = create_request_at_status(env, S.PENDING, files={"a.csv": SAFE_CSV, "b.csv": SAFE_CSV})
    request = env.workflow.remove_file(ALICE, rid, "b.csv")
    assert [f.path for f in request.current_files] == ["a.csv"]
    assert [(f.path, f.current) for f in request.files] == [("a.csv", True), ("b.csv", False)]
    assert env.audit.records[-1]["details"]["change"] == "removed"
    with pytest.raises(BadRequest, match="has no current file 'b.csv'"):
        env.workflow.remove_file(ALICE, rid, "b.csv")


def test_votes_of_an_earlier_round_do_not_count(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    vote_all(env, CAROL, rid)
    env.workflow.submit_review(CAROL, rid)
    env.workflow.return_request(DAVE, rid, "missing context")
    env.workflow.submit(ALICE, rid)
    vote_all(env, DAVE, rid)
    assert env.workflow.submit_review(DAVE, rid).status is S.PARTIALLY_REVIEWED


def test_withdraw_from_pending_and_from_returned(env):
    pending = create_request_at_status(env, S.PENDING)
    assert env.workflow.withdraw(ALICE, pending).status is S.WITHDRAWN
    returned = create_request_at_status(env, S.RETURNED)
    assert env.workflow.withdraw(ALICE, returned).status is S.WITHDRAWN


def test_one_required_reviewer_still_walks_the_table(tmp_path):
    env = make_env(tmp_path, reviewers_required=1)
    rid = create_request_at_status(env, S.SUBMITTED)
    vote_all(env, CAROL, rid)
    request = env.workflow.submit_review(CAROL, rid)
    assert [h.to_status for h in request.history][2:] == [
        S.PARTIALLY_REVIEWED,
        S.REVIEWED,
        S.APPROVED,
        S.RELEASED,
    ]


def test_three_required_reviewers(tmp_path):
    env = make_env(tmp_path, reviewers_required=3)
    rid = create_request_at_status(env, S.SUBMITTED)
    for who in (CAROL, DAVE):
        vote_all(env, who, rid)
        assert env.workflow.submit_review(who, rid).status is S.PARTIALLY_REVIEWED
    frank = checker("frank")
    vote_all(env, frank, rid)
    assert env.workflow.submit_review(frank, rid).status is S.RELEASED


# ---------------------------------------------------------------------------------------------
# refusals: each is audited and changes nothing


def refused(env, rid, exc_type, match, fn, *args):
    before = env.storage.get(rid) if rid else None
    env.workflow.flush_refusals(everything=True)  # close earlier windows: this refusal is recorded in full
    count = len(env.audit.refusals())
    with pytest.raises(exc_type, match=match):
        fn(*args)
    if rid:
        assert env.storage.get(rid) == before
    assert len(env.audit.refusals()) == count + 1
    return env.audit.refusals()[-1]


def test_self_review_is_refused(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    alice_checker = checker("alice")
    f = env.storage.get(rid).output_files[0]
    record = refused(
        env,
        rid,
        PermissionDenied,
        "nobody may review their own request",
        env.workflow.vote,
        alice_checker,
        rid,
        f.id,
        A,
    )
    assert record["details"]["attempted"] == "export.vote" and record["actor"] == "alice"


def test_a_project_member_reviewing_is_refused(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    erin_checker = checker("erin")  # erin is a member of demo-cardio
    refused(
        env,
        rid,
        PermissionDenied,
        "erin is a member of project demo-cardio",
        env.workflow.submit_review,
        erin_checker,
        rid,
    )


def test_an_admin_voting_is_refused(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    f = env.storage.get(rid).output_files[0]
    refused(env, rid, PermissionDenied, "administrators cannot vote", env.workflow.vote, ADAM, rid, f.id, A)


def test_a_third_vote_on_a_decided_request_is_refused(env):
    rid = create_request_at_status(env, S.RELEASED)
    f = env.storage.get(rid).output_files[0]
    frank = checker("frank")
    refused(
        env, rid, InvalidTransition, "is RELEASED: voting is closed", env.workflow.vote, frank, rid, f.id, A
    )
    refused(
        env,
        rid,
        InvalidTransition,
        "is RELEASED: reviewing is closed",
        env.workflow.submit_review,
        frank,
        rid,
    )


def test_a_second_review_by_the_same_checker_is_refused(env):
    rid = create_request_at_status(env, S.PARTIALLY_REVIEWED)
    refused(env, rid, InvalidTransition, "already reviewed round 1", env.workflow.submit_review, CAROL, rid)
    f = env.storage.get(rid).output_files[0]
    refused(env, rid, InvalidTransition, "votes can no longer change", env.workflow.vote, CAROL, rid, f.id, C)


def test_a_review_without_a_vote_on_every_file_is_refused(env):
    rid = create_request_at_status(env, S.SUBMITTED, files={"a.csv": SAFE_CSV, "b.csv": SAFE_CSV})
    env.workflow.vote(CAROL, rid, env.storage.get(rid).output_files[0].id, A)
    refused(
        env,
        rid,
        BadRequest,
        r"vote on every output file first \(missing: b.csv\)",
        env.workflow.submit_review,
        CAROL,
        rid,
    )


def test_a_download_before_release_is_refused(env):
    rid = create_request_at_status(env, S.PARTIALLY_REVIEWED)
    f = env.storage.get(rid).output_files[0]
    refused(
        env,
        rid,
        PermissionDenied,
        "is PARTIALLY_REVIEWED, not RELEASED",
        env.workflow.download,
        ALICE_WEB,
        rid,
        f.id,
    )


def test_a_download_by_anyone_else_is_refused(env):
    rid = create_request_at_status(env, S.RELEASED)
    f = env.storage.get(rid).output_files[0]
    erin = researcher("erin", in_container=False)
    record = refused(env, rid, NotFound, "that you may see", env.workflow.download, erin, rid, f.id)
    assert record["details"]["reason"] == "not_allowed", "the trail keeps why, the answer does not say"
    for who in (CAROL, ADAM):
        record = refused(
            env,
            rid,
            PermissionDenied,
            "released files go to the requester, alice, alone",
            env.workflow.download,
            who,
            rid,
            f.id,
        )
        assert record["details"]["attempted"] == "export.download"
    refused(
        env,
        rid,
        PermissionDenied,
        "only possible from the export service page",
        env.workflow.download,
        ALICE,
        rid,
        f.id,
    )
    assert "export.download" not in env.audit.actions()


def test_revoke_closes_downloads(env):
    rid = create_request_at_status(env, S.RELEASED)
    f = env.storage.get(rid).output_files[0]
    env.workflow.download(ALICE_WEB, rid, f.id)
    assert env.workflow.revoke(CAROL, rid, "differencing risk with request r0").status is S.REVOKED
    refused(
        env,
        rid,
        PermissionDenied,
        "the request is REVOKED, not RELEASED",
        env.workflow.download,
        ALICE_WEB,
        rid,
        f.id,
    )


def test_only_a_released_request_can_be_revoked_and_not_by_a_researcher(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    refused(
        env,
        rid,
        InvalidTransition,
        "cannot move from SUBMITTED to REVOKED",
        env.workflow.revoke,
        CAROL,
        rid,
        "x",
    )
    released = create_request_at_status(env, S.RELEASED)
    refused(
        env,
        released,
        PermissionDenied,
        "only output checkers and admins",
        env.workflow.revoke,
        ALICE_WEB,
        released,
        "x",
    )


def test_only_the_author_changes_submits_or_withdraws(env):
    rid = create_request_at_status(env, S.PENDING)
    refused(env, rid, PermissionDenied, "only its author, alice, may", env.workflow.submit, ERIN, rid)
    refused(env, rid, PermissionDenied, "only its author, alice, may", env.workflow.withdraw, ERIN, rid)
    env.write("x.csv", SAFE_CSV)
    refused(
        env, rid, PermissionDenied, "only its author", env.workflow.add_files, ERIN, rid, [group(["x.csv"])]
    )


def test_files_cannot_change_while_under_review(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    env.write("x.csv", SAFE_CSV)
    refused(
        env,
        rid,
        InvalidTransition,
        "files can change only while PENDING or RETURNED",
        env.workflow.add_files,
        ALICE,
        rid,
        [group(["x.csv"])],
    )


def test_context_and_controls_are_required_to_submit(env):
    env.write("t.csv", SAFE_CSV)
    count = env.storage.list(RequestQuery()).total
    with pytest.raises(BadRequest, match="file group 'main' needs a context"):
        env.workflow.create(ALICE, "demo-cardio", [group(["t.csv"], context="  ")], submit=True)
    with pytest.raises(BadRequest, match="needs a controls"):
        env.workflow.create(ALICE, "demo-cardio", [group(["t.csv"], controls="")], submit=True)
    assert env.storage.list(RequestQuery()).total == count


def test_a_non_member_and_an_unaccredited_user_cannot_create(env):
    env.write("t.csv", SAFE_CSV)
    with pytest.raises(PermissionDenied, match="bob is not a member of project demo-cardio"):
        env.workflow.create(researcher("bob", in_container=False), "demo-cardio", [group(["t.csv"])])
    with pytest.raises(PermissionDenied, match="lacks scope custom:exports:request"):
        env.workflow.create(CAROL, "demo-cardio", [group(["t.csv"])])
    assert env.storage.list(RequestQuery()).total == 0


def test_withdrawing_a_submitted_request_is_refused(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    refused(
        env,
        rid,
        InvalidTransition,
        "cannot move from SUBMITTED to WITHDRAWN",
        env.workflow.withdraw,
        ALICE,
        rid,
    )


# ---------------------------------------------------------------------------------------------
# blinding


def test_a_checker_does_not_see_the_other_checkers_votes_until_both_have_voted(env):
    rid = create_request_at_status(env, S.SUBMITTED, files={"a.csv": SAFE_CSV, "b.csv": SAFE_CSV})
    files = env.storage.get(rid).output_files
    env.workflow.vote(CAROL, rid, files[0].id, A)
    env.workflow.vote(CAROL, rid, files[1].id, A, "fine by me", Visibility.CHECKERS)
    env.workflow.submit_review(CAROL, rid)
    env.workflow.vote(DAVE, rid, files[0].id, A)

    def seen_by(who):
        view = request_view(env.workflow.get(who, rid), who, env.projects.get("demo-cardio"), "/")
        votes = {(v["reviewer"], f["path"]) for f in view["files"] for v in f["votes"]}
        return votes, [c["text"] for c in view["comments"]], view["reviews"]

    votes, comments, reviews = seen_by(DAVE)
    assert votes == {("dave", "a.csv")}  # his own draft only
    assert comments == [] and reviews == []
    assert seen_by(ALICE)[0] == set() and seen_by(ALICE)[1] == []
    assert len(seen_by(ADAM)[0]) == 3  # admins see everything, read-only

    env.workflow.vote(DAVE, rid, files[1].id, A)
    env.workflow.submit_review(DAVE, rid)
    votes, comments, reviews = seen_by(DAVE)
    assert ("carol", "a.csv") in votes and comments == ["fine by me"] and len(reviews) == 2
    # the researcher never sees checker-only comments, but sees the votes once the round is closed
    assert seen_by(ALICE)[1] == [] and ("carol", "b.csv") in seen_by(ALICE)[0]


def test_researcher_visible_comments_reach_the_researcher_after_the_round(env):
    rid = create_request_at_status(env, S.SUBMITTED)
    f = env.storage.get(rid).output_files[0]
    env.workflow.vote(CAROL, rid, f.id, C, "please round to 5", Visibility.RESEARCHER)

    def comments_for(who):
        return [c["text"] for c in request_view(env.workflow.get(who, rid), who, None, "/")["comments"]]

    assert comments_for(ALICE) == []
    env.workflow.submit_review(CAROL, rid)
    env.workflow.return_request(DAVE, rid, "see comments")
    assert comments_for(ALICE) == ["please round to 5", "see comments"]
    env.workflow.comment(ALICE, rid, "rounded now", Visibility.CHECKERS)
    assert "rounded now" in comments_for(CAROL)


def test_listing_for_the_queue_and_for_the_researcher(env):
    a = create_request_at_status(env, S.SUBMITTED)
    b = create_request_at_status(env, S.PENDING)
    c = create_request_at_status(env, S.SUBMITTED, author="bob", project="demo-oncology")
    queue = env.storage.list(RequestQuery(statuses=(S.SUBMITTED, S.PARTIALLY_REVIEWED)))
    assert [s.id for s in queue.items] == [a, c]
    assert queue.items[0].checks == {"pass": 1, "review": 0, "fail": 0}
    mine = env.storage.list(RequestQuery(author="alice", oldest_first=False))
    assert [s.id for s in mine.items] == [b, a]


def test_every_event_the_workflow_writes_is_accepted_by_the_real_audit_log(tmp_path):
    """The enclave's AuditLog checks each record against its vocabulary; nothing may be refused there."""
    audit = pytest.importorskip("audit")
    env = make_env(tmp_path)
    real = audit.AuditLog.open(tmp_path / "audit-state")
    env.workflow.audit.sink = real
    env.workflow.refused.log = real
    rid = create_request_at_status(env, S.RELEASED)
    env.workflow.view(CAROL, rid)
    f = env.storage.get(rid).output_files[0]
    env.workflow.download(ALICE_WEB, rid, f.id)
    with pytest.raises(PermissionDenied):
        env.workflow.download(CAROL, rid, f.id)
    env.workflow.revoke(ADAM, rid, "wrong table")
    returned = create_request_at_status(env, S.RETURNED)
    env.workflow.comment(ALICE, returned, "rounded now", Visibility.CHECKERS)
    env.workflow.withdraw(ALICE, returned)
    create_request_at_status(env, S.REJECTED)
    with pytest.raises(FileRefused):
        env.workflow.create(ALICE, "demo-cardio", [group(["../x.csv"])])
    with env.storage.engine.connect() as conn:
        rejected_by_log = conn.exec_driver_sql(
            "SELECT count(*) FROM export_audit_outbox WHERE error IS NOT NULL OR delivered_at IS NULL"
        ).scalar()
    assert rejected_by_log == 0
    actions = {r["action"] for r in real.records()} if hasattr(real, "records") else None
    if actions is not None:
        assert {
            "export.create",
            "export.decision",
            "export.release",
            "export.download",
            "export.refused",
            "export.view",
            "export.revoke",
            "export.withdraw",
        } <= actions


def test_the_image_digest_comes_from_the_hub_when_it_knows_it(tmp_path):
    """The spawner's recorded digest (read through the hub API) wins over what the container says."""
    import http.server
    import json
    import threading

    from exports.provenance import HubImageDigests

    digest = "sha256:" + "b" * 64
    seen = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["Authorization"]))
            body = {"name": "alice", "servers": {"demo-cardio": {"state": {"image_digest": digest}}}}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        env = make_env(tmp_path)
        env.workflow.provenance = HubImageDigests(f"http://127.0.0.1:{hub.server_port}/hub/api", "svc-token")
        env.write("t.csv", SAFE_CSV)
        request = env.workflow.create(ALICE, "demo-cardio", [group(["t.csv"])])
        from exports.inputs import ProvenanceClaims

        claims = ProvenanceClaims(image_digest="sha256:" + "c" * 64, notebook="a.ipynb")
        env.write("u.csv", SAFE_CSV)
        request = env.workflow.add_files(ALICE, request.id, [group(["u.csv"])], claims)
    finally:
        hub.shutdown()
        thread.join(10)
    prov = request.current_file("u.csv").provenance
    assert (prov.image_digest, prov.image_digest_source, prov.notebook) == (digest, "hub", "a.ipynb")
    assert seen[0] == ("/hub/api/users/alice", "token svc-token")
    assert HubImageDigests("http://127.0.0.1:9/hub/api", "x", timeout=0.5).image_digest("alice", "p") is None

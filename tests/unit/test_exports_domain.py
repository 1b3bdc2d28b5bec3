"""The export state table and the permission rules, as pure functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from exports.domain import (
    VALID_STATE_TRANSITIONS,
    ExportRequest,
    FileChecks,
    FileDecision,
    FileRole,
    InvalidTransition,
    PermissionDenied,
    Provenance,
    RequestFile,
    RequestStatus,
    Review,
    ReviewVerdict,
    Vote,
    apply_transition,
    check_transition,
    decide,
)
from exports.permissions import (
    Identity,
    check_can_download,
    check_can_request,
    check_can_review,
    check_can_revoke,
    check_can_view,
)
from exports.projects import ProjectInfo
from exports.testing import admin, checker, researcher

S = RequestStatus

# The table of DESIGN.md section 4, written out again so that a change to the code's table fails here.
EXPECTED = {
    (S.PENDING, S.SUBMITTED),
    (S.PENDING, S.WITHDRAWN),
    (S.SUBMITTED, S.PARTIALLY_REVIEWED),
    (S.SUBMITTED, S.RETURNED),
    (S.PARTIALLY_REVIEWED, S.REVIEWED),
    (S.PARTIALLY_REVIEWED, S.RETURNED),
    (S.REVIEWED, S.APPROVED),
    (S.REVIEWED, S.REJECTED),
    (S.REVIEWED, S.RETURNED),
    (S.RETURNED, S.SUBMITTED),
    (S.RETURNED, S.WITHDRAWN),
    (S.APPROVED, S.RELEASED),
    (S.RELEASED, S.REVOKED),
}


def request_at(status: S, **kw) -> ExportRequest:
    return ExportRequest("r1", "demo-cardio", "alice", status, 1, "t0", "t0", **kw)


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("target", list(S))
def test_every_pair_of_states_is_allowed_exactly_as_the_design_table_says(source, target):
    request = request_at(source)
    if (source, target) in EXPECTED:
        check_transition(request, target)
        moved = apply_transition(request, target, actor="x", at="t1")
        assert moved.status is target
        assert moved.history[-1].from_status is source
    else:
        with pytest.raises(
            InvalidTransition, match=f"request r1: cannot move from {source.value} to {target.value}"
        ):
            apply_transition(request, target, actor="x", at="t1")


def test_table_has_an_entry_for_every_state_and_final_states_lead_nowhere():
    assert set(VALID_STATE_TRANSITIONS) == set(S)
    assert {s for s, targets in VALID_STATE_TRANSITIONS.items() if not targets} == {
        S.REJECTED,
        S.WITHDRAWN,
        S.REVOKED,
    }


def test_submission_starts_a_new_round_and_other_moves_keep_it():
    returned = request_at(S.RETURNED)
    assert apply_transition(returned, S.SUBMITTED, actor="alice", at="t").round == 2
    assert apply_transition(returned, S.WITHDRAWN, actor="alice", at="t").round == 1


def _file(fid: int, path: str) -> RequestFile:
    return RequestFile(
        fid,
        path,
        "main",
        1,
        FileRole.OUTPUT,
        "0" * 64,
        1,
        "csv",
        "alice",
        "t",
        1,
        True,
        Provenance("web"),
        FileChecks("csv", ()),
    )


def _reviewed(votes: dict[str, dict[int, FileDecision]], verdicts: dict[str, ReviewVerdict] | None = None):
    files = (_file(1, "a.csv"), _file(2, "b.csv"))
    verdicts = verdicts or {}
    return request_at(
        S.REVIEWED,
        files=files,
        votes=tuple(Vote(fid, who, d, 1, "t") for who, vs in votes.items() for fid, d in vs.items()),
        reviews=tuple(Review(who, 1, verdicts.get(who, ReviewVerdict.VOTES), "t") for who in votes),
    )


A, C = FileDecision.APPROVED, FileDecision.CHANGES_REQUESTED


def test_decision_all_files_approved_by_every_reviewer_approves():
    status, reason = decide(_reviewed({"carol": {1: A, 2: A}, "dave": {1: A, 2: A}}), 2)
    assert status is S.APPROVED and "carol, dave" in reason


def test_decision_changes_requested_on_any_file_returns_naming_the_file():
    status, reason = decide(_reviewed({"carol": {1: A, 2: A}, "dave": {1: A, 2: C}}), 2)
    assert status is S.RETURNED and reason == "changes requested on b.csv"


def test_decision_a_rejecting_reviewer_rejects_even_if_all_files_were_approved():
    request = _reviewed({"carol": {1: A, 2: A}, "dave": {1: A, 2: A}}, {"dave": ReviewVerdict.REJECT})
    assert decide(request, 2) == (S.REJECTED, "rejected by dave")


def test_decision_needs_the_required_number_of_reviews():
    with pytest.raises(InvalidTransition, match="1 of 2 reviews"):
        decide(_reviewed({"carol": {1: A, 2: A}}), 2)


def test_decision_counts_only_the_current_round():
    request = _reviewed({"carol": {1: A, 2: A}, "dave": {1: A, 2: A}})
    request = dataclasses.replace(request, round=2)
    with pytest.raises(InvalidTransition):
        decide(request, 2)


# ---------------------------------------------------------------------------------------------
# permissions

PROJECT = ProjectInfo(
    "demo-cardio",
    frozenset({"alice", "erin", "carol2"}),
    workspace=Path("/nonexistent"),
    listed=frozenset({"alice", "erin", "carol2", "olga"}),
)


def test_researcher_needs_the_request_scope_and_membership():
    check_can_request(researcher("alice"), "demo-cardio", PROJECT)
    with pytest.raises(PermissionDenied, match="bob is not a member of project demo-cardio"):
        check_can_request(researcher("bob", in_container=False), "demo-cardio", PROJECT)
    no_scope = Identity(
        "alice", frozenset({"access:servers!server=alice/demo-cardio"}), via="server", project="demo-cardio"
    )
    with pytest.raises(PermissionDenied, match="server_token_scopes"):
        check_can_request(no_scope, "demo-cardio", PROJECT)


def test_a_container_can_only_request_for_its_own_project():
    with pytest.raises(PermissionDenied, match="this container belongs to project demo-oncology"):
        check_can_request(researcher("alice", "demo-oncology"), "demo-cardio", PROJECT)


def test_nobody_reviews_their_own_request():
    with pytest.raises(PermissionDenied, match="nobody may review their own request"):
        check_can_review(
            Identity("alice", frozenset({"custom:exports:review"}), via="cookie"),
            request_at(S.SUBMITTED),
            PROJECT,
        )


def test_a_checker_who_is_a_project_member_cannot_review():
    with pytest.raises(PermissionDenied, match="carol2 is a member of project demo-cardio"):
        check_can_review(checker("carol2"), request_at(S.SUBMITTED), PROJECT)


def test_a_former_member_still_cannot_review_and_no_longer_requests():
    with pytest.raises(PermissionDenied, match="olga is a member of project demo-cardio"):
        check_can_review(checker("olga"), request_at(S.SUBMITTED), PROJECT)
    former = Identity("olga", frozenset({"custom:exports:request"}), via="cookie")
    with pytest.raises(PermissionDenied, match="not a member of project demo-cardio any more"):
        check_can_request(former, "demo-cardio", PROJECT)


def test_requests_of_a_project_the_policy_does_not_know_cannot_be_reviewed():
    with pytest.raises(PermissionDenied, match="project demo-cardio is not in the policy"):
        check_can_review(checker("carol"), request_at(S.SUBMITTED), None)


def test_admins_cannot_vote_even_with_the_review_scope():
    both = Identity("adam", frozenset({"custom:exports:review", "custom:exports:audit"}), via="cookie")
    with pytest.raises(PermissionDenied, match="administrators cannot vote"):
        check_can_review(both, request_at(S.SUBMITTED), PROJECT)
    hub_admin = Identity("root", frozenset({"custom:exports:review"}), via="cookie", hub_admin=True)
    with pytest.raises(PermissionDenied, match="administrators cannot vote"):
        check_can_review(hub_admin, request_at(S.SUBMITTED), PROJECT)


def test_researchers_and_containers_cannot_review():
    with pytest.raises(PermissionDenied, match="output checkers only"):
        check_can_review(researcher("erin", in_container=False), request_at(S.SUBMITTED), PROJECT)
    container_checker = Identity(
        "carol",
        frozenset({"custom:exports:review", "access:servers!server=carol/x"}),
        via="server",
        project="x",
    )
    with pytest.raises(PermissionDenied, match="inside a notebook container"):
        check_can_review(container_checker, request_at(S.SUBMITTED), PROJECT)
    check_can_review(checker("carol"), request_at(S.SUBMITTED), PROJECT)


def test_only_the_requester_downloads_only_when_released_and_never_from_a_container():
    released = request_at(S.RELEASED)
    check_can_download(researcher("alice", in_container=False), released, PROJECT)
    with pytest.raises(PermissionDenied, match="released files go to the requester, alice, alone"):
        check_can_download(researcher("erin", in_container=False), released, PROJECT)
    with pytest.raises(PermissionDenied, match="alice, alone"):
        check_can_download(checker("carol"), released, PROJECT)
    with pytest.raises(PermissionDenied, match="only possible from the export service page"):
        check_can_download(researcher("alice"), released, PROJECT)
    api_token = Identity("alice", frozenset({"custom:exports:request"}), via="token")
    with pytest.raises(PermissionDenied, match="a browser session"):
        check_can_download(api_token, released, PROJECT)
    with pytest.raises(PermissionDenied, match="the request is APPROVED, not RELEASED"):
        check_can_download(researcher("alice", in_container=False), request_at(S.APPROVED), PROJECT)
    with pytest.raises(PermissionDenied, match="the request is REVOKED"):
        check_can_download(researcher("alice", in_container=False), request_at(S.REVOKED), PROJECT)


def test_revoke_is_for_checkers_and_admins():
    check_can_revoke(checker("carol"), request_at(S.RELEASED))
    check_can_revoke(admin("adam"), request_at(S.RELEASED))
    with pytest.raises(PermissionDenied):
        check_can_revoke(researcher("alice", in_container=False), request_at(S.RELEASED))


def test_viewing_is_for_the_author_checkers_and_admins():
    request = request_at(S.SUBMITTED)
    check_can_view(researcher("alice"), request)
    check_can_view(checker("carol"), request)
    check_can_view(admin("adam"), request)
    with pytest.raises(PermissionDenied):
        check_can_view(researcher("erin"), request)
    with pytest.raises(PermissionDenied):  # the author, but from another project's container
        check_can_view(researcher("alice", "demo-oncology"), request)


def test_identity_from_the_hub_takes_user_and_project_only_from_the_server_scope():
    model = {
        "kind": "user",
        "name": "alice",
        "admin": False,
        "scopes": [
            "access:servers!server=alice/demo-cardio",
            "users:activity!user=alice",
            "custom:exports:request",
        ],
    }
    who = Identity.from_hub_model(model, token_authenticated=True)
    assert (who.name, who.via, who.project, who.can_request) == ("alice", "server", "demo-cardio", True)
    # the same scopes in a browser cookie do not make a container identity
    assert Identity.from_hub_model(model, token_authenticated=False).project is None
    # another user's server scope, or two servers, name no project
    other = {**model, "scopes": ["access:servers!server=bob/demo-oncology"]}
    assert Identity.from_hub_model(other, token_authenticated=True).project is None
    two = {**model, "scopes": ["access:servers!server=alice/a", "access:servers!server=alice/b"]}
    assert Identity.from_hub_model(two, token_authenticated=True).via == "token"

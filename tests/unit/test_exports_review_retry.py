"""A review posted again after its answer was lost (the export service restarted mid-request, issue 19):
the saved review is recognized, so the page shows it instead of refusing a "second review"; a different
verdict, someone else's review, or a request the caller may not see are not taken for it."""

from __future__ import annotations

from exports.domain import FileDecision, RequestStatus
from exports.testing import checker, create_request_at_status, make_env
from exports.web import review_already_saved

CAROL, DAVE = checker("carol"), checker("dave")


def test_the_same_review_posted_again_is_recognized_as_saved(tmp_path):
    env = make_env(tmp_path)
    rid = create_request_at_status(env, RequestStatus.PARTIALLY_REVIEWED)  # carol has reviewed
    assert review_already_saved(env.workflow, CAROL, rid, {"verdict": "votes"})
    assert not review_already_saved(env.workflow, CAROL, rid, {"verdict": "reject"})
    assert not review_already_saved(env.workflow, DAVE, rid, {"verdict": "votes"})  # dave has not reviewed
    assert not review_already_saved(env.workflow, CAROL, "nosuchrequest", {"verdict": "votes"})
    assert not review_already_saved(env.workflow, CAROL, rid, {"verdict": "<script>"})


def test_a_retry_after_the_last_review_decided_the_request_is_still_recognized(tmp_path):
    env = make_env(tmp_path)
    rid = create_request_at_status(env, RequestStatus.PARTIALLY_REVIEWED)
    for f in env.workflow.get(DAVE, rid).output_files:
        env.workflow.vote(DAVE, rid, f.id, FileDecision.APPROVED)
    env.workflow.submit_review(DAVE, rid)
    assert env.storage.get(rid).status is not RequestStatus.PARTIALLY_REVIEWED
    assert review_already_saved(env.workflow, DAVE, rid, {"verdict": "votes"})

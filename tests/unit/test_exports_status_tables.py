"""Every status is in every table of the state machine (as AzureTRE's airlock test checks its own).

Adding a status to RequestStatus without deciding where it may go, which phase it belongs to, what is
audited when a request enters it, and how the API documents it, fails here by name."""

from __future__ import annotations

import pytest

from audit.vocabulary import ACTIONS
from exports.domain import (
    EDITABLE_STATES,
    FINAL_STATES,
    INITIAL_STATE,
    STATUS_AUDIT_ACTIONS,
    UNDER_REVIEW_STATES,
    VALID_STATE_TRANSITIONS,
    ExportRequest,
    RequestStatus,
    round_after,
    round_of_new_file,
)
from exports.openapi import openapi_document

S = RequestStatus

# The statuses that are neither editable, under review nor final. A new status must be put in one
# of the domain's sets or added here on purpose.
IN_PASSAGE = frozenset({S.REVIEWED, S.APPROVED, S.RELEASED})


@pytest.mark.parametrize("status", list(S), ids=str)
def test_status_is_in_the_transition_table(status: RequestStatus) -> None:
    assert status in VALID_STATE_TRANSITIONS, f"{status} has no row in VALID_STATE_TRANSITIONS"


@pytest.mark.parametrize("status", list(S), ids=str)
def test_status_has_an_audit_action_in_the_vocabulary(status: RequestStatus) -> None:
    assert status in STATUS_AUDIT_ACTIONS, f"{status} has no audit action in STATUS_AUDIT_ACTIONS"
    assert STATUS_AUDIT_ACTIONS[status] in ACTIONS, f"{STATUS_AUDIT_ACTIONS[status]} not in the vocabulary"


@pytest.mark.parametrize("status", list(S), ids=str)
def test_status_belongs_to_exactly_one_phase(status: RequestStatus) -> None:
    phases = [EDITABLE_STATES, UNDER_REVIEW_STATES, FINAL_STATES, IN_PASSAGE]
    assert sum(status in phase for phase in phases) == 1, (
        f"{status} is in {sum(status in p for p in phases)} phases"
    )


def test_every_status_is_reachable_from_the_initial_state() -> None:
    seen, todo = {INITIAL_STATE}, [INITIAL_STATE]
    while todo:
        for target in VALID_STATE_TRANSITIONS[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(S)


def test_final_states_are_exactly_those_that_lead_nowhere() -> None:
    assert FINAL_STATES == {s for s, targets in VALID_STATE_TRANSITIONS.items() if not targets}
    assert {S.REJECTED, S.WITHDRAWN, S.REVOKED} == FINAL_STATES


def test_the_api_documents_every_status_from_the_domain() -> None:
    schemas = openapi_document("/services/exports/")["components"]["schemas"]
    enums = [
        prop["enum"]
        for schema in schemas.values()
        for name, prop in schema.get("properties", {}).items()
        if name == "status" and "enum" in prop
    ]
    assert enums, "no status enum in the OpenAPI document"
    for enum in enums:
        assert enum == [s.value for s in S]


def _request(status: RequestStatus, round_: int) -> ExportRequest:
    return ExportRequest("r1", "p", "alice", status, round_, "t0", "t0")


@pytest.mark.parametrize("target", list(S), ids=str)
def test_only_submission_starts_a_new_round(target: RequestStatus) -> None:
    expected = 3 if target is S.SUBMITTED else 2
    assert round_after(_request(S.RETURNED, 2), target) == expected


def test_a_file_added_is_for_the_next_submission_round() -> None:
    assert round_of_new_file(_request(S.PENDING, 0)) == 1
    assert round_of_new_file(_request(S.RETURNED, 2)) == 3

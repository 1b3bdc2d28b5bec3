"""What one viewer may see of a request. Blinding lives here, and only here.

- A checker sees other checkers' votes, verdicts and comments of the current round only once the
  round is closed, that is once every required review is in (or the request was returned early).
  Until then they see only how many reviews have been submitted.
- The researcher sees checkers' votes and the comments marked "visible to the researcher" once the
  round is closed; they never see checker-only comments.
- Who reviewed, and when, is hidden the same way: while a round is open, the history shows other
  checkers' review moves without actor or time, ``updated_at`` stays at the last move the viewer may see,
  and comments are numbered among those the viewer sees (their ids would count the hidden ones).
- Admins (audit scope) see everything, read-only.

The same dictionaries feed the JSON API and the HTML pages, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from exports.domain import (
    EDITABLE_STATES,
    UNDER_REVIEW_STATES,
    Comment,
    ExportRequest,
    FileRole,
    PermissionDenied,
    RequestFile,
    RequestStatus,
    RequestSummary,
    Visibility,
    Vote,
)
from exports.permissions import (
    Identity,
    check_can_download,
    check_can_review,
    check_can_revoke,
    check_is_author,
)
from exports.projects import ProjectInfo


def viewer_role(viewer: Identity, request: ExportRequest) -> str:
    if viewer.name == request.author:
        return "author"
    if viewer.is_admin:
        return "admin"
    return "checker"


def round_closed(request: ExportRequest, round_: int) -> bool:
    return round_ < request.round or request.status not in UNDER_REVIEW_STATES


def can_see_vote(viewer: Identity, request: ExportRequest, vote: Vote) -> bool:
    if viewer_role(viewer, request) == "admin":
        return True
    if vote.reviewer == viewer.name:
        return True
    return round_closed(request, vote.round)


def can_see_comment(viewer: Identity, request: ExportRequest, comment: Comment) -> bool:
    role = viewer_role(viewer, request)
    if role == "admin" or comment.author == viewer.name:
        return True
    if role == "author":
        return comment.visibility is Visibility.RESEARCHER and round_closed(request, comment.round)
    if comment.author_role == "researcher":
        return True
    return round_closed(request, comment.round)


def blinded(viewer: Identity, request: ExportRequest) -> bool:
    """True while the current round is open and the viewer may not yet see who reviewed or when."""
    return viewer_role(viewer, request) != "admin" and not round_closed(request, request.round)


def history_view(request: ExportRequest, viewer: Identity) -> list[dict[str, Any]]:
    """The status moves. In an open round, a move caused by someone else's review (the only moves an open
    round can have after its submission) keeps its place but loses its actor, time and reason."""
    opened = max(
        (i for i, h in enumerate(request.history) if h.to_status is RequestStatus.SUBMITTED), default=-1
    )
    hide = blinded(viewer, request)
    shown = []
    for i, h in enumerate(request.history):
        secret = hide and i > opened and h.actor != viewer.name
        shown.append(
            {
                "from": h.from_status.value if h.from_status else None,
                "to": h.to_status.value,
                "actor": None if secret else h.actor,
                "at": None if secret else h.at,
                "reason": "a review was submitted" if secret else h.reason,
            }
        )
    return shown


def updated_at_view(request: ExportRequest, viewer: Identity) -> str:
    """``updated_at`` moves with every vote and review; while blinded, the last move the viewer may see."""
    if not blinded(viewer, request):
        return request.updated_at
    seen = [h.at for h in request.history if h.to_status is RequestStatus.SUBMITTED or h.actor == viewer.name]
    seen += [v.at for v in request.votes if v.reviewer == viewer.name and v.round == request.round]
    return max(seen, default=request.created_at)


def _allowed(check: Callable[[], None]) -> bool:
    try:
        check()
    except PermissionDenied:
        return False
    return True


def allowed_actions(viewer: Identity, request: ExportRequest, project: ProjectInfo | None) -> list[str]:
    """Buttons to offer. Offering is a courtesy: every action is checked again when it is taken."""
    actions = []
    if viewer.name == request.author:
        if _allowed(lambda: check_is_author(viewer, request, project, "change")):
            if request.status in EDITABLE_STATES:
                actions += ["add_files", "remove_file", "submit", "withdraw"]
            actions.append("comment")
        if request.status is RequestStatus.RELEASED and _allowed(
            lambda: check_can_download(viewer, request, project)
        ):
            actions.append("download")
    elif _allowed(lambda: check_can_review(viewer, request, project)):
        if request.status in UNDER_REVIEW_STATES and not request.has_reviewed(viewer.name):
            actions += ["vote", "submit_review", "return"]
        actions.append("comment")
    if request.status is RequestStatus.RELEASED and _allowed(lambda: check_can_revoke(viewer, request)):
        actions.append("revoke")
    return actions


def file_view(f: RequestFile, request: ExportRequest, viewer: Identity, base: str) -> dict[str, Any]:
    votes = [v for v in request.votes if v.file_id == f.id and can_see_vote(viewer, request, v)]
    return {
        "id": f.id,
        "path": f.path,
        "name": f.name,
        "group": f.group,
        "version": f.version,
        "role": f.role.value,
        "sha256": f.sha256,
        "size": f.size,
        "original_sha256": f.original_sha256,
        "original_size": f.original_size,
        "filetype": f.filetype,
        "added_by": f.added_by,
        "added_at": f.added_at,
        "round": f.round,
        "current": f.current,
        "provenance": f.provenance.to_json(),
        "count_columns": list(f.count_columns),
        "checks": {"outcome": f.checks.outcome.value, "results": [r.to_json() for r in f.checks.results]},
        "votes": [
            {"reviewer": v.reviewer, "decision": v.decision.value, "round": v.round, "at": v.at}
            for v in votes
        ],
        "content_url": f"{base}api/requests/{request.id}/files/{f.id}/content",
    }


def request_view(
    request: ExportRequest, viewer: Identity, project: ProjectInfo | None, base: str
) -> dict[str, Any]:
    required = project.reviewers_required if project else None
    reviews = request.reviews_in_round()
    visible_reviews = [
        r
        for r in request.reviews
        if round_closed(request, r.round)
        or r.reviewer == viewer.name
        or viewer_role(viewer, request) == "admin"
    ]
    return {
        "id": request.id,
        "project": request.project,
        "author": request.author,
        "status": request.status.value,
        "round": request.round,
        "created_at": request.created_at,
        "updated_at": updated_at_view(request, viewer),
        "reviewers_required": required,
        "reviews_submitted": len(reviews),
        "reviews": [
            {"reviewer": r.reviewer, "round": r.round, "verdict": r.verdict.value, "at": r.at}
            for r in visible_reviews
        ],
        "groups": [{"name": g.name, "context": g.context, "controls": g.controls} for g in request.groups],
        "files": [file_view(f, request, viewer, base) for f in request.current_files],
        "previous_versions": [file_view(f, request, viewer, base) for f in request.files if not f.current],
        "comments": [
            {
                "id": i if blinded(viewer, request) else c.id,
                "author": c.author,
                "author_role": c.author_role,
                "visibility": c.visibility.value,
                "text": c.text,
                "round": c.round,
                "at": c.at,
                "file": c.file_path,
            }
            for i, c in enumerate((c for c in request.comments if can_see_comment(viewer, request, c)), 1)
        ],
        "history": history_view(request, viewer),
        "released": [
            {
                "file_id": r.file_id,
                "path": r.path,
                "sha256": r.sha256,
                "size": r.size,
                "download_url": f"{base}requests/{request.id}/download/{r.file_id}",
            }
            for r in request.released
        ]
        if viewer.name == request.author or viewer.is_checker or viewer.is_auditor
        else [],
        "actions": allowed_actions(viewer, request, project),
        "url": f"{base}requests/{request.id}",
    }


def age(since: str, now: datetime | None = None) -> str:
    """How long ago, as a person says it: "40 min", "5 h", "3 d"."""
    then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    minutes = max(0, int(((now or datetime.now(UTC)) - then).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // (24 * 60)} d"


def summary_view(s: RequestSummary, base: str, reviewers_required: int | None = None) -> dict[str, Any]:
    return {
        "age": age(s.submitted_at or s.created_at),
        "id": s.id,
        "project": s.project,
        "author": s.author,
        "status": s.status.value,
        "round": s.round,
        "created_at": s.created_at,
        # under review, updated_at would move with each checker's votes: the queue shows the submission
        "updated_at": s.submitted_at or s.updated_at if s.status in UNDER_REVIEW_STATES else s.updated_at,
        "submitted_at": s.submitted_at,
        "files": s.file_count,
        "checks": dict(s.checks),
        "reviews_submitted": len(s.reviewers),
        "reviewers_required": reviewers_required,
        "url": f"{base}requests/{s.id}",
    }


def output_files(request: ExportRequest) -> list[RequestFile]:
    return [f for f in request.current_files if f.role is FileRole.OUTPUT]
